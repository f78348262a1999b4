"""The SPP penalty ``sum M (W - W*)^2``: its value (:func:`spp_penalty`), its gradient added in place
(:func:`add_spp_penalty_grad_`, the plugin's default path) and the scale ``M`` of the accumulated
importance (:func:`scaled_importance`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from avalanche_spp.importance import SCALES, check_choice


def spp_penalty(params: Sequence[Tensor], anchors: Sequence[Tensor], omegas: Sequence[Tensor]) -> Tensor:
    """The SPP regulariser without its strength (paper eq. 5): ``sum_k Omega_k (W_k - W*_k)**2``.

    ``params`` are the weights ``W``, ``anchors`` the weights ``W*`` after the previous task and
    ``omegas`` the importance, lists of tensors shaped alike. Returns a scalar whose gradient w.r.t.
    each ``W`` is ``2 Omega (W - W*)``: one autograd node over fused multi-tensor kernels
    (``torch._foreach_*``), not a loop of small ops per parameter, as it runs at every step.
    ``ValueError`` for arguments that are not sequences of tensors of equal lengths and shapes; the
    values are not checked (that would synchronise a GPU at every step).
    """
    _check_penalty_terms(params, anchors, omegas)
    return _WeightedSquaredDistance.apply(list(anchors), list(omegas), *params)


@torch.no_grad()
def add_spp_penalty_grad_(
    params: Sequence[Tensor], anchors: Sequence[Tensor], omegas: Sequence[Tensor], lam: float
) -> None:
    """``W.grad += 2 lam Omega (W - W*)``: the gradient of ``lam * spp_penalty(...)``, in place.

    The same update as ``(lam * spp_penalty(params, anchors, omegas)).backward()`` in three fused
    kernels with no autograd graph, about five times cheaper on the paper's MLP
    (``benchmarks/penalty_speed.py``). A ``W`` whose ``.grad`` is ``None`` gets one. ``ValueError``
    as :func:`spp_penalty`, or for a negative or non-finite ``lam``.
    """
    _check_penalty_terms(params, anchors, omegas)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    diffs = torch._foreach_sub([p.detach() for p in params], list(anchors))  # W - W*
    torch._foreach_mul_(diffs, list(omegas))  # Omega (W - W*)
    torch._foreach_add_([p.grad for p in params], diffs, alpha=2.0 * lam)


def _check_penalty_terms(
    params: Sequence[Tensor], anchors: Sequence[Tensor], omegas: Sequence[Tensor]
) -> None:
    for label, tensors in (("params", params), ("anchors", anchors), ("omegas", omegas)):
        if isinstance(tensors, (Tensor, Mapping)) or not isinstance(tensors, Sequence):
            raise ValueError(
                f"{label} must be a list or tuple of tensors (one per parameter), got "
                f"{type(tensors).__name__}; e.g. spp_penalty([w], [w_star], [omega])"
            )
        if not all(isinstance(t, Tensor) for t in tensors):
            kinds = sorted({type(t).__name__ for t in tensors if not isinstance(t, Tensor)})
            raise ValueError(f"{label} must hold tensors only, got entries of type {kinds}")
    if not (len(params) == len(anchors) == len(omegas)):
        raise ValueError(
            f"params, anchors and omegas must have the same length, got "
            f"{len(params)}, {len(anchors)}, {len(omegas)}"
        )
    if not params:
        raise ValueError("spp_penalty needs at least one parameter")
    for p, a, o in zip(params, anchors, omegas, strict=True):
        if p.shape != a.shape or p.shape != o.shape:
            raise ValueError(
                f"shape mismatch in spp_penalty: weight {tuple(p.shape)}, anchor "
                f"{tuple(a.shape)}, omega {tuple(o.shape)}"
            )


class _WeightedSquaredDistance(torch.autograd.Function):
    """``sum_k Omega_k (W_k - W*_k)**2`` over lists of tensors; gradient ``2 Omega (W - W*)``."""

    @staticmethod
    def forward(ctx: Any, anchors: list[Tensor], omegas: list[Tensor], *params: Tensor) -> Tensor:
        diffs = torch._foreach_sub(list(params), anchors)  # W - W*
        weighted = torch._foreach_mul(diffs, omegas)  # Omega (W - W*)
        torch._foreach_mul_(diffs, weighted)  # Omega (W - W*)^2, of any sign
        value = torch.stack([d.sum() for d in diffs]).sum()
        ctx.save_for_backward(*weighted)
        return value

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple:
        weighted = ctx.saved_tensors
        return (None, None, *torch._foreach_mul(list(weighted), 2.0 * grad_output))


def scaled_importance(omega: Tensor, scale: str, mean: float) -> Tensor:
    """The weight ``M`` of the penalty for ``scale`` ``"raw"``, ``"mean"`` or ``"saturate"``: ``Omega``,
    ``Omega / m`` or ``Omega / (Omega + m)``, ``m`` the mean ``Omega`` (:func:`mean_importance`)."""
    check_choice("scale", scale, SCALES)
    if scale == "raw":
        return omega
    if mean <= 0:
        return torch.zeros_like(omega)
    if scale == "mean":
        return omega / mean
    return omega / (omega + mean)


def mean_importance(omegas: Iterable[Tensor]) -> float:
    """``m`` of the ``"saturate"`` and ``"mean"`` scales: the mean ``Omega`` over every scalar."""
    omegas = list(omegas)
    count = sum(o.numel() for o in omegas)
    return sum(float(o.double().sum()) for o in omegas) / count if count else 0.0
