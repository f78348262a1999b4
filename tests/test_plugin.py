"""Tests of SPPPlugin inside Avalanche's training loop."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.models import IncrementalClassifier, MTSimpleMLP, MultiHeadClassifier, MultiTaskModule
from avalanche.models.dynamic_modules import avalanche_model_adaptation
from avalanche.training import Naive
from torch import nn
from torch.utils.data import TensorDataset

from avalanche_spp import SPPPlugin
from avalanche_spp.importance import entropy_importance
from avalanche_spp.penalty import add_spp_penalty_grad_
from avalanche_spp.plugin import sgd_strength_limit

torch.set_num_threads(1)


def _blobs(n_classes: int = 6, per_class: int = 30, dim: int = 8, seed: int = 0):
    """Well separated Gaussian blobs: a tiny labelled data set that trains in milliseconds."""
    gen = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(n_classes, dim, generator=gen)
    x = torch.cat([c + torch.randn(per_class, dim, generator=gen) for c in centres])
    y = torch.arange(n_classes).repeat_interleave(per_class)
    return x, y


def _stream(task_labels: bool = True, n_experiences: int = 3, class_ids_from_zero: bool = True, **kw):
    x, y = _blobs(**kw)
    train = _make_taskaware_tensor_classification_dataset(x, y)
    test = _make_taskaware_tensor_classification_dataset(x, y)
    return nc_benchmark(
        train,
        test,
        n_experiences=n_experiences,
        task_labels=task_labels,
        seed=0,
        fixed_class_order=list(range(int(y.max()) + 1)),
        class_ids_from_zero_in_each_exp=class_ids_from_zero if task_labels else False,
    )


def _strategy(model, plugins, epochs: int = 2):
    return Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=16,
        train_epochs=epochs,
        eval_mb_size=64,
        plugins=plugins,
        evaluator=None,
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lam": -1.0}, "lam .* must be a finite number >= 0"),
        ({"lam": float("nan")}, "lam .* must be a finite number >= 0"),
        ({"lam": "1"}, "lam .* must be a finite number >= 0"),
        ({"lam": True}, "lam .* must be a finite number >= 0"),
        ({"fisher": "full"}, r"fisher must be one of \['per_sample', 'batch'\]"),
        ({"accumulate": "mean"}, r"accumulate must be one of \['sum', 'max'\]"),
        ({"taylor_of": "x"}, "taylor_of must be one of"),
        ({"taylor_of": "paper"}, "taylor_of must be one of"),  # the old name: said what it computes
        ({"scale": "log"}, r"scale must be one of \['raw', 'mean', 'saturate'\]"),
        ({"clamp": True}, "clamp must be one of"),
        ({"clamp": "layer"}, "clamp must be one of"),
        ({"clamp": "none"}, "negative importances, which cannot weigh a penalty"),
        ({"clamp": "sample", "fisher": "batch"}, 'needs fisher="per_sample"'),
        ({"importance_samples": 0}, "importance_samples must be a positive int"),
        ({"importance_batch_size": 2.5}, "importance_batch_size must be a positive int"),
    ],
)
def test_invalid_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SPPPlugin(**kwargs)


def _weights(model):
    """A copy of the weights, taken by the test itself (never the plugin's own anchor)."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("scale", ["raw", "saturate"])
def test_penalty_is_zero_after_a_task_and_its_gradient_is_2_lam_omega_delta(scale):
    bench = _stream()
    model = MTSimpleMLP(input_size=8, hidden_size=16)
    plugin = SPPPlugin(lam=3.0, scale=scale)
    strategy = _strategy(model, [plugin])
    strategy.train(bench.train_stream[0])
    w_star = _weights(model)  # W* as the test saw it
    assert plugin.omega and plugin.penalty(model).item() == 0.0

    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    model.zero_grad()
    plugin.penalty(model).backward()
    params = dict(model.named_parameters())
    omegas = dict(plugin.omega)
    m = sum(o.sum().item() for o in omegas.values()) / sum(o.numel() for o in omegas.values())
    for name, omega in omegas.items():
        weight = omega if scale == "raw" else omega / (omega + m)  # Omega / (Omega + m), by hand
        expected = 2 * 3.0 * weight * (params[name].detach() - w_star[name])
        torch.testing.assert_close(params[name].grad, expected)
    assert sum(o.sum() for o in plugin.omega.values()) > 0


def test_new_head_is_free_until_learned_and_old_head_is_penalised():
    bench = _stream()
    model = MTSimpleMLP(input_size=8, hidden_size=16)
    plugin = SPPPlugin(lam=1.0)
    strategy = _strategy(model, [plugin])
    strategy.train(bench.train_stream[0])
    strategy.train(bench.train_stream[1])  # head 1 is created and trained under the penalty
    assert any(name.startswith("classifier.classifiers.1.") for name in plugin.omega)
    # What the strategy does before task 2: a new head appears.
    avalanche_model_adaptation(model, bench.train_stream[2])
    head2 = model.classifier.classifiers["2"].classifier.weight
    head0 = model.classifier.classifiers["0"].classifier.weight
    assert not any(name.startswith("classifier.classifiers.2.") for name in plugin.omega)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
    model.zero_grad()
    plugin.penalty(model).backward()
    assert head2.grad is None
    assert head0.grad.abs().sum() > 0


class _GrowingModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.classifier = IncrementalClassifier(16, initial_out_features=2)

    def forward(self, x):
        return self.classifier(self.features(x))


def test_incremental_classifier_keeps_old_rows_penalised_and_new_rows_free():
    bench = _stream(task_labels=False)
    model = _GrowingModel()
    plugin = SPPPlugin(lam=2.0)
    strategy = _strategy(model, [plugin])
    strategy.train(bench.train_stream[0])
    old_rows = plugin.omega["classifier.classifier.weight"].shape[0]
    avalanche_model_adaptation(model, bench.train_stream[1])  # new classes: the output layer grows
    weight = model.classifier.classifier.weight
    assert weight.shape[0] > old_rows
    with torch.no_grad():
        weight.add_(0.3)
    model.zero_grad()
    plugin.penalty(model).backward()
    assert weight.grad[:old_rows].abs().sum() > 0
    assert torch.equal(weight.grad[old_rows:], torch.zeros_like(weight.grad[old_rows:]))
    strategy.train(bench.train_stream[1])  # and the strategy trains through the grown layer
    assert plugin.omega["classifier.classifier.weight"].shape == weight.shape


class _HeadsOfDifferentWidths(MultiTaskModule):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
        self.heads = nn.ModuleDict({"0": nn.Linear(16, 2), "1": nn.Linear(16, 5)})
        self.max_class_label = 5

    def forward_single_task(self, x, task_label):
        return self.heads[str(task_label)](self.features(x))


def test_multi_head_importance_ignores_avalanche_zero_padding():
    torch.manual_seed(0)
    model = _HeadsOfDifferentWidths()
    x, _ = _blobs(n_classes=2, per_class=20)
    labels = torch.zeros(len(x), dtype=torch.long)
    t = torch.zeros(len(x), dtype=torch.long)  # task 0: the 2-wide head, padded to 5 by Avalanche
    strategy = SimpleNamespace(model=model, experience=SimpleNamespace(dataset=TensorDataset(x, labels, t)))
    exact = {"clamp": "experience", "fisher": "per_sample"}  # batch-size free, so one batch matches 7
    plugin = SPPPlugin(lam=1.0, importance_batch_size=7, **exact)
    plugin.after_training_exp(strategy)
    own_logits = entropy_importance(
        model, [(x, 0)], lambda m, xb, task: m.forward_single_task(xb, task), **exact
    )
    for name in own_logits:
        torch.testing.assert_close(plugin.omega[name], own_logits[name])
    # The padded row (three extra logits of 0) would have given a different importance: the
    # same estimate (batch Fisher, one batch) on the padded and on the head's own logits differs.
    options = {"fisher": "batch", "clamp": "experience"}
    padded = entropy_importance(model, [(x, t)], lambda m, xb, tb: m(xb, tb), **options)
    own_batch = entropy_importance(
        model, [(x, 0)], lambda m, xb, task: m.forward_single_task(xb, task), **options
    )
    assert not torch.allclose(padded["features.0.weight"], own_batch["features.0.weight"])


def test_importance_uses_no_labels():
    torch.manual_seed(0)
    model = MTSimpleMLP(input_size=8, hidden_size=16)
    model.classifier.adaptation(SimpleNamespace(classes_in_this_experience=[0, 1], task_labels=[0]))
    x, y = _blobs(n_classes=2)
    t = torch.zeros(len(x), dtype=torch.long)
    results = []
    for targets in (y, torch.randint(0, 1000, y.shape), -y):
        plugin = SPPPlugin()
        dataset = TensorDataset(x, targets, t)
        plugin.after_training_exp(SimpleNamespace(model=model, experience=SimpleNamespace(dataset=dataset)))
        results.append(plugin.omega)
    for other in results[1:]:
        for name in results[0]:
            assert torch.equal(results[0][name], other[name])


def test_accumulation_sum_and_max():
    model = nn.Linear(3, 2)
    first = {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}
    second = {"weight": torch.full((2, 3), 2.0), "bias": torch.ones(2)}
    summed, maxed = SPPPlugin(accumulate="sum"), SPPPlugin(accumulate="max")
    for plugin in (summed, maxed):
        plugin.update(model, first)
        plugin.update(model, second)
    assert torch.equal(summed.omega["weight"], torch.full((2, 3), 3.0))
    assert torch.equal(maxed.omega["weight"], torch.full((2, 3), 2.0))
    assert torch.equal(summed.anchor["bias"], model.bias.detach())


def test_shape_change_that_is_not_growth_is_refused():
    plugin = SPPPlugin()
    plugin.update(nn.Linear(3, 4), {"weight": torch.ones(4, 3), "bias": torch.ones(4)})
    with pytest.raises(ValueError, match="changed shape from \\(4, 3\\) to \\(4, 2\\)"):
        plugin.penalty_terms(nn.Linear(2, 4))
    with pytest.raises(ValueError, match="no longer has"):
        plugin.penalty_terms(nn.Sequential(nn.Linear(3, 4)))


def test_state_dict_round_trip_and_importance_subset():
    bench = _stream()
    model = MTSimpleMLP(input_size=8, hidden_size=16)
    plugin = SPPPlugin(lam=0.5, importance_samples=10, accumulate="max")
    _strategy(model, [plugin], epochs=1).train(bench.train_stream[0])
    fresh = SPPPlugin()
    fresh.load_state_dict(plugin.state_dict())
    assert fresh.lam == 0.5 and fresh.accumulate == "max" and fresh.importance_samples == 10
    for name in plugin.omega:
        assert torch.equal(fresh.omega[name], plugin.omega[name])
        assert torch.equal(fresh.anchor[name], plugin.anchor[name])
    with pytest.raises(ValueError, match="missing keys"):
        fresh.load_state_dict({"omega": {}})


@pytest.mark.subprocess
def test_checkpoint_round_trip_in_a_fresh_process(tmp_path):
    """Save after task 2 with Avalanche, load in a new process, finish: same weights as one run."""
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {str(tmp_path)!r})
        from avalanche.checkpointing import maybe_load_checkpoint, save_checkpoint
        from avalanche.training.determinism.rng_manager import RNGManager
        from avalanche.models import MTSimpleMLP
        from avalanche.training import Naive
        from avalanche_spp import SPPPlugin
        import stream_def
        torch.set_num_threads(1)
        mode, ckpt, out = sys.argv[1], sys.argv[2], sys.argv[3]
        RNGManager.set_random_seeds(0)
        bench = stream_def.make()
        model = MTSimpleMLP(input_size=8, hidden_size=16)
        strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                         criterion=torch.nn.CrossEntropyLoss(),
                         train_mb_size=16, train_epochs=2, plugins=[SPPPlugin(lam=5.0)], evaluator=None)
        start = 0
        if mode == "resume":
            strategy, start = maybe_load_checkpoint(strategy, ckpt)
        for i, exp in enumerate(bench.train_stream):
            if i < start:
                continue
            strategy.train(exp)
            if mode == "save" and i == 1:
                save_checkpoint(strategy, ckpt)
                break
        if mode != "save":
            torch.save({{n: p.detach() for n, p in strategy.model.named_parameters()}}, out)
        """
    )
    (tmp_path / "run.py").write_text(script)
    source = textwrap.dedent(
        """
        import torch
        from avalanche.benchmarks import nc_benchmark
        from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as mk
        def make():
            gen = torch.Generator().manual_seed(0)
            centres = 3 * torch.randn(6, 8, generator=gen)
            x = torch.cat([c + torch.randn(30, 8, generator=gen) for c in centres])
            y = torch.arange(6).repeat_interleave(30)
            return nc_benchmark(mk(x, y), mk(x, y), n_experiences=3, task_labels=True, seed=0,
                                fixed_class_order=list(range(6)), class_ids_from_zero_in_each_exp=True)
        """
    )
    (tmp_path / "stream_def.py").write_text(source)
    ckpt, whole, resumed = tmp_path / "ckpt.pkl", tmp_path / "whole.pt", tmp_path / "resumed.pt"

    def run(*args):
        subprocess.run(
            [sys.executable, str(tmp_path / "run.py"), *map(str, args)],
            check=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )

    run("whole", ckpt, whole)
    run("save", ckpt, "-")
    assert ckpt.exists()
    run("resume", ckpt, resumed)
    a, b = torch.load(whole), torch.load(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_multi_head_classifier_model_end_to_end():
    class Net(MultiTaskModule):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
            self.classifier = MultiHeadClassifier(16)

        def forward_single_task(self, x, task_label):
            return self.classifier(self.features(x), task_label)

    bench = _stream()
    model = Net()
    plugin = SPPPlugin(lam=1.0, fisher="batch")
    strategy = _strategy(model, [plugin], epochs=1)
    for exp in bench.train_stream:
        strategy.train(exp)
    assert len(plugin.importance_time_s) == 3
    assert {n for n in plugin.omega if "classifiers" in n} == {
        f"classifier.classifiers.{t}.classifier.{p}" for t in range(3) for p in ("weight", "bias")
    }


def test_state_follows_the_model_dtype_on_any_machine():
    # The CPU stand-in for the CUDA test below: the state is created with the model's dtype (and
    # device), so a float64 model gets float64 importances and anchors and a float64 penalty.
    bench = _stream()
    model = MTSimpleMLP(input_size=8, hidden_size=16).double()
    plugin = SPPPlugin()
    x = bench.train_stream[0].dataset
    strategy = SimpleNamespace(model=model, experience=SimpleNamespace(
        dataset=TensorDataset(torch.stack([x[i][0] for i in range(len(x))]).double(),
                              torch.tensor([x[i][1] for i in range(len(x))]),
                              torch.tensor([x[i][2] for i in range(len(x))])),
        current_experience=0))  # fmt: skip
    plugin.after_training_exp(strategy)
    assert plugin.omega and all(o.dtype == torch.float64 for o in plugin.omega.values())
    assert all(a.dtype == torch.float64 for a in plugin.anchor.values())
    assert plugin.penalty(model).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_state_lives_on_the_model_device():
    bench = _stream()
    model = MTSimpleMLP(input_size=8, hidden_size=16)
    plugin = SPPPlugin(lam=1.0)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=16,
        train_epochs=1,
        plugins=[plugin],
        evaluator=None,
        device="cuda",
    )
    strategy.train(bench.train_stream[0])
    strategy.train(bench.train_stream[1])
    assert all(o.is_cuda for o in plugin.omega.values()) and all(a.is_cuda for a in plugin.anchor.values())


def test_spp_with_zero_strength_trains_exactly_like_naive():
    """The importance pass has no side effect: no RNG drawn, model mode restored, no gradient left."""
    bench = _stream()
    weights = []
    for plugins in ([], [SPPPlugin(lam=0.0)]):
        torch.manual_seed(0)
        model = MTSimpleMLP(input_size=8, hidden_size=16)
        strategy = _strategy(model, plugins)
        for exp in bench.train_stream:
            strategy.train(exp)
        weights.append({n: p.detach().clone() for n, p in model.named_parameters()})
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name


def _train_two_tasks(penalty_via: str, lam: float = 50.0, scale: str = "raw"):
    torch.manual_seed(0)
    bench = _stream()
    model = MTSimpleMLP(input_size=8, hidden_size=16)
    # the first-order form: on the raw scale its Omega is large enough at lam 50 to move this model
    plugin = SPPPlugin(lam=lam, penalty_via=penalty_via, scale=scale, taylor_of="neg_entropy")
    strategy = _strategy(model, [plugin])
    strategy.train(bench.train_stream[0])
    strategy.train(bench.train_stream[1])  # learned under the penalty
    return model, plugin


def test_gradient_path_trains_exactly_like_the_loss_path():
    # penalty_via="gradient" adds 2 lam Omega (W - W*) to .grad after backward; "loss" adds
    # lam * sum Omega (W - W*)^2 to strategy.loss before it. Same SGD trajectory either way.
    via_grad, plugin = _train_two_tasks("gradient")
    via_loss, _ = _train_two_tasks("loss")
    free, _ = _train_two_tasks("gradient", lam=0.0)
    moved = 0.0
    triples = zip(via_grad.named_parameters(), via_loss.parameters(), free.parameters(), strict=True)
    for (name, a), b, c in triples:
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
        moved = max(moved, (a - c).abs().max().item())
    assert moved > 1e-3  # the penalty did change the trajectory: the comparison is not vacuous
    assert plugin.penalty_via == "gradient"


def test_gradient_path_adds_exactly_the_penalty_gradient_in_a_training_step():
    model, plugin = _train_two_tasks("gradient")
    w_star = _weights(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    x = torch.randn(4, 8)
    strategy = SimpleNamespace(model=model)
    model.zero_grad()
    nn.functional.cross_entropy(model(x, 0), torch.zeros(4, dtype=torch.long)).backward()
    task_grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    plugin.after_backward(strategy)
    params = dict(model.named_parameters())
    untouched = 0
    for name, omega in plugin.omega.items():
        if task_grads[name] is None:  # the loss did not reach it (head 1): no gradient at all
            assert params[name].grad is None, name
            untouched += 1
            continue
        expected = task_grads[name] + 2 * plugin.lam * omega * (params[name].detach() - w_star[name])
        torch.testing.assert_close(params[name].grad, expected, msg=name)
    assert untouched > 0 and untouched < len(plugin.omega)


def test_penalty_via_must_be_gradient_or_loss():
    with pytest.raises(ValueError, match=r"penalty_via must be one of \['gradient', 'loss'\]"):
        SPPPlugin(penalty_via="hook")


# ------------------------------------------------------------------------------ review bugs
def test_shards_cover_every_sample_once_for_a_size_not_divisible_by_the_world(monkeypatch):
    from avalanche_spp import distributed as plugin_module

    seen = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 4)
    for rank in range(4):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        sampler = plugin_module._distributed_sampler(list(range(10)))
        seen += list(sampler)
        assert len(sampler) == len(list(sampler))
    assert sorted(seen) == list(range(10))  # DistributedSampler would repeat samples 0 and 1


def test_a_parameter_frozen_between_experiences_round_trips_and_can_be_unfrozen():
    bench = _stream()
    model = MTSimpleMLP(input_size=8, hidden_size=16)
    plugin = SPPPlugin(lam=1.0)
    strategy = _strategy(model, [plugin], epochs=1)
    strategy.train(bench.train_stream[0])
    frozen = model.features[0].weight
    frozen.requires_grad_(False)
    w_frozen = frozen.detach().clone()
    strategy.train(bench.train_stream[1])
    fresh = SPPPlugin()
    fresh.load_state_dict(plugin.state_dict())  # used to raise "corrupt SPPPlugin state"
    assert torch.equal(fresh.anchor["features.0.weight"], w_frozen)
    frozen.requires_grad_(True)
    params, anchors, omegas = fresh.penalty_terms(model)  # used to raise KeyError
    assert any(p is frozen for p in params)
    strategy.train(bench.train_stream[2])
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("penalty_via", ["gradient", "loss"])
@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam"])
def test_a_head_the_loss_does_not_touch_stays_exactly_where_it_was(penalty_via, optimizer):
    torch.manual_seed(0)
    bench = _stream()
    model = MTSimpleMLP(input_size=8, hidden_size=16)
    make = {
        "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
        "adam": lambda ps: torch.optim.Adam(ps, lr=0.01),
    }[optimizer]
    strategy = Naive(
        model=model,
        optimizer=make(model.parameters()),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=16,
        train_epochs=2,
        plugins=[SPPPlugin(lam=10.0, penalty_via=penalty_via)],
        evaluator=None,  # Avalanche's default reset_optimizer_state=False: stale momentum is kept
    )
    strategy.train(bench.train_stream[0])
    head0 = {n: p.detach().clone() for n, p in model.named_parameters() if "classifiers.0." in n}
    trunk = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("features")}
    strategy.train(bench.train_stream[1])
    for name, before in head0.items():
        assert torch.equal(dict(model.named_parameters())[name], before), name
    moved = max((dict(model.named_parameters())[n] - w).abs().max().item() for n, w in trunk.items())
    assert moved > 1e-4  # the trunk did learn task 2: the test is not vacuous


def test_load_state_dict_refuses_settings_that_would_change_behaviour_silently():
    plugin = SPPPlugin(lam=2.0)
    state = plugin.state_dict()
    for key, value in (("penalty_via", "foo"), ("scale", "log"), ("clamp", True), ("colour", 1)):
        broken = {**state, "settings": {**state["settings"], key: value}}
        with pytest.raises(ValueError, match="corrupt SPPPlugin state: its settings"):
            SPPPlugin().load_state_dict(broken)
    fresh = SPPPlugin()
    fresh.load_state_dict(state)
    assert fresh.state_dict()["settings"] == state["settings"]


def test_saturated_scale_is_unit_free_and_bounded():
    # Multiplying every importance by a constant (another model, data set or form) leaves the
    # penalty of scale="saturate" unchanged; the raw penalty scales with it.
    bench = _stream()
    model = MTSimpleMLP(input_size=8, hidden_size=16)
    plugin = SPPPlugin(lam=1.0)
    _strategy(model, [plugin], epochs=1).train(bench.train_stream[0])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    penalties = {}
    for factor in (1.0, 1e4):
        for scale in ("saturate", "raw", "mean"):
            other = SPPPlugin(lam=1.0, scale=scale)
            other.load_state_dict(
                {**plugin.state_dict(), "settings": {**plugin.state_dict()["settings"], "scale": scale}}
            )
            other.omega = {n: o * factor for n, o in other.omega.items()}
            penalties[scale, factor] = other.penalty(model).item()
            _, _, weights = other.penalty_terms(model)
            if scale == "saturate":
                assert all((w >= 0).all() and (w < 1).all() for w in weights)
    assert penalties["saturate", 1e4] == pytest.approx(penalties["saturate", 1.0], rel=1e-5)
    assert penalties["mean", 1e4] == pytest.approx(penalties["mean", 1.0], rel=1e-5)
    assert penalties["raw", 1e4] == pytest.approx(1e4 * penalties["raw", 1.0], rel=1e-5)


def test_importance_samples_limits_the_inputs_the_pass_sees():
    bench = _stream()
    model = MTSimpleMLP(input_size=8, hidden_size=16)
    _strategy(model, [], epochs=1).train(bench.train_stream[0])
    seen = []
    handle = model.features.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    strategy = SimpleNamespace(model=model, experience=bench.train_stream[0])
    try:
        SPPPlugin(importance_samples=10, importance_batch_size=4).after_training_exp(strategy)
        subset = sum(seen)
        seen.clear()
        SPPPlugin().after_training_exp(strategy)
        whole = sum(seen)
    finally:
        handle.remove()
    assert subset == 10 and whole == len(bench.train_stream[0].dataset) > 10


@pytest.mark.parametrize("variant", [None, {"temperature": 2.0}, {"measure_curvature": True}])
def test_the_importance_pass_sends_at_most_a_training_batch_through_the_model(variant):
    from benchmarks.spp_variants import SPPVariantPlugin  # the harness's subclass passes it on too

    make = SPPPlugin if variant is None else lambda: SPPVariantPlugin(**variant, curvature_samples=1)
    bench = _stream()
    model = MTSimpleMLP(input_size=8, hidden_size=16)
    _strategy(model, [], epochs=1).train(bench.train_stream[0])
    seen: list[int] = []
    handle = model.features.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    experience = bench.train_stream[0]
    try:
        chunked = make()
        chunked.after_training_exp(SimpleNamespace(model=model, experience=experience, train_mb_size=16))
        chunks = [n for n in seen if n > 1]  # measure_curvature's Fisher sends one input at a time
        seen.clear()
        whole = make()  # a strategy with no train_mb_size: whole importance batches
        whole.after_training_exp(SimpleNamespace(model=model, experience=experience))
    finally:
        handle.remove()
    assert len(experience.dataset) == 60 and chunks == [16, 16, 16, 12] and [n for n in seen if n > 1] == [60]
    for name, omega in whole.omega.items():  # float32 sums in another order: equal up to rounding
        error = float((chunked.omega[name] - omega).abs().max())
        assert error <= 1e-5 * float(omega.abs().max()), (name, error)


# ------------------------------------------------------------ mutants that survived (docs/testing.md)


def test_penalty_before_any_importance_is_a_zero_scalar_on_the_model_device():
    plugin = SPPPlugin()
    model = nn.Linear(3, 2).to("meta")
    value = plugin.penalty(model)
    assert value.shape == () and value.device.type == "meta"
    without_parameters = plugin.penalty(nn.Identity())
    assert without_parameters.shape == () and float(without_parameters) == 0.0


def _trained_state(**kwargs) -> tuple[SPPPlugin, nn.Module]:
    model = MTSimpleMLP(input_size=8, hidden_size=16)
    plugin = SPPPlugin(lam=0.5, **kwargs)
    _strategy(model, [plugin], epochs=1).train(_stream().train_stream[0])
    return plugin, model


def test_load_state_dict_refuses_non_tensors_and_negative_importance():
    torch.manual_seed(0)
    plugin, _ = _trained_state()
    name = next(iter(plugin.omega))
    for broken, message in (
        ({"omega": {**plugin.omega, name: plugin.omega[name].tolist()}}, "must be tensors"),
        ({"anchor": {**plugin.anchor, name: plugin.anchor[name].tolist()}}, "must be tensors"),
        ({"omega": {**plugin.omega, name: plugin.omega[name] - 1.0}}, "negative, NaN or Inf"),
    ):
        with pytest.raises(ValueError, match=message):
            SPPPlugin().load_state_dict({**plugin.state_dict(), **broken})


def test_a_loaded_state_replaces_the_terms_of_an_earlier_penalty():
    torch.manual_seed(0)
    plugin, model = _trained_state()
    strategy = SimpleNamespace(model=model)
    before = plugin._live_penalty_terms(strategy)[1][0].clone()  # builds and caches the terms
    state = plugin.state_dict()
    state["anchor"] = {n: a + 1.0 for n, a in state["anchor"].items()}
    plugin.load_state_dict(state)
    after = plugin._live_penalty_terms(strategy)[1][0]
    torch.testing.assert_close(after, before + 1.0)


def test_shard_sampler_refuses_a_rank_outside_the_world():
    from avalanche_spp.distributed import ShardSampler

    assert list(ShardSampler(10, rank=3, world_size=4)) == [3, 7]
    for rank in (4, -1):
        with pytest.raises(ValueError, match=r"rank must be in \[0, 4\)"):
            ShardSampler(10, rank=rank, world_size=4)


def test_all_reduce_and_shards_only_with_more_than_one_process(monkeypatch):
    from avalanche_spp import distributed

    calls = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor, op=None: calls.append((tensor, op)))
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    for world, expected in ((1, None), (2, "sum"), (3, "sum")):
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda world=world: world)
        reduce = distributed._all_reduce_if_distributed()
        sampler = distributed._distributed_sampler(list(range(7)))
        if expected is None:
            assert reduce is None and sampler is None
            continue
        tensor = torch.ones(2)
        reduce(tensor)
        assert calls[-1][0] is tensor and calls[-1][1] == torch.distributed.ReduceOp.SUM
        assert list(sampler) == list(range(1, 7, world))


def test_grow_to_pads_new_output_rows_with_zeros_and_refuses_anything_else():
    from avalanche_spp._model_parts import _grow_to

    old = torch.arange(6.0).reshape(2, 3)
    grown = _grow_to(old, torch.Size([4, 3]), "w", what="importance")
    torch.testing.assert_close(grown[:2], old)
    assert grown.shape == (4, 3) and torch.count_nonzero(grown[2:]) == 0
    assert _grow_to(old, torch.Size([2, 3]), "w", what="importance") is old
    bias = _grow_to(torch.ones(2), torch.Size([3]), "b", what="anchor")
    torch.testing.assert_close(bias, torch.tensor([1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="only follows layers that grow"):
        _grow_to(old, torch.Size([1, 3]), "w", what="importance")  # fewer output units
    with pytest.raises(ValueError, match="inputs"):
        _grow_to(old, torch.Size([2, 4]), "w", what="importance")  # more inputs
    with pytest.raises(ValueError, match="only follows layers that grow"):
        _grow_to(old, torch.Size([6]), "w", what="importance")  # another rank


def test_the_importance_pass_uses_the_plugin_settings_and_a_seeded_subset():
    from avalanche_spp.importance import entropy_importance as measure

    bench = _stream()
    settings = {"taylor_of": "entropy", "clamp": "experience", "fisher": "per_sample"}
    torch.manual_seed(0)
    model = MTSimpleMLP(input_size=8, hidden_size=16)
    plugin = SPPPlugin(lam=0.5, importance_samples=10, seed=3, **settings)
    _strategy(model, [plugin], epochs=1).train(bench.train_stream[0])
    assert len(plugin.importance_time_s) == 1 and 0 <= plugin.importance_time_s[0] < 60
    dataset = bench.train_stream[0].dataset.eval()
    order = sorted(torch.randperm(len(dataset), generator=torch.Generator().manual_seed(3))[:10].tolist())
    x = torch.stack([dataset[i][0] for i in order])
    expected = measure(model, [(x, 0)], lambda m, xb, t: m(xb, t), **settings)
    for name, omega in expected.items():
        torch.testing.assert_close(plugin.omega[name], omega, msg=name)
    other = SPPPlugin(lam=0.5, importance_samples=10, seed=4, **settings)
    other.after_training_exp(SimpleNamespace(model=model, experience=bench.train_stream[0], plugins=[]))
    assert any(not torch.allclose(other.omega[n], plugin.omega[n]) for n in expected)  # another subset


def test_default_plugin_adds_its_penalty_gradient():
    torch.manual_seed(0)
    bench = _stream()
    model = MTSimpleMLP(input_size=8, hidden_size=16)
    plugin = SPPPlugin()  # the default strength, saturating scale
    strategy = _strategy(model, [plugin], epochs=1)
    strategy.train(bench.train_stream[0])
    from avalanche_spp.penalty import mean_importance, scaled_importance

    mean = mean_importance(plugin.omega.values())
    w_star = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
            p.grad = torch.zeros_like(p)
    plugin.after_backward(strategy)
    params = dict(model.named_parameters())
    moved = 0
    for name, omega in plugin.omega.items():
        scaled = scaled_importance(omega, "saturate", mean)
        expected = 2 * plugin.lam * scaled * (params[name].detach() - w_star[name])
        torch.testing.assert_close(params[name].grad, expected, msg=name)
        moved += int(torch.count_nonzero(expected))
    assert moved > 0


def test_an_empty_experience_is_refused_with_its_number():
    plugin = SPPPlugin()
    strategy = SimpleNamespace(experience=SimpleNamespace(current_experience=4), adapted_dataset=[])
    with pytest.raises(ValueError, match="experience 4 has no training sample"):
        plugin.after_train_dataset_adaptation(strategy)
    plugin.after_train_dataset_adaptation(
        SimpleNamespace(experience=None, adapted_dataset=[1])
    )  # one is enough


def test_one_sample_and_batches_of_one_are_allowed():
    plugin = SPPPlugin(importance_samples=1, importance_batch_size=1)
    assert plugin.importance_samples == 1 and plugin.importance_batch_size == 1


# ------------------------------------------------ the importance pass reads the experience as it should
class _ViewDataset(torch.utils.data.Dataset):
    """A data set with train and eval views (the eval view adds 1) and its own collate function."""

    def __init__(self, x: torch.Tensor, offset: float = 0.0, collate_scale: float = 1.0) -> None:
        self.x, self.offset, self.collate_scale = x, offset, collate_scale

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i] + self.offset, 0, 0

    def eval(self) -> _ViewDataset:
        return _ViewDataset(self.x, self.offset + 1.0, self.collate_scale)

    def collate_fn(self, items):
        xs = torch.stack([x for x, _, _ in items]) * self.collate_scale
        return xs, torch.zeros(len(items), dtype=torch.long), torch.zeros(len(items), dtype=torch.long)


def _importance_of(dataset, model, **kwargs) -> dict[str, torch.Tensor]:
    plugin = SPPPlugin(**kwargs)
    strategy = SimpleNamespace(model=model, experience=SimpleNamespace(dataset=dataset, current_experience=0))
    plugin.after_training_exp(strategy)
    return plugin.omega


def test_the_pass_reads_every_batch_in_order_through_the_eval_view_and_the_collate_function():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(23, 4, dtype=torch.float64)
    omega = _importance_of(_ViewDataset(x, collate_scale=2.0), model, importance_batch_size=5)
    # The eval view (+1), then the data set's own collate (x2), batches of 5 in order, all 23 samples;
    # the default clamp is per mini-batch, so the order and the size of the batches matter.
    expected = entropy_importance(model, list((2.0 * (x + 1.0)).split(5)))
    for name, value in expected.items():
        torch.testing.assert_close(omega[name], value, msg=name)
    default = _importance_of(_ViewDataset(x), model)
    torch.testing.assert_close(default["0.weight"], entropy_importance(model, [x + 1.0])["0.weight"])
    assert SPPPlugin().importance_batch_size == 256  # the documented default (docs/method.md)


def test_the_pass_uses_the_shard_the_distributed_sampler_gives(monkeypatch):
    from avalanche_spp import distributed
    from avalanche_spp import plugin as plugin_module

    seen = []

    def shard(dataset):
        seen.append(len(dataset))
        return distributed.ShardSampler(len(dataset), 1, 2)  # rank 1 of 2: the odd samples

    monkeypatch.setattr(plugin_module, "_distributed_sampler", shard)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3)).double()
    x = torch.randn(10, 4, dtype=torch.float64)
    omega = _importance_of(_ViewDataset(x), model, clamp="experience")
    assert seen == [10]
    expected = entropy_importance(model, [x[1::2] + 1.0], clamp="experience")
    torch.testing.assert_close(omega["0.weight"], expected["0.weight"])


def test_the_pass_hands_the_ranks_sum_to_the_importance(monkeypatch):
    from avalanche_spp import plugin as plugin_module

    reduced = []
    monkeypatch.setattr(plugin_module, "_all_reduce_if_distributed", lambda: reduced.append)
    model = nn.Sequential(nn.Linear(4, 3)).double()
    _importance_of(_ViewDataset(torch.randn(6, 4, dtype=torch.float64)), model)
    assert len(reduced) == 3 and reduced[-1].tolist() == [6.0]  # weight, bias, then the sample count


def test_the_default_subset_seed_is_0():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3)).double()
    x = torch.randn(30, 4, dtype=torch.float64)
    omega = _importance_of(_ViewDataset(x), model, importance_samples=7, clamp="experience")
    order = sorted(torch.randperm(30, generator=torch.Generator().manual_seed(0))[:7].tolist())
    expected = entropy_importance(model, [x[order] + 1.0], clamp="experience")
    torch.testing.assert_close(omega["0.weight"], expected["0.weight"])


def test_after_training_exp_refuses_an_empty_experience_itself():
    empty = SimpleNamespace(dataset=_ViewDataset(torch.zeros(0, 4)), current_experience=3)
    strategy = SimpleNamespace(model=nn.Linear(4, 3), experience=empty)
    with pytest.raises(ValueError, match="experience 3 has no training sample"):
        SPPPlugin().after_training_exp(strategy)


def test_a_zero_strength_never_reads_the_stored_importance():
    plugin = SPPPlugin(lam=0.0)
    plugin.omega = {"gone.weight": torch.ones(2)}  # a parameter the model does not have
    plugin.anchor = {"gone.weight": torch.zeros(2)}
    model = nn.Linear(2, 2)
    model(torch.randn(3, 2)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    plugin.after_backward(SimpleNamespace(model=model))  # lam = 0: nothing to add, nothing to check
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    plugin.lam = 1.0
    with pytest.raises(ValueError, match="no longer has"):  # what reading it would have done
        plugin.after_backward(SimpleNamespace(model=model))


# --------------------------------------------------------- the stored state follows the model's device
def test_penalty_terms_follow_the_model_device_and_dtype_and_skip_only_frozen_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    plugin = SPPPlugin()
    plugin.update(model, {n: torch.rand_like(p) for n, p in model.named_parameters()})
    model[0].weight.requires_grad_(False)  # the first one frozen: the others are still penalised
    params, anchors, omegas = plugin.penalty_terms(model)
    assert [p is q for p, q in zip(params, list(model.parameters())[1:], strict=True)] == [True] * 3
    double = model.double()
    params, anchors, omegas = plugin.penalty_terms(double)
    assert {t.dtype for t in anchors + omegas} == {torch.float64}
    meta = model.to("meta")
    params, anchors, omegas = plugin.penalty_terms(meta)
    assert {t.device.type for t in anchors + omegas} == {"meta"}


def test_update_moves_the_old_importance_to_the_new_one_s_device():
    model = nn.Linear(3, 2)
    plugin = SPPPlugin()
    plugin.update(model, {n: torch.ones_like(p) for n, p in model.named_parameters()})
    meta = nn.Linear(3, 2).to("meta")
    plugin.update(meta, {n: torch.ones_like(p) for n, p in meta.named_parameters()})
    assert {t.device.type for t in plugin.omega.values()} == {"meta"}


def test_seed_is_checked_and_a_strategy_without_adapted_dataset_is_fine():
    for seed in (1.5, True, "0"):
        with pytest.raises(ValueError, match="seed must be an int"):
            SPPPlugin(seed=seed)
    SPPPlugin().after_train_dataset_adaptation(SimpleNamespace())  # a custom template: nothing to check


def test_state_round_trip_keeps_the_times_and_a_state_without_settings_keeps_the_plugin_s_own():
    torch.manual_seed(0)
    plugin, _ = _trained_state()
    state = plugin.state_dict()
    fresh = SPPPlugin()
    fresh.load_state_dict(state)
    assert fresh.importance_time_s == plugin.importance_time_s and len(plugin.importance_time_s) == 1
    bare = {k: v for k, v in state.items() if k not in ("settings", "importance_time_s")}
    old = SPPPlugin(scale="raw")
    old.load_state_dict(bare)
    assert old.scale == "raw" and old.importance_time_s == [] and set(old.omega) == set(plugin.omega)


def _penalty_only_sgd(lam: float, sgd: dict, steps: int = 1000) -> float:
    """|W - W*| after ``steps`` SGD steps (``torch.optim.SGD(**sgd)``) on ``lam * M (W - W*)**2`` alone,
    from W - W* = 1, through the plugin's mask and gradient path. One weight: ``m`` is its own Omega,
    so ``M = 1/2``."""
    model = nn.Linear(1, 1, bias=False)
    plugin = SPPPlugin(lam=lam)
    plugin.omega = {"weight": torch.tensor([[999.0]])}
    plugin.anchor = {"weight": torch.zeros(1, 1)}
    with torch.no_grad():
        model.weight.fill_(1.0)
    optimizer = torch.optim.SGD(model.parameters(), **sgd)
    params, anchors, masks = plugin.penalty_terms(model)
    for _ in range(steps):
        optimizer.zero_grad()
        model.weight.grad = torch.zeros_like(model.weight)
        add_spp_penalty_grad_(params, anchors, masks, lam)
        optimizer.step()
    return float(model.weight.detach().abs().max())


@pytest.mark.parametrize(
    "sgd, limit",  # limit: (1 + mu) / (lr (1 - dampening)), with Nesterov (1 + mu) / (lr (1 + 2 mu))
    [
        ({"lr": 0.1}, 10.0),
        ({"lr": 0.1, "momentum": 0.9}, 19.0),
        ({"lr": 0.01, "momentum": 0.9}, 190.0),
        ({"lr": 0.1, "momentum": 0.9, "nesterov": True}, 1.9 / 0.28),
        ({"lr": 0.1, "momentum": 0.9, "dampening": 0.5}, 38.0),
    ],
)
def test_sgd_stability_bound_of_the_saturating_penalty_and_its_warning(sgd, limit):
    mask = 0.5  # M of the helper's single weight
    assert _penalty_only_sgd(0.9 * limit / mask, sgd) < 1e-2  # lam M below the bound: back to W*
    assert not _penalty_only_sgd(1.1 * limit / mask, sgd) < 1e3  # just above it: diverges (or NaN)
    strategy = SimpleNamespace(
        model=nn.Linear(1, 1), optimizer=torch.optim.SGD(nn.Linear(1, 1).parameters(), **sgd)
    )
    assert sgd_strength_limit(strategy.optimizer.param_groups[0]) == pytest.approx(limit)
    assert sgd_strength_limit({**strategy.optimizer.param_groups[0], "lr": 0.0}) == float("inf")  # lr 0
    with pytest.warns(UserWarning, match=f"lam < \\(1 \\+ momentum\\) / lr = {limit:.3g}"):
        SPPPlugin(lam=1.001 * limit).before_training_exp(strategy)  # (the limit's last digit may round)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SPPPlugin(lam=0.99 * limit).before_training_exp(strategy)  # below the bound: silent
        SPPPlugin(lam=limit, scale="raw").before_training_exp(strategy)  # unbounded M: no such bound
        adam = SimpleNamespace(
            model=nn.Linear(1, 1), optimizer=torch.optim.Adam(nn.Linear(1, 1).parameters())
        )
        SPPPlugin(lam=1e6).before_training_exp(adam)  # Adam has no such limit
