"""Tests of the SPP importance math (plain PyTorch, no Avalanche)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from avalanche_spp.importance import bernoulli_entropy, categorical_entropy
from avalanche_spp.importance import entropy_importance as _entropy_importance
from avalanche_spp.penalty import spp_penalty

#: The options most tests here were written for: the paper's reading of eq. 3 (the change of the
#: entropy, one clamp over the whole data, per-sample Fisher). A test that names an option wins.
PAPER_READING = {"taylor_of": "entropy", "clamp": "experience", "fisher": "per_sample"}


def entropy_importance(model, batches, forward=None, **options):
    """:func:`avalanche_spp.importance.entropy_importance` with :data:`PAPER_READING` as defaults."""
    return _entropy_importance(model, batches, forward, **{**PAPER_READING, **options})


def _tiny_mlp(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)


def _hand_omega(weight: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Omega of a bias-free linear softmax model z = W x, by the closed-form entropy gradient.

    dH/dz_j = -q_j (log q_j + H), so dH/dW_jk = dH/dz_j * x_k; g is its mean over samples and the
    per-sample Fisher is the mean of its square. Omega = max(0, -g W + W^2 F / 2).
    """
    grads = []
    for x in xs:
        z = weight @ x
        q = np.exp(z - z.max())
        q /= q.sum()
        entropy = -(q * np.log(q)).sum()
        dz = -q * (np.log(q) + entropy)
        grads.append(np.outer(dz, x))
    grads = np.stack(grads)
    g, fisher = grads.mean(0), (grads**2).mean(0)
    return np.maximum(0.0, -g * weight + 0.5 * weight**2 * fisher)


def test_omega_equals_hand_computed_value_for_linear_softmax():
    weight = np.array([[0.5, -1.0], [1.5, 0.25], [-0.3, 0.8]])
    xs = np.array([[1.0, 2.0], [-0.5, 0.3], [2.0, -1.0]])
    model = nn.Linear(2, 3, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(weight))
    omega = entropy_importance(model, [torch.from_numpy(xs)], fisher="per_sample")
    np.testing.assert_allclose(omega["weight"].numpy(), _hand_omega(weight, xs), rtol=1e-10, atol=1e-14)
    # With a single sample per batch, the batch Fisher is the per-sample one.
    batch = entropy_importance(model, torch.from_numpy(xs).split(1), fisher="batch")
    np.testing.assert_allclose(batch["weight"].numpy(), _hand_omega(weight, xs), rtol=1e-10, atol=1e-14)


def test_labels_play_no_part_and_per_sample_is_batch_size_invariant():
    model = _tiny_mlp()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, dtype=torch.float64, generator=gen)
    small = entropy_importance(model, x.split(7))
    large = entropy_importance(model, [x])
    for name in small:
        torch.testing.assert_close(small[name], large[name], rtol=1e-9, atol=1e-15)
    # Items that carry labels: the forward sees them, the importance must not depend on them.
    seen: list[torch.Tensor] = []

    def forward(m, xb, yb):
        seen.append(yb)
        return m(xb)

    y = torch.randint(0, 3, (64,), generator=gen)
    with_labels = entropy_importance(model, list(zip(x.split(16), y.split(16), strict=True)), forward=forward)
    other_labels = entropy_importance(
        model, list(zip(x.split(16), (2 - y).split(16), strict=True)), forward=forward
    )
    assert len(seen) >= 8  # the labels did reach the forward, in both passes
    for name in large:
        torch.testing.assert_close(with_labels[name], large[name], rtol=1e-9, atol=1e-15)
        torch.testing.assert_close(other_labels[name], large[name], rtol=1e-9, atol=1e-15)


def test_batch_fisher_depends_on_batch_size_but_first_order_term_does_not():
    model = _tiny_mlp()
    x = torch.randn(64, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    raw = {
        size: entropy_importance(model, x.split(size), fisher="batch", clamp="none") for size in (1, 8, 64)
    }
    per_sample = entropy_importance(model, [x], clamp="none")
    w = model[0].weight.detach()
    torch.testing.assert_close(raw[1]["0.weight"], per_sample["0.weight"])
    # The squared mean of a batch is smaller than the mean of squares: the curvature term shrinks.
    second_order = {s: (raw[s]["0.weight"] - raw[64]["0.weight"]) for s in (1, 8)}
    assert (second_order[1] >= -1e-12).all() and second_order[1].abs().sum() > 0
    assert second_order[8].abs().sum() < second_order[1].abs().sum()
    # -g W is identical whatever the batch size: the difference is only the W^2 F / 2 term,
    # here checked against per-sample gradients taken one input at a time.
    grads = []
    for row in x:
        model.zero_grad()
        categorical_entropy(model(row[None])).sum().backward()
        grads.append(model[0].weight.grad.detach().clone())
    per_sample_grads = torch.stack(grads)  # (64, 5, 4)
    fisher_1 = (per_sample_grads**2).mean(0)  # batches of one: the per-sample Fisher
    fisher_64 = per_sample_grads.mean(0) ** 2  # one batch: the squared mean gradient
    expected = 0.5 * w * w * (fisher_1 - fisher_64)
    torch.testing.assert_close(raw[1]["0.weight"] - raw[64]["0.weight"], expected)


def test_omega_is_nonnegative_and_zero_for_parameters_that_cannot_act():
    class WithDeadParts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(3, 4)
            self.unused = nn.Linear(3, 4)  # never called in forward

        def forward(self, x):
            return self.body(x)

    torch.manual_seed(0)
    model = WithDeadParts().double()
    x = torch.randn(32, 3, dtype=torch.float64)
    x[:, 2] = 0.0  # the third input is always zero: weights reading it cannot change the output
    omega = entropy_importance(model, x.split(8))
    assert all((o >= 0).all() for o in omega.values())
    assert torch.equal(omega["unused.weight"], torch.zeros(4, 3, dtype=torch.float64))
    assert torch.equal(omega["unused.bias"], torch.zeros(4, dtype=torch.float64))
    assert torch.equal(omega["body.weight"][:, 2], torch.zeros(4, dtype=torch.float64))
    assert omega["body.weight"][:, :2].sum() > 0


def _exact_taylor_estimate(model: nn.Module, x: torch.Tensor, taylor_of: str) -> dict[str, torch.Tensor]:
    """``s g W + 1/2 W**2 h`` with the exact Hessian diagonal ``h`` of the mean entropy (torch.func),
    ``s`` the library's sign for ``taylor_of``: the unclamped estimate before the Fisher stands in."""
    from avalanche_spp.importance import _ImportanceOptions

    sign = _ImportanceOptions.checked(model, [x], taylor_of, "none", "per_sample", None, "auto").sign
    params = {n: p.detach() for n, p in model.named_parameters()}
    estimate = {}
    for name, w in params.items():

        def mean_entropy(value, name=name):
            logits = torch.func.functional_call(model, {**params, name: value}, (x,))
            return categorical_entropy(logits).mean()

        g = torch.func.grad(mean_entropy)(w)
        h = torch.func.hessian(mean_entropy)(w).reshape(w.numel(), w.numel()).diagonal().view_as(w)
        estimate[name] = sign * g * w + 0.5 * w * w * h
    return estimate


def test_taylor_estimate_with_exact_hessian_matches_measured_entropy_change():
    """Zero each small weight for real; the second-order estimate must agree within 5%."""
    model = _tiny_mlp(seed=3)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.3)
    x = torch.randn(40, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    estimate = _exact_taylor_estimate(model, x, taylor_of="entropy")  # the change of H itself

    def mean_entropy() -> float:
        with torch.no_grad():
            return categorical_entropy(model(x)).mean().item()

    base = mean_entropy()
    checked = 0
    for name, p in model.named_parameters():
        flat = p.data.view(-1)
        for k in range(flat.numel()):
            w = flat[k].item()
            if abs(w) > 0.08:  # the estimate is a Taylor expansion: check it where it applies
                continue
            flat[k] = 0.0
            measured = mean_entropy() - base
            flat[k] = w
            predicted = estimate[name].view(-1)[k].item()
            if abs(measured) < 1e-9:
                continue
            assert predicted == pytest.approx(measured, rel=0.05), (name, k, w)
            checked += 1
    assert checked >= 10


def test_fisher_estimate_is_clamped_version_of_fisher_taylor_terms():
    model = _tiny_mlp(seed=5)
    x = torch.randn(30, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    raw = entropy_importance(model, [x], clamp="none")
    clamped = entropy_importance(model, [x])
    for name in raw:
        torch.testing.assert_close(clamped[name], raw[name].clamp_min(0))
    assert any((raw[n] < 0).any() for n in raw), "some weights lower the entropy when pruned"


def test_authors_first_order_sign_flips_only_the_gradient_term():
    model = _tiny_mlp(seed=7)
    x = torch.randn(30, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    paper = entropy_importance(model, [x], clamp="none")
    authors = entropy_importance(model, [x], clamp="none", taylor_of="neg_entropy")
    w = model[0].weight.detach()
    g = torch.autograd.grad(categorical_entropy(model(x)).mean(), model[0].weight)[0]
    torch.testing.assert_close(authors["0.weight"] - paper["0.weight"], 2 * g * w)


def test_saturated_logits_give_finite_entropy_and_importance():
    logits = torch.tensor([[1e4, -1e4, 0.0], [50.0, 50.0, -1e5]])
    entropy = categorical_entropy(logits)
    assert torch.isfinite(entropy).all()
    assert entropy[1].item() == pytest.approx(math.log(2), rel=1e-5)
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.fill_(1e4)
    omega = entropy_importance(model, [torch.randn(8, 2)])
    assert all(torch.isfinite(o).all() for o in omega.values())


def test_bernoulli_entropy_matches_definition_and_is_finite():
    logits = torch.tensor([[[0.0, 2.0], [-3.0, 100.0]]], dtype=torch.float64)
    p = torch.sigmoid(torch.tensor([0.0, 2.0, -3.0], dtype=torch.float64))
    moderate = -(p * p.log() + (1 - p) * (1 - p).log()).sum().item()
    value = bernoulli_entropy(logits)
    assert value.shape == (1,)
    # the direct formula gives NaN at a logit of 100 (log(1 - 1)); its entropy is ~ 0
    assert value.item() == pytest.approx(moderate, rel=1e-9)
    assert torch.isfinite(bernoulli_entropy(torch.tensor([[1e5, -1e5]]))).all()


def test_multi_argument_items_and_custom_forward():
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Linear(3, 4)
            self.heads = nn.ModuleList([nn.Linear(4, 2), nn.Linear(4, 5)])

        def forward(self, x, task: int):
            return self.heads[task](torch.relu(self.trunk(x)))

    torch.manual_seed(0)
    model = TwoHeads().double()
    x = torch.randn(12, 3, dtype=torch.float64)
    omega = entropy_importance(model, [(x, 1)])
    assert omega["heads.0.weight"].abs().sum() == 0  # head 0 never ran
    assert omega["heads.1.weight"].abs().sum() > 0
    per_batch = entropy_importance(model, [(x, 1)], fisher="batch")
    assert set(per_batch) == set(omega)
    # A custom forward decides which head runs: here the other one, whatever the item says.
    calls: list[int] = []

    def forward(m, xb, task):
        calls.append(task)
        return m(xb, 1 - task)

    swapped = entropy_importance(model, [(x, 1)], forward=forward)
    assert calls and set(calls) == {1}
    assert swapped["heads.1.weight"].abs().sum() == 0 and swapped["heads.0.weight"].abs().sum() > 0
    direct = entropy_importance(model, [(x, 0)])
    for name in direct:
        torch.testing.assert_close(swapped[name], direct[name], rtol=1e-9, atol=1e-15)


def test_frozen_parameters_and_buffers_get_no_importance():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    omega = entropy_importance(model, [torch.randn(16, 3)])
    assert "0.weight" not in omega and "0.bias" in omega
    assert not any("running" in name for name in omega)


def test_model_mode_is_restored():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2))
    model.train()
    model[1].eval()
    entropy_importance(model, [torch.randn(4, 3)])
    assert model.training and model[0].training and not model[1].training


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fisher": "diag"}, "fisher must be one of"),
        ({"taylor_of": "plus"}, "taylor_of must be one of"),
        ({"max_batches": 0}, "max_batches must be a positive int"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        entropy_importance(nn.Linear(2, 2), [torch.randn(3, 2)], **kwargs)


def test_bad_inputs_are_refused():
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        entropy_importance(frozen, [torch.randn(3, 2)])
    with pytest.raises(ValueError, match="no input sample"):
        entropy_importance(nn.Linear(2, 2), [])
    with pytest.raises(ValueError, match="first .batch. dimension"):
        entropy_importance(nn.Bilinear(2, 2, 2), [(torch.randn(3, 2), torch.randn(4, 2))])
    with pytest.raises(ValueError, match="Tensor or a tuple"):
        entropy_importance(nn.Linear(2, 2), [{"x": torch.randn(3, 2)}])


def test_diverged_model_is_refused():
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        entropy_importance(model, [torch.randn(4, 2)])


def test_max_batches_limits_the_pass():
    model = _tiny_mlp()
    x = torch.randn(40, 4, dtype=torch.float64)
    limited = entropy_importance(model, x.split(10), max_batches=2)
    first_half = entropy_importance(model, [x[:20]])
    for name in limited:
        torch.testing.assert_close(limited[name], first_half[name])


def test_penalty_value_and_gradient():
    gen = torch.Generator().manual_seed(0)
    params = [
        torch.randn(3, 4, generator=gen, requires_grad=True),
        torch.randn(5, generator=gen, requires_grad=True),
    ]
    anchors = [p.detach().clone() for p in params]
    omegas = [torch.rand(3, 4, generator=gen), torch.rand(5, generator=gen)]
    assert spp_penalty(params, anchors, omegas).item() == 0.0
    shifted = [p.detach() + torch.randn(p.shape, generator=gen) for p in params]
    value = spp_penalty(params, shifted, omegas)
    expected = sum((o * (p - a) ** 2).sum() for p, a, o in zip(params, shifted, omegas, strict=True))
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    grads = torch.autograd.grad(value, params)
    for g, p, a, o in zip(grads, params, shifted, omegas, strict=True):
        torch.testing.assert_close(g, 2 * o * (p.detach() - a))
    p64 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    a64, o64 = torch.randn(2, 3, dtype=torch.float64), torch.rand(2, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda w: spp_penalty([w], [a64], [o64]), (p64,))


def test_penalty_refuses_mismatched_inputs():
    p = torch.zeros(2, 2, requires_grad=True)
    with pytest.raises(ValueError, match="same length"):
        spp_penalty([p], [], [])
    with pytest.raises(ValueError, match="shape mismatch"):
        spp_penalty([p], [torch.zeros(2, 3)], [torch.zeros(2, 2)])
    with pytest.raises(ValueError, match="at least one"):
        spp_penalty([], [], [])


@pytest.mark.subprocess
def test_importance_module_does_not_import_avalanche():
    import subprocess
    import sys

    code = "import sys, avalanche_spp.importance; print('avalanche' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == "False"


def _spy_on_the_shortcut(monkeypatch) -> list[bool]:
    """A list that gets, per batch, whether the ``nn.Linear`` shortcut held (else vmap ran)."""
    import avalanche_spp._gradients as gradients

    taken, real = [], gradients._linear_shortcut

    def spy(*args):
        recorded = real(*args)
        taken.append(recorded is not None)
        return recorded

    monkeypatch.setattr(gradients, "_linear_shortcut", spy)
    return taken


def test_linear_fast_path_equals_vmap_per_sample_gradients(monkeypatch):
    from avalanche.models import MTSimpleMLP

    torch.manual_seed(0)
    mlp = MTSimpleMLP(input_size=6, hidden_size=8)
    from types import SimpleNamespace

    for task in (0, 1):
        mlp.classifier.adaptation(SimpleNamespace(classes_in_this_experience=[0, 1, 2], task_labels=[task]))
    mlp = mlp.double()
    x = torch.randn(20, 6, dtype=torch.float64)
    items = [(x[:9], 0), (x[9:], 1)]
    taken = _spy_on_the_shortcut(monkeypatch)
    fast = entropy_importance(mlp, items)
    assert taken and all(taken)  # "auto" took the nn.Linear shortcut on every item
    slow = entropy_importance(mlp, items, per_sample_backend="vmap")
    assert set(fast) == set(slow)
    for name in fast:
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-9, atol=1e-15)


def test_auto_backend_takes_vmap_on_a_conv_model():
    # "auto" falls back to vmap on a conv model: it equals one backward per input.
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)).double()
    x = torch.randn(4, 1, 4, 4).double()
    grads = _per_sample_grads(conv, x)
    auto = entropy_importance(conv, [x])
    for name, p in conv.named_parameters():
        w, g = p.detach(), grads[name]
        expected = (-g.mean(0) * w + 0.5 * w * w * (g * g).mean(0)).clamp_min(0)
        torch.testing.assert_close(auto[name], expected, rtol=1e-9, atol=1e-15)


# --------------------------------------------------------------- where the clamp sits, and the sign
def _per_sample_grads(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every input's own entropy gradient, one backward pass per input (the slow, obvious way)."""
    grads: dict[str, list[torch.Tensor]] = {n: [] for n, _ in model.named_parameters()}
    for row in x:
        model.zero_grad()
        categorical_entropy(model(row[None])).sum().backward()
        for n, p in model.named_parameters():
            grads[n].append(p.grad.detach().clone())
    return {n: torch.stack(g) for n, g in grads.items()}


@pytest.mark.parametrize("taylor_of, sign", [("entropy", -1.0), ("neg_entropy", 1.0), ("second_order", 0.0)])
def test_each_clamp_granularity_equals_its_definition(taylor_of, sign):
    model = _tiny_mlp(seed=3)
    x = torch.randn(24, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    grads = _per_sample_grads(model, x)
    for name, p in model.named_parameters():
        w, g = p.detach(), grads[name]  # g: (24, *shape)

        def estimate(mean_g, curvature, w=w):
            return sign * mean_g * w + 0.5 * w * w * curvature

        expected = {
            "experience": estimate(g.mean(0), (g * g).mean(0)).clamp_min(0),
            "batch": torch.stack(
                [estimate(b.mean(0), (b * b).mean(0)).clamp_min(0) for b in g.split(8)]
            ).mean(0),
            "sample": estimate(g, g * g).clamp_min(0).mean(0),
            "none": estimate(g.mean(0), (g * g).mean(0)),
        }
        for clamp, value in expected.items():
            for backend in ("auto", "vmap"):
                omega = entropy_importance(
                    model, x.split(8), clamp=clamp, taylor_of=taylor_of, per_sample_backend=backend
                )
                torch.testing.assert_close(omega[name], value, msg=f"{clamp} {backend} {name}")
    # The authors' form: per mini-batch, with the batch Fisher (the squared mean gradient).
    for name, p in model.named_parameters():
        w, g = p.detach(), grads[name]
        expected = torch.stack(
            [(sign * b.mean(0) * w + 0.5 * w * w * b.mean(0) ** 2).clamp_min(0) for b in g.split(8)]
        ).mean(0)
        omega = entropy_importance(model, x.split(8), clamp="batch", fisher="batch", taylor_of=taylor_of)
        torch.testing.assert_close(omega[name], expected, msg=f"batch/batch {name}")
    # The three clamps differ on this model: the test would notice one standing in for another.
    # The second-order term alone is never negative: there is nothing to clamp, and they agree.
    omegas = {c: entropy_importance(model, x.split(8), clamp=c, taylor_of=taylor_of)["0.weight"]
              for c in ("experience", "batch", "sample")}  # fmt: skip
    if sign == 0.0:
        torch.testing.assert_close(omegas["experience"], omegas["batch"])
        torch.testing.assert_close(omegas["batch"], omegas["sample"])
        assert (omegas["batch"] > 0).all()
    else:
        assert not torch.allclose(omegas["experience"], omegas["batch"])
        assert not torch.allclose(omegas["batch"], omegas["sample"])


def test_finer_clamps_give_more_weights_an_importance():
    # E[max(0, X)] >= max(0, E[X]): a clamp on finer pieces never lowers Omega.
    model = _tiny_mlp(seed=5)
    x = torch.randn(40, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    by_clamp = {c: entropy_importance(model, x.split(10), clamp=c) for c in ("experience", "batch", "sample")}
    for name in by_clamp["experience"]:
        assert (by_clamp["batch"][name] >= by_clamp["experience"][name] - 1e-15).all()
        assert (by_clamp["sample"][name] >= by_clamp["batch"][name] - 1e-15).all()
    zeros = {c: sum(int((o == 0).sum()) for o in om.values()) for c, om in by_clamp.items()}
    assert zeros["sample"] < zeros["experience"]


def test_clamp_options_are_checked():
    model, x = _tiny_mlp(), torch.randn(4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="not a bool"):
        entropy_importance(model, [x], clamp=False)
    with pytest.raises(ValueError, match="clamp must be one of"):
        entropy_importance(model, [x], clamp="layer")
    with pytest.raises(ValueError, match='needs fisher="per_sample"'):
        entropy_importance(model, [x], clamp="sample", fisher="batch")


# ----------------------------------------------- review bugs: the linear shortcut where it is wrong
class _ReshapedRows(nn.Module):
    """A Linear applied to (B*T, F) rows: its rows are not one per sample."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):  # x: (B, 6) seen as (B, T=2, F=3)
        h = torch.tanh(self.fc(x.reshape(-1, 3))).reshape(x.shape[0], 2, 4).sum(1)
        return self.out(h)


class _WeightUsedOutside(nn.Module):
    """A Linear whose weight is also used through F.linear outside the module."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.out = nn.Linear(3, 2)

    def forward(self, x):
        h = torch.tanh(self.fc(x))
        return self.out(h + torch.tanh(nn.functional.linear(h, self.fc.weight)))


class _SharedWeight(nn.Module):
    """One weight shared by two Linear modules (tied layers)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)
        self.b.weight = self.a.weight
        self.out = nn.Linear(3, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.b(torch.tanh(self.a(x)))))


@pytest.mark.parametrize(
    "model_class, width", [(_ReshapedRows, 6), (_WeightUsedOutside, 3), (_SharedWeight, 3)]
)
@pytest.mark.parametrize("clamp", ["experience", "sample"])
def test_auto_backend_falls_back_to_vmap_where_the_linear_shortcut_is_wrong(model_class, width, clamp):
    torch.manual_seed(0)
    model = model_class().double()
    x = torch.randn(16, width, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    auto = entropy_importance(model, x.split(8), clamp=clamp)
    vmapped = entropy_importance(model, x.split(8), clamp=clamp, per_sample_backend="vmap")
    for name in vmapped:
        torch.testing.assert_close(auto[name], vmapped[name], msg=name)
    assert sum(float(o.sum()) for o in vmapped.values()) > 0


def test_spp_penalty_value_matches_its_gradient_for_any_sign_of_omega():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    anchor, omega = torch.zeros(2), torch.tensor([1.0, -1.0])
    value = spp_penalty([w], [anchor], [omega])
    assert value.item() == pytest.approx(1.0 * 1.0 - 1.0 * 4.0)  # -3, not the L1 norm 5
    value.backward()
    torch.testing.assert_close(w.grad, 2 * omega * w.detach())


def test_the_function_defaults_are_the_plugin_defaults():
    import inspect

    from avalanche_spp import importance

    signature = inspect.signature(_entropy_importance).parameters
    assert signature["taylor_of"].default == importance.DEFAULT_TAYLOR_OF
    assert signature["clamp"].default == importance.DEFAULT_CLAMP
    assert signature["fisher"].default == importance.DEFAULT_FISHER


def test_each_module_gets_its_own_mode_back_even_when_the_pass_fails():
    model = nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.5), nn.BatchNorm1d(5), nn.Linear(5, 3)).double()
    model.train()
    model[2].eval()  # a frozen BatchNorm, as SGD-F leaves it
    modes = [m.training for m in model.modules()]
    entropy_importance(model, [torch.randn(8, 4, dtype=torch.float64)])
    assert [m.training for m in model.modules()] == modes
    with pytest.raises(ValueError, match="one entropy per sample"):
        entropy_importance(model, [torch.randn(8, 4, dtype=torch.float64)], entropy_fn=lambda out: out.sum())
    assert [m.training for m in model.modules()] == modes


@pytest.mark.parametrize("model_class, width", [(_WeightUsedOutside, 3), (_SharedWeight, 3)])
def test_auto_backend_notices_a_wrong_shortcut_even_when_gradients_are_tiny(model_class, width):
    # Logits of order 1e-7: the check against autograd must be relative to the gradients' size.
    torch.manual_seed(0)
    model = model_class().double()
    with torch.no_grad():
        model.out.weight.mul_(1e-6)
        model.out.bias.zero_()
    x = torch.randn(16, width, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    auto = entropy_importance(model, x.split(8), clamp="sample")
    vmapped = entropy_importance(model, x.split(8), clamp="sample", per_sample_backend="vmap")
    assert max(float(o.abs().max()) for o in vmapped.values()) < 1e-8  # tiny indeed
    for name in vmapped:
        torch.testing.assert_close(auto[name], vmapped[name], rtol=1e-6, atol=0.0, msg=name)


# ------------------------------------------------------------ mutants that survived (docs/testing.md)
class _UnusedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(3, 4)
        self.used = nn.Linear(4, 2)
        self.unused = nn.Linear(4, 2)

    def forward(self, x):
        return self.used(torch.tanh(self.trunk(x)))


def _float64_and_bfloat16_heads():
    """The same ``_UnusedHead`` in float64 and bfloat16, and 768 float64 inputs (seeded)."""
    torch.manual_seed(0)
    exact = _UnusedHead().double()
    half = _UnusedHead().to(torch.bfloat16)
    half.load_state_dict(exact.state_dict())
    return exact, half, torch.randn(768, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "options",
    [
        {"fisher": "batch", "clamp": "batch"},
        {"fisher": "per_sample", "clamp": "experience"},
        {"fisher": "per_sample", "clamp": "sample"},
    ],
)
def test_half_precision_models_accumulate_in_float32(options):
    # 768 batches of one sample: a bfloat16 running sum (8-bit mantissa) stops growing after a few
    # hundred similar terms, so accumulating in the model's dtype would be far off the float64 values.
    exact, half, x = _float64_and_bfloat16_heads()
    reference = entropy_importance(exact, x.split(1), **options)
    omega = entropy_importance(half, x.to(torch.bfloat16).split(1), **options)
    assert {o.dtype for o in omega.values()} == {torch.bfloat16}  # returned in the model's dtype
    assert omega["unused.weight"].abs().sum() == 0
    for name in ("trunk.weight", "used.weight"):
        error = float((omega[name].double() - reference[name]).abs().sum() / reference[name].abs().sum())
        assert error < 0.05, (name, error)


@pytest.mark.parametrize("backend", ["auto", "vmap"])
def test_chunked_per_sample_gradients_equal_the_whole_batch(backend, monkeypatch):
    import avalanche_spp._gradients as importance

    model = _tiny_mlp(seed=2)
    x = torch.randn(10, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    whole = entropy_importance(model, x.split(5), clamp="sample", per_sample_backend=backend)
    monkeypatch.setattr(importance, "_PER_SAMPLE_BUDGET", 7)  # one or two rows per chunk
    chunked = entropy_importance(model, x.split(5), clamp="sample", per_sample_backend=backend)
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-12, atol=0.0, msg=name)


def test_linear_shortcut_skips_a_frozen_bias():
    torch.manual_seed(0)
    model = _tiny_mlp()
    model[2].bias.requires_grad_(False)
    for backend in ("auto", "vmap"):
        omega = entropy_importance(model, [torch.randn(6, 4, dtype=torch.float64)], clamp="sample",
                                   per_sample_backend=backend)  # fmt: skip
        assert "2.bias" not in omega and "2.weight" in omega


def test_an_item_the_model_cannot_take_is_described_in_the_error():
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"holds 2 entries \(Tensor\(4, 3\), int\)"):
        entropy_importance(model, [(torch.randn(4, 3), 1)])


def test_scaled_importance_by_hand():
    from avalanche_spp.penalty import scaled_importance

    omega = torch.tensor([0.0, 1.0, 3.0])
    torch.testing.assert_close(scaled_importance(omega, "raw", 2.0), omega)
    torch.testing.assert_close(scaled_importance(omega, "mean", 2.0), torch.tensor([0.0, 0.5, 1.5]))
    torch.testing.assert_close(scaled_importance(omega, "saturate", 1.0), torch.tensor([0.0, 0.5, 0.75]))
    for scale in ("mean", "saturate"):
        torch.testing.assert_close(scaled_importance(torch.zeros(3), scale, 0.0), torch.zeros(3))
    with pytest.raises(ValueError, match="scale must be one of"):
        scaled_importance(omega, "log", 1.0)


def test_categorical_entropy_of_sequences_sums_the_positions():
    logits = torch.randn(2, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))  # B, T, C
    q = torch.softmax(logits, dim=-1)
    by_hand = -(q * q.log()).sum(dim=-1).sum(dim=1)  # (B,)
    torch.testing.assert_close(categorical_entropy(logits), by_hand)
    four_d = logits.reshape(2, 3, 1, 5)
    torch.testing.assert_close(categorical_entropy(four_d), by_hand)
    flat = categorical_entropy(logits[:, 0])
    assert flat.shape == (2,)


def test_batches_must_be_an_iterable_of_items_not_a_mapping():
    model = _tiny_mlp()
    for batches in ({"x": torch.zeros(2, 4)}, 3, "abc"):
        with pytest.raises(ValueError, match="batches must be an iterable of input batches"):
            entropy_importance(model, batches)


@pytest.mark.parametrize("clamp", ["batch", "experience", "sample"])
def test_all_reduce_sums_every_statistic_and_the_sample_count(clamp):
    # Two identical shards: every sum (and the count) doubles, so the mean estimate is unchanged.
    model = _tiny_mlp(seed=4)
    x = torch.randn(12, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    alone = entropy_importance(model, x.split(4), clamp=clamp, fisher="per_sample")
    reduced: list[torch.Size] = []

    def twice(tensor):
        reduced.append(tensor.shape)
        tensor.mul_(2)

    shards = entropy_importance(model, x.split(4), clamp=clamp, fisher="per_sample", all_reduce=twice)
    assert torch.Size([1]) in reduced  # the sample count is summed too
    for name in alone:
        torch.testing.assert_close(shards[name], alone[name], rtol=1e-12, atol=0.0)

    def thrice_count_only(tensor):
        if tensor.shape == torch.Size([1]):
            tensor.mul_(3)

    diluted = entropy_importance(
        model, x.split(4), clamp=clamp, fisher="per_sample", all_reduce=thrice_count_only
    )
    name = "0.weight"
    assert not torch.allclose(diluted[name], alone[name])  # the count does divide the sums


def test_mean_importance_of_nothing_is_zero_and_penalty_terms_must_be_sequences():
    from avalanche_spp.penalty import mean_importance

    assert mean_importance([]) == 0.0 and mean_importance([torch.zeros(0)]) == 0.0
    assert mean_importance([torch.ones(2), torch.zeros(2)]) == 0.5
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="params must be a list or tuple of tensors"):
        spp_penalty((p for p in [w]), [torch.ones(2)], [torch.ones(2)])  # a generator is not a sequence


# --------------------------------------------- devices, dtypes, empty batches and the gradient paths
def test_inputs_and_the_sample_count_go_to_the_parameters_device(monkeypatch):
    import avalanche_spp.importance as importance
    from avalanche_spp._gradients import _to_device

    moved = _to_device((torch.zeros(2), 3), torch.device("meta"))
    assert moved[0].device.type == "meta" and moved[1] == 3
    devices = []
    real = importance._to_device
    spy = lambda inputs, device: devices.append(device) or real(inputs, device)  # noqa: E731
    monkeypatch.setattr(importance, "_to_device", spy)
    model = _tiny_mlp()
    counts = []

    def all_reduce(tensor):
        counts.append(tensor.device)

    torch.set_default_device("meta")  # a tensor made without an explicit device would land here
    try:
        x = torch.randn(3, 4, dtype=torch.float64, device="cpu")
        _entropy_importance(model, [x], all_reduce=all_reduce)
    finally:
        torch.set_default_device("cpu")
    assert devices == [torch.device("cpu")] and {d.type for d in counts} == {"cpu"}


def test_an_empty_batch_is_skipped_not_the_end_and_max_batches_1_reads_one():
    model = _tiny_mlp(seed=4)
    x = torch.randn(12, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    empty = torch.zeros(0, 4, dtype=torch.float64)
    skipped = _entropy_importance(model, [x[:6], empty, x[6:]])
    expected = _entropy_importance(model, [x[:6], x[6:]])
    first = _entropy_importance(model, [x[:6], x[6:]], max_batches=1)
    for name in expected:
        torch.testing.assert_close(skipped[name], expected[name])
        torch.testing.assert_close(first[name], _entropy_importance(model, [x[:6]])[name])


def test_vmap_means_vmap_and_the_backend_does_not_concern_the_batch_fisher(monkeypatch):
    taken = _spy_on_the_shortcut(monkeypatch)
    model = _tiny_mlp()
    x = torch.randn(6, 4, dtype=torch.float64)
    _entropy_importance(model, [x], fisher="per_sample", clamp="experience", per_sample_backend="vmap")
    assert taken == [False]
    _entropy_importance(model, [x], fisher="per_sample", clamp="experience")
    assert taken == [False, True]  # "auto" on an MLP does use the shortcut
    _entropy_importance(model, [x], fisher="per_sample", clamp="sample")
    assert taken == [False, True]  # each g_n itself: vmap, the shortcut is not even tried


@pytest.mark.parametrize("clamp", ["experience", "sample"])
def test_per_sample_sums_over_many_chunks_equal_one_chunk(clamp, monkeypatch):
    import avalanche_spp._gradients as gradients

    model = _tiny_mlp(seed=8)
    x = torch.randn(9, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    options = {"fisher": "per_sample", "clamp": clamp, "per_sample_backend": "vmap"}
    whole = _entropy_importance(model, [x], **options)
    monkeypatch.setattr(gradients, "_PER_SAMPLE_BUDGET", 50)  # two samples of 43 scalars per chunk at most
    chunked = _entropy_importance(model, [x], **options)
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-12, atol=0.0, msg=name)


def test_linear_sums_skip_a_frozen_bias_and_follow_an_output_the_entropy_never_reads():
    class SideBranch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.side, self.head = nn.Linear(4, 5), nn.Linear(4, 2), nn.Linear(5, 3)

        def forward(self, x):
            self.side(x)  # called, its output unused: its output gradient is None
            return self.head(torch.tanh(self.body(x)))

    torch.manual_seed(0)
    model = SideBranch().double()
    model.head.bias.requires_grad_(False)
    x = torch.randn(7, 4, dtype=torch.float64)
    for clamp in ("experience", "sample"):
        options = {"fisher": "per_sample", "clamp": clamp}
        linear = _entropy_importance(model, [x], **options)  # "auto": the shortcut
        vmap = _entropy_importance(model, [x], per_sample_backend="vmap", **options)
        assert "head.bias" not in linear and set(linear) == set(vmap)
        assert linear["side.weight"].abs().sum() == 0
        for name in vmap:
            torch.testing.assert_close(linear[name], vmap[name], msg=name)


def test_the_shortcut_checks_a_bias_used_outside_its_layer_even_when_its_weight_is_frozen():
    class SharedBias(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = nn.Linear(4, 3), nn.Linear(3, 3)

        def forward(self, x):
            return self.head(torch.tanh(self.body(x))) + self.body.bias  # body.bias also used here

    torch.manual_seed(0)
    model = SharedBias().double()
    model.body.weight.requires_grad_(False)
    x = torch.randn(6, 4, dtype=torch.float64)
    auto = _entropy_importance(model, [x], fisher="per_sample", clamp="sample")
    vmap = _entropy_importance(model, [x], fisher="per_sample", clamp="sample", per_sample_backend="vmap")
    for name in vmap:
        torch.testing.assert_close(auto[name], vmap[name], msg=name)


def test_a_model_whose_output_reads_no_layer_has_zero_importance_on_the_shortcut(monkeypatch):
    class Ignores(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 3)

        def forward(self, x):
            return x[:, :3] * 2.0  # the layer is never called

    x = torch.randn(5, 4, dtype=torch.float64)
    taken = _spy_on_the_shortcut(monkeypatch)
    omega = _entropy_importance(Ignores().double(), [x], fisher="per_sample", clamp="experience")
    assert taken == [True]
    assert all(o.abs().sum() == 0 for o in omega.values())


@pytest.mark.parametrize("budget", [None, 36])
def test_half_precision_sums_within_a_large_batch_in_float32(budget, monkeypatch):
    import avalanche_spp._gradients as gradients
    from avalanche_spp._gradients import _acc_dtype

    assert _acc_dtype(torch.zeros(1)) == torch.float32
    assert _acc_dtype(torch.zeros(1).double()) == torch.float64
    if budget is not None:  # 36 scalars: one sample per chunk, 768 chunks summed into the batch sums
        monkeypatch.setattr(gradients, "_PER_SAMPLE_BUDGET", budget)
    exact, half, x = _float64_and_bfloat16_heads()
    options = {"fisher": "per_sample", "clamp": "experience"}
    reference = _entropy_importance(exact, [x], **options)
    omega = _entropy_importance(half, [x.to(torch.bfloat16)], **options)  # one batch of 768
    for name in ("trunk.weight", "used.weight"):
        error = float((omega[name].double() - reference[name]).abs().sum() / reference[name].abs().sum())
        assert error < 0.05, (name, error)


def test_half_precision_gradients_come_back_in_float32_from_every_path():
    from avalanche_spp._gradients import _call_model, _per_sample_sums, _vmap_grad_chunks
    from avalanche_spp.importance import _ImportanceOptions, _ImportanceSums, trainable_parameters

    torch.manual_seed(0)
    model = _UnusedHead().to(torch.bfloat16)
    params = trainable_parameters(model)
    inputs = (torch.randn(4, 3).to(torch.bfloat16),)
    args = (model, params, _call_model, categorical_entropy, inputs)
    form = ("neg_entropy", "experience", "per_sample", None, "vmap", None)
    opts = _ImportanceOptions.checked(model, [inputs], *form)
    batch_sums = _ImportanceSums(
        params, _ImportanceOptions.checked(model, [inputs], *form[:2], "batch", *form[3:])
    )
    batch_sums.add_batch(model, _call_model, categorical_entropy, inputs)  # the batch Fisher's sums
    sums = [*_per_sample_sums(*args, opts), batch_sums.grad_sum, batch_sums.curv_sum]
    dtypes = {t.dtype for part in sums for t in part.values()}
    dtypes |= {chunk.dtype for _, chunk in _vmap_grad_chunks(*args, opts.n_scalars)}
    assert dtypes == {torch.float32}


def test_penalty_term_errors_name_the_argument_and_the_wrong_entries():
    w, a, o = torch.zeros(2, requires_grad=True), torch.ones(2), torch.ones(2)
    with pytest.raises(ValueError, match=r"^anchors must be a list or tuple of tensors .*got dict"):
        spp_penalty([w], {"w": a}, [o])
    with pytest.raises(ValueError, match=r"^omegas must be a list or tuple of tensors .*got Tensor"):
        spp_penalty([w], [a], o)
    with pytest.raises(ValueError, match=r"^omegas must hold tensors only, got entries of type \['float'\]$"):
        spp_penalty([w], [a], [o, 1.0])
    mixed = r"^anchors must hold tensors only, got entries of type \['int', 'str'\]$"
    with pytest.raises(ValueError, match=mixed):
        spp_penalty([w], ["a", a, 3], [o])


class _NormedNet(nn.Module):
    """BatchNorm and dropout (frozen and off in the importance pass) between two Linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@pytest.mark.parametrize("taylor_of", ["second_order", "neg_entropy"])
@pytest.mark.parametrize("clamp", ["batch", "experience"])
def test_chunked_items_give_the_same_importance_through_smaller_forwards(taylor_of, clamp):
    torch.manual_seed(0)
    model = _NormedNet().double()
    model(3 * torch.randn(64, 5, dtype=torch.float64) + 1)  # BatchNorm statistics that matter
    x = torch.randn(40, 5, dtype=torch.float64)
    items = [x[:25], x[25:]]
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    form = {"taylor_of": taylor_of, "clamp": clamp, "fisher": "batch"}
    whole = entropy_importance(model, items, **form)
    assert sizes == [25, 15]
    sizes.clear()
    chunked = entropy_importance(model, items, chunk_size=7, **form)
    assert sizes == [7, 7, 7, 4, 7, 7, 1]  # no forward larger than a chunk
    assert model.training  # the pass restored the mode
    for name, omega in whole.items():
        torch.testing.assert_close(chunked[name], omega, rtol=1e-9, atol=0, msg=name)
    # The chunks are not batches: measured as items of their own, the batch Fisher differs.
    as_items = entropy_importance(model, list(x[:25].split(7)) + list(x[25:].split(7)), **form)
    assert any(not torch.allclose(as_items[n], whole[n], rtol=1e-3) for n in whole)


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True, "64"])
def test_chunk_size_must_be_a_positive_int_or_none(chunk_size):
    with pytest.raises(ValueError, match=r'chunk_size must be None or an int > 0 \(fisher="batch"\)'):
        entropy_importance(nn.Linear(3, 2), [torch.randn(4, 3)], fisher="batch", chunk_size=chunk_size)


def test_chunk_size_is_refused_with_the_per_sample_fisher_which_it_would_not_reach():
    with pytest.raises(ValueError, match=r'an int > 0 \(fisher="batch"\), got 2'):
        entropy_importance(nn.Linear(3, 2), [torch.randn(4, 3)], fisher="per_sample", chunk_size=2)
    entropy_importance(nn.Linear(3, 2), [torch.randn(4, 3)], fisher="per_sample", chunk_size=None)


@pytest.mark.parametrize("clamp", ["batch", "experience"])
def test_half_precision_chunks_are_summed_in_float32(clamp):
    exact, half, x = _float64_and_bfloat16_heads()
    options = {"fisher": "batch", "clamp": clamp, "taylor_of": "second_order"}
    reference = _entropy_importance(exact, [x], **options)  # one batch of 768, whole
    omega = _entropy_importance(half, [x.to(torch.bfloat16)], chunk_size=1, **options)  # 768 chunks
    for name in ("trunk.weight", "used.weight"):
        error = float((omega[name].double() - reference[name]).abs().sum() / reference[name].abs().sum())
        assert error < 0.05, (name, error)
