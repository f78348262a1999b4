"""Tests of benchmarks/spp_variants.py: the authors' sharpening and the curvature cap (not the library)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from avalanche.models import MTSimpleMLP
from avalanche.training import Naive
from test_importance import _tiny_mlp
from test_plugin import _strategy, _stream, _weights
from torch import nn

from avalanche_spp import SPPPlugin
from avalanche_spp.importance import DivergedError, entropy_importance
from benchmarks.spp_variants import SPPVariantPlugin, normalize_importance


def _normalized(model, x, normalize, beta=1.0):
    return {n: normalize_importance(v, normalize, beta) for n, v in entropy_importance(model, [x]).items()}


def test_normalisations():
    model = _tiny_mlp(seed=9)
    x = torch.randn(30, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    plain = entropy_importance(model, [x])
    peak = _normalized(model, x, "max")
    sharp = _normalized(model, x, "softmax", beta=3.0)
    for name in plain:
        if plain[name].max() > 0:
            torch.testing.assert_close(peak[name], plain[name] / plain[name].max())
        if plain[name].max() == 0:  # no importance at all: left at zero (stays free)
            assert sharp[name].abs().max() == 0
            continue
        # in units of the tensor's mean importance, so that beta is free of Omega's scale
        expected = torch.softmax(3.0 * (plain[name] / plain[name].mean()).reshape(-1), 0).view_as(plain[name])
        torch.testing.assert_close(sharp[name], expected)
        assert sharp[name].sum().item() == pytest.approx(1.0)


def test_softmax_normalisation_leaves_a_tensor_without_importance_at_zero():
    # A later task's head takes no part in this task's output: its Omega is exactly 0, and the
    # sharpening must not spread 1/n over it (it would be penalised before its task is learned).
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = nn.Linear(4, 6).double()
            self.head0 = nn.Linear(6, 3).double()
            self.head1 = nn.Linear(6, 3).double()

        def forward(self, x):
            return self.head0(torch.tanh(self.trunk(x)))

    torch.manual_seed(0)
    model = TwoHeads()
    x = torch.randn(20, 4, dtype=torch.float64)
    sharp = _normalized(model, x, "softmax")
    assert torch.count_nonzero(sharp["head1.weight"]) == 0 and torch.count_nonzero(sharp["head1.bias"]) == 0
    assert sharp["head0.weight"].sum().item() == pytest.approx(1.0)


def test_softmax_normalisation_sharpens_on_any_scale():
    model = _tiny_mlp(seed=7)
    x = torch.randn(50, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    plain = entropy_importance(model, [x])["0.weight"]
    ratios = []
    for beta in (1.0, 3.0):
        sharp = _normalized(model, x, "softmax", beta=beta)["0.weight"]
        ratios.append((sharp.max() / sharp.min()).item())
        # same ranking as the importance itself
        assert torch.equal(sharp.flatten().argsort(), plain.flatten().argsort()) or torch.equal(
            sharp.flatten().argmax(), plain.flatten().argmax()
        )
    # Omega is ~1e-3 here: a softmax of the raw values would give a max/min ratio of ~1.00.
    assert plain.max().item() < 0.1
    assert ratios[0] > 3.0 and ratios[1] > ratios[0] ** 2


def test_max_normalisation_leaves_a_tensor_without_importance_at_zero():
    class _TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(4, 3).double(), nn.Linear(4, 3).double()

        def forward(self, x):
            return self.used(x)

    torch.manual_seed(0)
    omega = _normalized(_TwoHeads(), torch.randn(8, 4, dtype=torch.float64), "max")
    assert torch.count_nonzero(omega["unused.weight"]) == 0 and torch.isfinite(omega["unused.weight"]).all()
    assert omega["used.weight"].max().item() == pytest.approx(1.0)


def _two_tasks_with(lam: float, curvature_cap: float | None, lr: float = 0.05):
    torch.manual_seed(0)
    bench = _stream()
    model = MTSimpleMLP(input_size=8, hidden_size=16)
    paper = {"scale": "raw", "clamp": "experience", "fisher": "per_sample", "taylor_of": "entropy"}
    plugin = SPPVariantPlugin(lam=lam, curvature_cap=curvature_cap, **paper)  # the raw Omega the cap is about
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=16,
        train_epochs=2,
        plugins=[plugin],
        evaluator=None,
    )
    strategy.train(bench.train_stream[0])
    strategy.train(bench.train_stream[1])
    return model, plugin, strategy


def test_curvature_cap_clips_lam_omega_to_what_sgd_can_follow():
    lam, cap, lr = 1e6, 0.5, 0.05
    model, plugin, strategy = _two_tasks_with(lam, cap, lr)
    bound = cap * (1 + 0.9) / (lr * lam)
    assert max(o.max().item() for o in plugin.omega.values()) > bound  # the cap is active
    assert all(torch.isfinite(p).all() for p in model.parameters())
    w_star = _weights(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
            p.grad = torch.zeros_like(p)  # as if the loss reached every parameter with gradient 0
    plugin.after_backward(strategy)
    params = dict(model.named_parameters())
    for name, omega in plugin.omega.items():
        expected = 2 * lam * omega.clamp(max=bound) * (params[name].detach() - w_star[name])
        torch.testing.assert_close(params[name].grad, expected, msg=name)


def test_without_the_cap_the_same_strength_diverges():
    with pytest.raises(DivergedError, match="not finite"):  # found by the importance pass after task 2
        _two_tasks_with(1e6, None)


def test_curvature_cap_is_checked():
    with pytest.raises(ValueError, match=r"curvature_cap must be None or a number in \(0, 1\]"):
        SPPVariantPlugin(curvature_cap=1.5)
    plugin = SPPVariantPlugin(curvature_cap=0.5)
    model = nn.Linear(2, 2)
    strategy = SimpleNamespace(model=model, optimizer=torch.optim.Adam(model.parameters()))
    with pytest.raises(ValueError, match="needs a torch.optim.SGD optimiser"):
        plugin.before_training_exp(strategy)


def test_curvature_cap_bound_at_lam_one_and_without_lam():
    plugin = SPPVariantPlugin(lam=1.0, curvature_cap=0.5)
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.5)
    assert plugin._cap_for(optimizer) == pytest.approx(0.5 * 1.5 / 0.1)  # c (1 + mu) / (eta lam)
    assert SPPVariantPlugin(lam=0.0, curvature_cap=0.5)._cap_for(optimizer) == math.inf


def test_variant_state_round_trips_converts_beta_and_a_library_plugin_refuses_it():
    torch.manual_seed(0)
    model = MTSimpleMLP(input_size=8, hidden_size=16)
    plugin = SPPVariantPlugin(lam=0.5, normalize="softmax", beta=2.0, curvature_cap=0.5)
    _strategy(model, [plugin], epochs=1).train(_stream().train_stream[0])
    for name, omega in plugin.omega.items():  # each tensor is a softmax: it sums to 1 (or stays 0)
        assert omega.sum().item() == pytest.approx(1.0) or omega.sum().item() == 0.0, name
    state = plugin.state_dict()
    assert state["settings"]["normalize"] == "softmax" and state["settings"]["curvature_cap"] == 0.5
    state["settings"]["beta"] = 3  # an int, as a hand-written state may hold
    fresh = SPPVariantPlugin()
    fresh.load_state_dict(state)
    assert fresh.beta == 3.0 and isinstance(fresh.beta, float)
    assert (fresh.normalize, fresh.curvature_cap) == ("softmax", 0.5)
    with pytest.raises(ValueError, match="its settings are refused"):
        SPPPlugin().load_state_dict(state)  # the library has no such settings


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"normalize": "l1"}, "normalize must be one of"),
        ({"beta": 0}, "beta must be a positive number"),
        ({"beta": True}, "beta must be a positive number"),
        ({"curvature_cap": True}, "curvature_cap must be None or a number"),
        ({"temperature": 0}, "temperature must be a positive finite number"),
        ({"temperature": math.inf}, "temperature must be a positive finite number"),
        (
            {"temperature": 2.0, "importance": "output_norm"},
            "temperature applies to importance=.entropy. only",
        ),
        ({"fisher": "full"}, "fisher must be one of"),  # the library's own checks still run
    ],
)
def test_invalid_variant_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SPPVariantPlugin(**kwargs)


def test_the_library_plugin_has_no_variant_arguments():
    for name in ("normalize", "beta", "curvature_cap"):
        with pytest.raises(TypeError):
            SPPPlugin(**{name: None})


def test_output_norm_importance_is_mas_mean_absolute_batch_gradient_by_hand():
    from benchmarks.spp_variants import output_norm_importance

    torch.manual_seed(0)
    layer = nn.Linear(3, 2).double()
    batches = [torch.randn(4, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)]
    layer.train()
    omega = output_norm_importance(layer, batches)
    assert layer.training  # its mode is restored
    w, b = layer.weight.detach(), layer.bias.detach()
    expected_w, expected_b = torch.zeros_like(w), torch.zeros_like(b)
    for x in batches:  # d/dW mean_n ||W x_n + b||^2 = 2/N sum_n (W x_n + b) x_n^T, then |.|
        out = x @ w.T + b
        expected_w += (2 * out.T @ x / len(x)).abs()
        expected_b += (2 * out.sum(0) / len(x)).abs()
    torch.testing.assert_close(omega["weight"], expected_w / 2)
    torch.testing.assert_close(omega["bias"], expected_b / 2)
    with pytest.raises(ValueError, match="no input batch"):
        output_norm_importance(layer, [])


def test_the_output_norm_variant_folds_mas_importance_into_the_penalty():
    from benchmarks.spp_variants import output_norm_importance

    torch.manual_seed(0)
    bench = _stream()
    model = MTSimpleMLP(input_size=8, hidden_size=16)
    plugin = SPPVariantPlugin(lam=1.0, importance="output_norm")
    strategy = _strategy(model, [plugin], epochs=1)
    strategy.train(bench.train_stream[0])
    view = SimpleNamespace(model=model, experience=bench.train_stream[0], plugins=[])
    expected = output_norm_importance(model, plugin._importance_batches(view, model))
    assert set(plugin.omega) == set(expected)
    for name in expected:
        torch.testing.assert_close(plugin.omega[name], expected[name])
    assert any(v.abs().sum() > 0 for v in plugin.omega.values())
    assert plugin.state_dict()["settings"]["importance"] == "output_norm"
    with pytest.raises(ValueError, match="importance must be one of"):
        SPPVariantPlugin(importance="fisher")


def test_the_temperature_variant_measures_the_entropy_of_softened_outputs_by_hand():
    from benchmarks.spp_variants import tempered_entropy

    logits = torch.tensor([[4.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    q = torch.softmax(logits / 4.0, dim=-1)
    torch.testing.assert_close(tempered_entropy(logits, 4.0), -(q * q.log()).sum(-1))
    torch.manual_seed(0)
    bench = _stream()
    model = MTSimpleMLP(input_size=8, hidden_size=16)
    options = {"taylor_of": "entropy", "clamp": "batch", "fisher": "batch"}
    plugin = SPPVariantPlugin(lam=1.0, temperature=4.0, **options)
    strategy = _strategy(model, [plugin], epochs=1)
    strategy.train(bench.train_stream[0])
    view = SimpleNamespace(model=model, experience=bench.train_stream[0], plugins=[])
    items = list(plugin._importance_batches(view, model))
    by_hand = entropy_importance(model, items, entropy_fn=lambda z: tempered_entropy(z, 4.0), **options)
    plain = entropy_importance(model, items, **options)
    for name in by_hand:
        torch.testing.assert_close(plugin.omega[name], by_hand[name])
    assert any(not torch.allclose(plain[n], by_hand[n]) for n in plain)  # the temperature matters
    assert plugin.state_dict()["settings"]["temperature"] == 4.0


def test_the_sharpness_variant_is_a_hill_function_of_omega_over_its_mean_by_hand():
    from benchmarks.spp_variants import sharpen

    model = nn.Linear(2, 2)
    plugin = SPPVariantPlugin(lam=1.0, sharpness=3.0)
    omega = {"weight": torch.tensor([[0.0, 1.0], [2.0, 5.0]]), "bias": torch.tensor([0.0, 4.0])}
    plugin.update(model, omega)
    m = 12.0 / 6  # the mean Omega over every penalised scalar
    _, _, masks = plugin._training_terms(model)
    by_name = dict(zip(["weight", "bias"], masks, strict=True))  # named_parameters order
    for name, value in omega.items():
        r = value / m
        torch.testing.assert_close(by_name[name], r**3 / (1 + r**3))
    # a weight at the mean importance keeps half the stiffness at any sharpness
    assert sharpen(torch.tensor([0.5]), 7.0).item() == pytest.approx(0.5)
    assert plugin.state_dict()["settings"]["sharpness"] == 3.0
    with pytest.raises(ValueError, match="sharpness must be a positive finite number"):
        SPPVariantPlugin(sharpness=0.0)
    with pytest.raises(ValueError, match='sharpness applies to scale="saturate" only'):
        SPPVariantPlugin(sharpness=2.0, scale="raw")


def _variant_masks(mask_mean: str, omega: dict) -> tuple[nn.Module, SPPVariantPlugin, dict]:
    """An ``nn.Linear(2, 2)`` with importance ``omega`` folded in by ``SPPVariantPlugin(mask_mean=...)``,
    the plugin, and the masks its training uses, by parameter name."""
    model = nn.Linear(2, 2)
    plugin = SPPVariantPlugin(lam=1.0, mask_mean=mask_mean)
    plugin.update(model, omega)
    _, _, masks = plugin._training_terms(model)
    return model, plugin, dict(zip(["weight", "bias"], masks, strict=True))  # named_parameters order


def test_the_per_tensor_mask_divides_each_tensor_by_its_own_mean_by_hand():
    omega = {"weight": torch.tensor([[0.0, 1.0], [2.0, 5.0]]), "bias": torch.tensor([0.0, 0.0])}
    model, plugin, by_name = _variant_masks("tensor", omega)
    m_weight = 8.0 / 4  # the weight tensor's own mean, not the mean over all six scalars (8 / 6)
    torch.testing.assert_close(by_name["weight"], omega["weight"] / (omega["weight"] + m_weight))
    assert torch.count_nonzero(by_name["bias"]) == 0  # a tensor without importance stays free
    # the global mask differs: the same model under the library's mean over every scalar
    library = SPPPlugin(lam=1.0)
    library.update(model, omega)
    _, _, plain = library._training_terms(model)
    torch.testing.assert_close(plain[0], omega["weight"] / (omega["weight"] + 8.0 / 6))
    assert plugin.state_dict()["settings"]["mask_mean"] == "tensor"
    with pytest.raises(ValueError, match="mask_mean"):
        SPPVariantPlugin(mask_mean="layer")
    with pytest.raises(ValueError, match='mask_mean applies to scale="saturate" only'):
        SPPVariantPlugin(mask_mean="tensor", scale="raw")


def test_the_per_experience_mask_divides_the_mean_by_the_experiences_folded_in_by_hand():
    model = nn.Linear(2, 1)
    plugin = SPPVariantPlugin(lam=1.0, mask_mean="experience")
    first = {"weight": torch.tensor([[3.0, 0.0]]), "bias": torch.tensor([1.0])}  # mean 4 / 3
    second = {"weight": torch.tensor([[0.0, 5.0]]), "bias": torch.tensor([0.0])}  # mean 5 / 3
    plugin.update(model, first)
    _, _, masks = plugin._training_terms(model)
    torch.testing.assert_close(masks[0], torch.tensor([[3.0, 0.0]]) / (torch.tensor([[3.0, 0.0]]) + 4 / 3))
    plugin.update(model, second)
    _, _, masks = plugin._training_terms(model)
    total = torch.tensor([[3.0, 5.0]])
    m = (9.0 / 3) / 2  # the mean of the sum, over two experiences
    torch.testing.assert_close(masks[0], total / (total + m))
    # the library's mask uses the mean of the sum: the first task's weight loses stiffness
    library = SPPPlugin(lam=1.0)
    library.update(model, first)
    library.update(model, second)
    _, _, plain = library._training_terms(model)
    assert plain[0][0, 0] < masks[0][0, 0]
    # the count survives a checkpoint
    restored = SPPVariantPlugin(lam=1.0, mask_mean="experience")
    restored.load_state_dict(plugin.state_dict())
    assert restored.experiences_seen == 2
    torch.testing.assert_close(restored._training_terms(model)[2][0], masks[0])


def test_the_experience_mean_normalisation_gives_each_experience_the_same_total_by_hand():
    model = nn.Linear(2, 1)
    plugin = SPPVariantPlugin(lam=1.0, normalize="experience_mean")
    first = {"weight": torch.tensor([[3.0, 0.0]]), "bias": torch.tensor([1.0])}  # mean 4 / 3
    second = {"weight": torch.tensor([[0.0, 50.0]]), "bias": torch.tensor([10.0])}  # mean 20
    plugin.update(model, first)
    torch.testing.assert_close(plugin.omega["weight"], torch.tensor([[2.25, 0.0]]))  # 3 / (4 / 3)
    plugin.update(model, second)
    torch.testing.assert_close(plugin.omega["weight"], torch.tensor([[2.25, 2.5]]))  # + [0, 50 / 20]
    torch.testing.assert_close(plugin.omega["bias"], torch.tensor([0.75 + 0.5]))
    # the library sums Omega as measured: the second experience's scale dominates
    library = SPPPlugin(lam=1.0)
    library.update(model, first)
    library.update(model, second)
    torch.testing.assert_close(library.omega["weight"], torch.tensor([[3.0, 50.0]]))
    # an experience with no importance at all is folded in as it is (no division by zero)
    plugin.update(model, {"weight": torch.zeros(1, 2), "bias": torch.zeros(1)})
    torch.testing.assert_close(plugin.omega["weight"], torch.tensor([[2.25, 2.5]]))
    # it is a normalisation over the whole experience, not per tensor
    with pytest.raises(ValueError, match="over every tensor of an experience"):
        normalize_importance(torch.ones(2), "experience_mean", 1.0)


def test_mask_means_by_hand_and_a_missing_file_says_what_to_run(tmp_path, capsys):
    from benchmarks.mask_means import main, mask_means

    omega = {"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([0.0, 0.0, 0.0, 8.0])}
    summary = mask_means(omega)
    assert summary["global_mean"] == pytest.approx(2.0) and summary["n"] == 6  # 12 / 6
    a, b = summary["tensors"]["a"], summary["tensors"]["b"]
    for row in (a, b):
        assert row["mean_over_global_mean"] == pytest.approx(1.0)
    assert a["mean_mask_global_m"] == pytest.approx((1 / 3 + 3 / 5) / 2)
    assert b["mean_mask_tensor_m"] == pytest.approx((8 / 10) / 4)  # b's own mean is 2 as well
    torch.save({"omega": omega}, tmp_path / "task0.pt")
    assert main([str(tmp_path / "task0.pt"), str(tmp_path / "out.json")]) == 0
    assert json.loads((tmp_path / "out.json").read_text())["tensors"]["a"]["n"] == 2
    assert main([str(tmp_path / "missing.pt"), str(tmp_path / "out.json")]) == 2
    assert "--save-tensors" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no scalars"):
        mask_means({})


def test_the_curvature_stiffness_scales_the_mask_by_the_expected_fisher_by_hand():
    from benchmarks.spp_variants import expected_fisher_mean

    # Zero weights: p = (1/2, 1/2) whatever x, so whichever label is drawn, d log p(y) / d logits is
    # (+-1/2, -+1/2): each weight W_kj gets (x_j / 2)**2 and each bias 1/4, for every sample.
    model = nn.Linear(3, 2).double()
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    x = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0], [2.0, 2.0, 2.0]], dtype=torch.float64)
    per_sample = [0.25 * (2 * float(row.pow(2).sum()) + 2) for row in x]
    expected = sum(per_sample[:2]) / 2 / 8  # the first two samples, 8 scalars
    assert expected_fisher_mean(model, [x[:1], x[1:]], samples=2) == pytest.approx(expected)
    assert expected_fisher_mean(model, [(x,)], samples=3) == pytest.approx(sum(per_sample) / 3 / 8)
    with pytest.raises(ValueError, match="at least one input"):
        expected_fisher_mean(model, [], samples=4)

    plugin = SPPVariantPlugin(lam=1.0, stiffness="curvature", curvature_samples=2)
    omega = plugin._importance(model, iter([x[:1], x[1:]]))
    assert plugin.curvatures == [pytest.approx(expected)]
    omega = {"weight": torch.tensor([[0.0, 1.0, 2.0], [3.0, 1.0, 1.0]]), "bias": torch.tensor([0.0, 4.0])}
    plugin.update(model, omega)
    plugin.curvatures.append(3 * expected)  # the mean over experiences: 2 * expected
    _, _, masks = plugin._training_terms(model)
    m = 12.0 / 8
    torch.testing.assert_close(
        masks[0], (omega["weight"] / (omega["weight"] + m) * 2 * expected).to(masks[0])
    )
    state = plugin.state_dict()
    assert state["settings"]["stiffness"] == "curvature" and len(state["curvatures"]) == 2
    restored = SPPVariantPlugin()
    restored.load_state_dict(state)
    assert restored.curvatures == pytest.approx(plugin.curvatures)
    with pytest.raises(ValueError, match="curvature_samples must be a positive int"):
        SPPVariantPlugin(stiffness="curvature", curvature_samples=0)
    # measured and kept, not applied
    watcher = SPPVariantPlugin(lam=1.0, measure_curvature=True, curvature_samples=2)
    watcher._importance(model, iter([x[:1], x[1:]]))
    assert watcher.curvatures == [pytest.approx(expected)]
    watcher.update(model, omega)
    plain = watcher._training_terms(model)[2][0]
    torch.testing.assert_close(plain, (omega["weight"] / (omega["weight"] + m)).to(plain))


def test_the_median_mask_divides_by_the_median_importance_by_hand():
    omega = {"weight": torch.tensor([[0.0, 1.0], [2.0, 30.0]]), "bias": torch.tensor([3.0, 4.0])}
    model, plugin, by_name = _variant_masks("median", omega)
    m = 2.0  # torch's median of [0, 1, 2, 30, 3, 4] (the lower of the two middle values), not the mean 40 / 6
    torch.testing.assert_close(by_name["weight"], omega["weight"] / (omega["weight"] + m))
    torch.testing.assert_close(by_name["bias"], omega["bias"] / (omega["bias"] + m))
    assert float(by_name["weight"][1, 0]) == 0.5  # the median weight is half stiff
    library = SPPPlugin(lam=1.0)  # the library's mean: the heavy tail (30) frees the rest
    library.update(model, omega)
    assert float(library._training_terms(model)[2][0][1, 0]) == pytest.approx(2.0 / (2.0 + 40.0 / 6))


def test_the_weighted_anchor_is_the_importance_weighted_mean_of_the_past_anchors_by_hand():
    model = nn.Linear(2, 1, bias=False)
    plugin = SPPVariantPlugin(lam=1.0, anchor_mode="weighted")
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0]]))
    plugin.update(model, {"weight": torch.tensor([[1.0, 0.0]])})
    torch.testing.assert_close(plugin.anchor["weight"], torch.tensor([[1.0, 1.0]]))  # one task: its weights
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[4.0, 5.0]]))
    plugin.update(model, {"weight": torch.tensor([[2.0, 3.0]])})
    # (1 * 1 + 2 * 4) / 3 = 3; the second weight mattered to the second task only: its weights there
    torch.testing.assert_close(plugin.anchor["weight"], torch.tensor([[3.0, 5.0]]))
    # the gradient is that of one penalty per task, sum_k Omega_k (W - W*_k)^2
    w = torch.tensor([[2.0, 7.0]], requires_grad=True)
    per_task = (
        torch.tensor([[1.0, 0.0]]) * (w - 1.0) ** 2
        + torch.tensor([[2.0, 3.0]]) * (w - torch.tensor([[4.0, 5.0]])) ** 2
    ).sum()
    per_task.backward()
    torch.testing.assert_close(w.grad, 2 * plugin.omega["weight"] * (w.detach() - plugin.anchor["weight"]))
    # the library keeps the last task's weights
    library = SPPPlugin(lam=1.0)
    library.update(model, {"weight": torch.tensor([[1.0, 0.0]])})
    torch.testing.assert_close(library.anchor["weight"], torch.tensor([[4.0, 5.0]]))
    restored = SPPVariantPlugin(lam=1.0)
    restored.load_state_dict(plugin.state_dict())
    assert restored.anchor_mode == "weighted"
    with pytest.raises(ValueError, match="anchor_mode must be one of"):
        SPPVariantPlugin(anchor_mode="first")
    with pytest.raises(ValueError, match='needs accumulate="sum"'):
        SPPVariantPlugin(anchor_mode="weighted", accumulate="max")


def test_a_weight_without_importance_is_anchored_where_it_is_and_a_grown_head_is_padded():
    from benchmarks.spp_variants import weighted_anchor

    old_omega, old_anchor = torch.tensor([0.0, 2.0]), torch.tensor([9.0, 1.0])
    total = torch.tensor([0.0, 2.0, 1.0])  # a third row grown since, no importance before
    current = torch.tensor([4.0, 6.0, 8.0])
    torch.testing.assert_close(
        weighted_anchor(old_omega, old_anchor, total, current), torch.tensor([4.0, 1.0, 8.0])
    )


def test_the_decay_variant_weighs_a_task_k_experiences_back_by_decay_to_the_k_by_hand():
    model = nn.Linear(2, 1, bias=False)
    plugin = SPPVariantPlugin(lam=1.0, decay=0.5)
    for omega in ([[4.0, 0.0]], [[0.0, 2.0]], [[1.0, 1.0]]):
        plugin.update(model, {"weight": torch.tensor(omega)})
    # 0.25 * [4, 0] + 0.5 * [0, 2] + [1, 1]
    torch.testing.assert_close(plugin.omega["weight"], torch.tensor([[2.0, 2.0]]))
    restored = SPPVariantPlugin(lam=1.0)
    restored.load_state_dict(plugin.state_dict())
    assert restored.decay == 0.5
    library = SPPPlugin(lam=1.0)  # the library's sum
    for omega in ([[4.0, 0.0]], [[0.0, 2.0]], [[1.0, 1.0]]):
        library.update(model, {"weight": torch.tensor(omega)})
    torch.testing.assert_close(library.omega["weight"], torch.tensor([[5.0, 3.0]]))
    for bad in (0, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match=r"decay must be a number in \(0, 1\]"):
            SPPVariantPlugin(decay=bad)
    with pytest.raises(ValueError, match="decay must be"):
        SPPVariantPlugin(decay=0.5, accumulate="max")


def test_the_reached_mask_divides_by_the_mean_importance_of_the_parameters_with_a_grad_by_hand():
    trunk, old_head = nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)
    model = nn.ModuleDict({"trunk": trunk, "old_head": old_head})
    omega = {
        "trunk.weight": torch.tensor([[1.0, 3.0], [0.0, 4.0]]),
        "old_head.weight": torch.tensor([[40.0, 40.0]]),
    }
    plugin = SPPVariantPlugin(lam=1.0, mask_mean="reached")
    plugin.update(model, omega)
    trunk(torch.ones(1, 2)).sum().backward()  # this task's loss reaches the trunk, not the old head
    params, _, masks = plugin._training_terms(model)
    by_name = dict(zip(["trunk.weight", "old_head.weight"], masks, strict=True))
    m = 8.0 / 4  # the trunk's mean, not the mean over all six scalars (88 / 6)
    torch.testing.assert_close(by_name["trunk.weight"], omega["trunk.weight"] / (omega["trunk.weight"] + m))
    library = SPPPlugin(lam=1.0)
    library.update(model, omega)
    assert float(library._training_terms(model)[2][0][0, 1]) == pytest.approx(3.0 / (3.0 + 88.0 / 6))
    with pytest.raises(ValueError, match='needs penalty_via="gradient"'):
        SPPVariantPlugin(mask_mean="reached", penalty_via="loss")  # no .grad yet when the loss is built
