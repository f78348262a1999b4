"""SPP variants the harness compares, kept out of the library: the authors' sharpening, a cap, screens.

:class:`SPPVariantPlugin` is :class:`avalanche_spp.SPPPlugin` with the harness's experiments on top,
each off by default (``--spp-normalize`` and ``--spp-curvature-cap`` of ``benchmarks.run``, results
in docs/results/spp_variants; the others through the forms of ``benchmarks.spp_defaults``, results
in docs/results/spp_defaults):

- ``normalize``: each experience's importance rescaled per tensor before it is accumulated:
  ``"max"`` divides by the tensor's maximum, ``"softmax"`` is the authors' sharpening
  ``exp(beta * Omega / m) / sum exp(beta * Omega / m)``, ``m`` the tensor's mean ``Omega``, so
  ``beta`` sets the sharpness whatever the units of ``Omega``.
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
  whatever the spread of importance between layers. Not in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from avalanche_spp.importance import (
    categorical_entropy,
    check_choice,
    trainable_parameters,
)
from avalanche_spp.plugin import SPPPlugin
from benchmarks.analysis_measures import eval_mode

NORMALIZATIONS = (None, "max", "softmax")
MASK_MEANS = ("all", "tensor")
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
        **options: Any,
    ) -> None:
        """``SPPPlugin(lam, **options)``, plus ``normalize``, ``beta``, ``curvature_cap``, ``importance``,
        ``temperature``, ``sharpness``, ``mask_mean``."""
        super().__init__(lam, **options)
        check_choice("mask_mean", mask_mean, MASK_MEANS)
        if mask_mean != "all" and self.scale != "saturate":
            raise ValueError(f'mask_mean applies to scale="saturate" only, not {self.scale!r}')
        self.mask_mean = mask_mean
        bad = isinstance(sharpness, bool) or not isinstance(sharpness, (int, float))
        if bad or not 0 < sharpness < math.inf:
            raise ValueError(f"sharpness must be a positive finite number, got {sharpness!r}")
        if sharpness != 1.0 and self.scale != "saturate":
            raise ValueError(f'sharpness applies to scale="saturate" only, not {self.scale!r}')
        self.sharpness = float(sharpness)
        bad = isinstance(temperature, bool) or not isinstance(temperature, (int, float))
        if bad or not 0 < temperature < math.inf:
            raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
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
        """``c (1 + mu) / (eta lam)``: the largest Omega whose penalty SGD can still follow."""
        if not isinstance(optimizer, torch.optim.SGD):
            raise ValueError(
                f"curvature_cap needs a torch.optim.SGD optimiser (its lr and momentum set the "
                f"bound), got {type(optimizer).__name__}; use curvature_cap=None"
            )
        group = optimizer.param_groups[0]
        if self.lam == 0.0:
            return math.inf
        return self.curvature_cap * (1.0 + group.get("momentum", 0.0)) / (group["lr"] * self.lam)

    def _training_terms(self, model: nn.Module) -> tuple[list[nn.Parameter], list[Tensor], list[Tensor]]:
        params, anchors, omegas = super()._training_terms(model)
        if self.mask_mean == "tensor":
            names = {id(p): n for n, p in model.named_parameters()}
            omegas = [per_tensor_mask(self.omega[names[id(p)]]) for p in params]
        if self.sharpness != 1.0:
            omegas = [sharpen(o, self.sharpness) for o in omegas]
        if self._omega_limit is not None:
            omegas = [torch.clamp(o, max=self._omega_limit) for o in omegas]
        return params, anchors, omegas

    def _importance(self, model: nn.Module, batches: Iterable[Any]) -> dict[str, Tensor]:
        """SPP's importance (of the tempered entropy if ``temperature != 1``), or MAS's."""
        if self.importance == "output_norm":
            return output_norm_importance(model, batches)
        if self.temperature == 1.0:
            return super()._importance(model, batches)
        return super()._importance(
            model, batches, entropy_fn=partial(tempered_entropy, temperature=self.temperature)
        )

    def update(self, model: nn.Module, omega: dict[str, Tensor]) -> None:
        """Normalise this experience's importance per tensor, then fold it in as the library does."""
        omega = {n: normalize_importance(v, self.normalize, self.beta) for n, v in omega.items()}
        super().update(model, omega)

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
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.beta = float(self.beta)


def normalize_importance(omega: Tensor, normalize: str | None, beta: float) -> Tensor:
    """One experience's importance rescaled per tensor (``None``: unchanged; see the module docstring)."""
    if normalize is None:
        return omega
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
    mean = omega.mean()
    if mean <= 0:
        return torch.zeros_like(omega)
    return omega / (omega + mean)


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
