"""SPP variants the harness compares, kept out of the library: the authors' sharpening, a cap, screens.

:class:`SPPVariantPlugin` is :class:`avalanche_spp.SPPPlugin` with the harness's experiments on top,
each off by default (``--spp-normalize`` and ``--spp-curvature-cap`` of ``benchmarks.run``, results
in docs/results/spp_variants; the others through the forms of ``benchmarks.spp_defaults``, results
in docs/results/spp_defaults):

- ``normalize``: each experience's importance rescaled per tensor before it is accumulated:
  ``"max"`` divides by the tensor's maximum, ``"softmax"`` is the authors' sharpening
  ``exp(beta * Omega / m) / sum exp(beta * Omega / m)``, ``m`` the tensor's mean ``Omega``, so
  ``beta`` sets the sharpness whatever the units of ``Omega``. ``"experience_mean"`` divides every
  tensor by the experience's mean ``Omega`` over all its scalars, so each experience adds the same
  total importance to the sum whatever its own scale (session 21).
- ``curvature_cap``: not in the paper. Plain SGD (learning rate ``eta``, momentum ``mu``) diverges
  on the penalty once ``eta * 2 lam Omega_k > 2 (1 + mu)`` for a weight the new task moves; with a
  cap ``c`` in (0, 1] each weight's penalty curvature is clipped, ``lam * Omega_k <= c (1 + mu) /
  eta``, so a larger ``lam`` strengthens the many small importances without destabilising the few
  large ones. Needs an SGD optimiser (``eta`` and ``mu`` are read from its first parameter group at
  the start of each experience).
- ``importance="output_norm"``: not SPP's importance but MAS's (Aljundi et al. 2018, as Avalanche's
  ``MASPlugin`` measures it: the mean over mini-batches of ``|d mean_n ||f(x_n)||^2 / dW|``), put
  through SPP's scale and penalty: it separates what the ranking of the weights does from what the
  scale does (docs/method.md, section 4).
- ``temperature``: SPP's importance of the entropy of ``softmax(z / T)`` instead of ``softmax(z)``.
  The entropy's gradient vanishes on inputs the model is sure of, so at ``T = 1`` the importance
  comes almost only from the uncertain ones; a temperature above 1 softens every output so the sure
  inputs count too (for large ``T`` the entropy is ``log C - Var_c(z) / (2 T**2)``, a spread of the
  logits, as MAS's output norm). Not in the paper.
- ``sharpness``: the ``"saturate"`` mask ``r / (1 + r)`` (``r = Omega / m``) as a Hill function
  ``r**n / (1 + r**n)``: with ``n > 1`` the weights below the mean importance are freer and those
  above it stiffer, so raising ``lam`` stiffens fewer new weights. Not in the paper.
- ``mask_mean="tensor"``: the ``"saturate"`` mask with ``m`` the mean accumulated ``Omega`` of each
  parameter tensor instead of all of them, so every layer has the same share of stiff weights
  whatever the spread of importance between layers. ``mask_mean="experience"``: ``m`` the mean
  accumulated ``Omega`` divided by the number of experiences folded in (the mean importance of one
  experience), so a weight that mattered to one old task keeps its mask as later tasks add theirs
  (with ``"all"`` its ``M`` falls about as ``1 / t``). ``mask_mean="median"``: ``m`` the median
  accumulated ``Omega`` over every penalised scalar, so half the weights have ``M >= 1/2`` whatever
  the tail of the importance (the second-order importance's mean is ten times its median on the
  MLP; a CNN's tail may differ). ``mask_mean="reached"``: ``m`` the mean accumulated ``Omega`` of the
  parameters the current task's loss reaches (those with a ``.grad`` at its first step, so the
  gradient path only, and optimisers that zero gradients to ``None``, PyTorch's default), so the
  heads of old tasks, which hold most of a multi-head model's importance and which the new task
  never moves, do not set the stiffness of the shared weights. Not in the paper.
- ``stiffness="curvature"``: the penalty ``lam * c * M * (W - W*)**2``, ``c`` the mean over the
  penalised scalars of the model's expected Fisher (labels drawn from its own softmax, one input at
  a time, ``curvature_samples`` inputs of each experience), averaged over the experiences so far: a
  label-free estimate of the loss's mean curvature, so ``lam = 1`` makes a fully important weight
  about as stiff as the loss is along a typical weight, whatever the model. Not in the paper.
  ``measure_curvature=True`` measures and keeps ``c`` without applying it (a diagnostic).
- ``anchor_mode="weighted"``: ``W*`` of each weight the importance-weighted mean of its values after
  each task, ``sum_k Omega_k W*_k / sum_k Omega_k``, instead of its value after the last task. With
  summed importances the penalty ``sum_k Omega_k (W - W*_k)**2`` of one anchor per task (EWC's
  separate penalties) equals ``(sum_k Omega_k) (W - W*)**2`` with this ``W*``, up to a constant, so
  a weight that mattered to an old task is pulled back to where that task left it, not to where
  the later, freer tasks moved it. Two tensors per parameter, as with the last anchor. Not in the
  paper (its eq. 5 anchors at the last task's weights).
- ``decay=a``: the accumulated importance multiplied by ``a`` before each new experience's is
  added, ``S_t = a S_(t-1) + Omega_t``, so a task ``k`` experiences back counts ``a**k`` times its
  own; ``a = 0.5`` weighs the tasks as Avalanche's ``MASPlugin(alpha=0.5)`` does (its
  ``alpha * old + (1 - alpha) * new`` is ``(1 - alpha) S_t``, the same mask). ``1``: the library's sum.
  Not in the paper (its importances add up).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from avalanche_spp._model_parts import _grow_to
from avalanche_spp.importance import (
    categorical_entropy,
    check_choice,
    trainable_parameters,
)
from avalanche_spp.penalty import mean_importance, scaled_importance
from avalanche_spp.plugin import SPPPlugin, sgd_strength_limit
from benchmarks.analysis_measures import eval_mode

NORMALIZATIONS = (None, "max", "softmax", "experience_mean")
MASK_MEANS = ("all", "tensor", "experience", "median", "reached")
ANCHORS = ("last", "weighted")
STIFFNESSES = ("unit", "curvature")
IMPORTANCES = ("entropy", "output_norm")


class SPPVariantPlugin(SPPPlugin):
    """:class:`~avalanche_spp.SPPPlugin` with the harness's variants (see the module docstring)."""

    def __init__(
        self,
        lam: float = 1.0,
        *,
        normalize: str | None = None,
        beta: float = 1.0,
        curvature_cap: float | None = None,
        importance: str = "entropy",
        temperature: float = 1.0,
        sharpness: float = 1.0,
        mask_mean: str = "all",
        stiffness: str = "unit",
        curvature_samples: int = 256,
        measure_curvature: bool = False,
        anchor_mode: str = "last",
        decay: float = 1.0,
        **options: Any,
    ) -> None:
        """``SPPPlugin(lam, **options)``, plus ``normalize``, ``beta``, ``curvature_cap``, ``importance``,
        ``temperature``, ``sharpness``, ``mask_mean``, ``stiffness``, ``curvature_samples``,
        ``measure_curvature``, ``anchor_mode``, ``decay``."""
        super().__init__(lam, **options)
        check_choice("anchor_mode", anchor_mode, ANCHORS)
        if anchor_mode == "weighted" and self.accumulate != "sum":
            raise ValueError(f'anchor_mode="weighted" needs accumulate="sum", not {self.accumulate!r}')
        self.anchor_mode = anchor_mode
        bad = isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1
        if bad or (decay != 1.0 and self.accumulate != "sum"):
            raise ValueError(f'decay must be a number in (0, 1] (with accumulate="sum"), got {decay!r}')
        self.decay = float(decay)
        check_choice("mask_mean", mask_mean, MASK_MEANS)
        if mask_mean != "all" and self.scale != "saturate":
            raise ValueError(f'mask_mean applies to scale="saturate" only, not {self.scale!r}')
        if mask_mean == "reached" and self.penalty_via != "gradient":
            raise ValueError(
                'mask_mean="reached" reads the .grad of the first step: it needs penalty_via="gradient"'
            )
        self.mask_mean = mask_mean
        self.experiences_seen = 0
        check_choice("stiffness", stiffness, STIFFNESSES)
        bad = isinstance(curvature_samples, bool) or not isinstance(curvature_samples, int)
        if bad or curvature_samples < 1:
            raise ValueError(f"curvature_samples must be a positive int, got {curvature_samples!r}")
        self.stiffness, self.curvature_samples = stiffness, curvature_samples
        if not isinstance(measure_curvature, bool):
            raise ValueError(f"measure_curvature must be True or False, got {measure_curvature!r}")
        self.measure_curvature = measure_curvature
        self.curvatures: list[float] = []
        _check_positive_finite("sharpness", sharpness)
        if sharpness != 1.0 and self.scale != "saturate":
            raise ValueError(f'sharpness applies to scale="saturate" only, not {self.scale!r}')
        self.sharpness = float(sharpness)
        _check_positive_finite("temperature", temperature)
        if temperature != 1.0 and importance != "entropy":
            raise ValueError(f'temperature applies to importance="entropy" only, not {importance!r}')
        self.temperature = float(temperature)
        check_choice("normalize", normalize, NORMALIZATIONS)
        check_choice("importance", importance, IMPORTANCES)
        self.importance = importance
        if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not 0 < beta < math.inf:
            raise ValueError(f"beta must be a positive number (and finite), got {beta!r}")
        if curvature_cap is not None and (
            isinstance(curvature_cap, bool)
            or not isinstance(curvature_cap, (int, float))
            or not 0 < curvature_cap <= 1
        ):
            raise ValueError(f"curvature_cap must be None or a number in (0, 1], got {curvature_cap!r}")
        self.normalize = normalize
        self.beta = float(beta)
        self.curvature_cap = None if curvature_cap is None else float(curvature_cap)
        self._omega_limit: float | None = None

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """As the library's, and read the SGD step that bounds the cap."""
        super().before_training_exp(strategy, **kwargs)
        self._omega_limit = self._cap_for(strategy.optimizer) if self.curvature_cap is not None else None

    def _cap_for(self, optimizer: Any) -> float:
        """``c (1 + mu) / (eta lam)`` (:func:`~avalanche_spp.plugin.sgd_strength_limit` over ``lam``, times
        ``c``): the largest Omega whose penalty SGD can still follow."""
        if not isinstance(optimizer, torch.optim.SGD):
            raise ValueError(
                f"curvature_cap needs a torch.optim.SGD optimiser (its lr and momentum set the "
                f"bound), got {type(optimizer).__name__}; use curvature_cap=None"
            )
        if self.lam == 0.0:
            return math.inf
        return self.curvature_cap * sgd_strength_limit(optimizer.param_groups[0]) / self.lam

    def _training_terms(self, model: nn.Module) -> tuple[list[nn.Parameter], list[Tensor], list[Tensor]]:
        params, anchors, omegas = super()._training_terms(model)
        if self.mask_mean != "all":  # the mask again, from Omega, with another mean
            names = {id(p): n for n, p in model.named_parameters()}
            totals = [self.omega[names[id(p)]] for p in params]
            if self.mask_mean == "tensor":
                omegas = [per_tensor_mask(o) for o in totals]
            else:
                m = self._mask_m(totals, params)
                omegas = [scaled_importance(o, "saturate", m) for o in totals]
        if self.sharpness != 1.0:
            omegas = [sharpen(o, self.sharpness) for o in omegas]
        if self._omega_limit is not None:
            omegas = [torch.clamp(o, max=self._omega_limit) for o in omegas]
        if self.stiffness == "curvature" and self.curvatures:
            c = sum(self.curvatures) / len(self.curvatures)
            omegas = [o * c for o in omegas]
        return params, anchors, omegas

    def _mask_m(self, totals: list[Tensor], params: list[nn.Parameter]) -> float:
        """The saturating mask's ``m`` for ``mask_mean`` ``"median"``, ``"reached"`` or ``"experience"``."""
        if self.mask_mean == "median":
            every = torch.cat([o.flatten().double().cpu() for o in totals])
            return float(every.median()) if every.numel() else 0.0
        if self.mask_mean == "reached":  # built at the first step's after_backward: .grad set
            return mean_importance(o for o, p in zip(totals, params, strict=True) if p.grad is not None)
        return self.importance_mean() / max(1, self.experiences_seen)

    def _importance(self, model: nn.Module, batches: Iterable[Any], **options: Any) -> dict[str, Tensor]:
        """SPP's importance (of the tempered entropy if ``temperature != 1``), or MAS's; ``options``
        (the plugin's ``chunk_size``) go to ``entropy_importance``."""
        if self.stiffness == "curvature" or self.measure_curvature:
            kept: list[Any] = []
            batches = _tap(batches, kept, self.curvature_samples)
            omega = self._variant_importance(model, batches, **options)
            self.curvatures.append(expected_fisher_mean(model, kept, self.curvature_samples))
            return omega
        return self._variant_importance(model, batches, **options)

    def _variant_importance(
        self, model: nn.Module, batches: Iterable[Any], **options: Any
    ) -> dict[str, Tensor]:
        if self.importance == "output_norm":
            return output_norm_importance(model, batches)
        if self.temperature == 1.0:
            return super()._importance(model, batches, **options)
        return super()._importance(
            model, batches, entropy_fn=partial(tempered_entropy, temperature=self.temperature), **options
        )

    def update(self, model: nn.Module, omega: dict[str, Tensor]) -> None:
        """Normalise this experience's importance, then fold it in as the library does."""
        if self.normalize == "experience_mean":
            mean = mean_importance(omega.values())
            omega = {n: v / mean for n, v in omega.items()} if mean > 0 else omega
        else:
            omega = {n: normalize_importance(v, self.normalize, self.beta) for n, v in omega.items()}
        if self.decay != 1.0:
            self.omega = {n: self.decay * v for n, v in self.omega.items()}
        old_omega, old_anchor = dict(self.omega), dict(self.anchor)
        super().update(model, omega)
        self.experiences_seen += 1
        if self.anchor_mode == "weighted":
            with torch.no_grad():
                for name, total in self.omega.items():
                    if name in old_omega:  # the new W* = (Omega_old W*_old + Omega_new W) / Omega_total
                        self.anchor[name] = weighted_anchor(
                            old_omega[name], old_anchor[name], total, self.anchor[name]
                        )

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["settings"].update(
            normalize=self.normalize,
            beta=self.beta,
            curvature_cap=self.curvature_cap,
            importance=self.importance,
            temperature=self.temperature,
            sharpness=self.sharpness,
            mask_mean=self.mask_mean,
            stiffness=self.stiffness,
            curvature_samples=self.curvature_samples,
            measure_curvature=self.measure_curvature,
            anchor_mode=self.anchor_mode,
            decay=self.decay,
        )
        state["curvatures"] = list(self.curvatures)
        state["experiences_seen"] = self.experiences_seen
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.beta = float(self.beta)
        self.curvatures = [float(c) for c in state.get("curvatures", [])]
        self.experiences_seen = int(state.get("experiences_seen", 0))


def weighted_anchor(old_omega: Tensor, old_anchor: Tensor, total: Tensor, current: Tensor) -> Tensor:
    """``(Omega_old W*_old + (total - Omega_old) W) / total``, ``W`` where ``total`` is 0; an old
    ``Omega`` / ``W*`` with fewer rows than ``total`` (a grown head) is zero-padded."""
    old_omega = _grow_to(old_omega, total.shape, "omega", what="importance").to(total.device)
    old_anchor = _grow_to(old_anchor, total.shape, "anchor", what="anchor").to(total.device)
    mixed = (old_omega * old_anchor + (total - old_omega) * current) / total.clamp_min(
        torch.finfo(total.dtype).tiny
    )
    return torch.where(total > 0, mixed, current)


def _check_positive_finite(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _tap(batches: Iterable[Any], kept: list[Any], samples: int) -> Iterable[Any]:
    """Yield ``batches`` unchanged, keeping the first items until they hold ``samples`` inputs."""
    held = 0
    for item in batches:
        if held < samples:
            kept.append(item)
            held += len(item[0] if isinstance(item, tuple) else item)
        yield item


def expected_fisher_mean(model: nn.Module, items: list[Any], samples: int) -> float:
    """Mean over the trainable scalars of the expected Fisher ``E_x E_{y ~ p(.|x)} (d log p(y|x) / dW)**2``.

    One input at a time (a per-sample Fisher), the first ``samples`` inputs of ``items`` (each an
    input ``x`` or ``(x, *args)`` for ``model(x, *args)``); the labels are drawn from the model's
    own softmax with a fixed seed, so no true label is read.
    """
    params = list(trainable_parameters(model).values())
    generator = torch.Generator().manual_seed(0)
    total, seen = 0.0, 0
    device = params[0].device
    with eval_mode(model):
        for item in items:
            x, *rest = item if isinstance(item, tuple) else (item,)
            for row in x.to(device):
                if seen >= samples:
                    break
                log_p = torch.log_softmax(model(row[None], *rest), dim=-1)[0]
                y = torch.multinomial(log_p.detach().exp().cpu(), 1, generator=generator).item()
                grads = torch.autograd.grad(log_p[y], params, allow_unused=True)
                total += sum(float(g.double().pow(2).sum()) for g in grads if g is not None)
                seen += 1
    if seen == 0:
        raise ValueError("the curvature needs at least one input; the experience held none")
    return total / seen / sum(p.numel() for p in params)


def normalize_importance(omega: Tensor, normalize: str | None, beta: float) -> Tensor:
    """One experience's importance rescaled per tensor (``None``: unchanged; see the module docstring)."""
    if normalize is None:
        return omega
    if normalize == "experience_mean":
        raise ValueError(
            '"experience_mean" divides by the mean over every tensor of an experience, not one '
            "tensor's: SPPVariantPlugin.update applies it"
        )
    if normalize == "max":
        peak = omega.max()
        return omega / peak if peak > 0 else omega
    mean = omega.mean()
    if not bool(mean > 0):
        # A tensor with no importance at all (a head that took no part, e.g. a later task's)
        # stays free: a softmax would spread 1/n over it and penalise it before it is learned.
        return omega
    # In units of the tensor's mean importance, so beta sets the sharpness whatever Omega's scale.
    flat = torch.softmax(beta * (omega / mean).reshape(-1), dim=0)
    return flat.view_as(omega)


def per_tensor_mask(omega: Tensor) -> Tensor:
    """The saturating mask ``Omega / (Omega + m_t)``, ``m_t`` this tensor's mean ``Omega`` (0 if it is 0)."""
    return scaled_importance(omega, "saturate", mean_importance([omega]))


def sharpen(mask: Tensor, sharpness: float) -> Tensor:
    """The saturating mask ``r / (1 + r)`` (``r = Omega / m``) made ``r**n / (1 + r**n)``, ``n = sharpness``.

    Computed from the mask ``M`` itself: ``r = M / (1 - M)``, so ``M**n / (M**n + (1 - M)**n)``.
    """
    high = mask.pow(sharpness)
    return high / (high + (1.0 - mask).pow(sharpness))


def tempered_entropy(logits: Tensor, temperature: float) -> Tensor:
    """``(B,)``: the entropy of ``softmax(logits / temperature)`` (:func:`categorical_entropy`)."""
    return categorical_entropy(logits / temperature)


def output_norm_importance(model: nn.Module, batches: Iterable[Any]) -> dict[str, Tensor]:
    """MAS's importance: the mean over mini-batches of ``|d mean_n ||f(x_n)||^2 / dW|``, in eval mode.

    ``batches`` yields inputs ``x`` or ``(x, task)`` items (the plugin's importance batches).
    """
    params = trainable_parameters(model)
    sums = {name: torch.zeros_like(p) for name, p in params.items()}
    n_batches = 0
    with eval_mode(model):
        for item in batches:
            inputs = item if isinstance(item, tuple) else (item,)
            output = model(*inputs)
            grads = torch.autograd.grad(
                output.pow(2).sum(dim=1).mean(), list(params.values()), allow_unused=True
            )
            for name, g in zip(params, grads, strict=True):
                if g is not None:
                    sums[name] += g.abs()
            n_batches += 1
    if n_batches == 0:
        raise ValueError("no input batch to measure the output-norm importance on")
    return {name: total / n_batches for name, total in sums.items()}
