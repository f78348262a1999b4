"""The SPP penalty ``sum M (W - W*)^2`` and the scale ``M`` of the accumulated importance.

:func:`spp_penalty` is the value (with its gradient ``2 M (W - W*)``), :func:`add_spp_penalty_grad_`
adds that gradient to ``.grad`` in place (the plugin's default path, no graph), and
:func:`scaled_importance` turns the accumulated ``Omega`` into the weight ``M`` of the penalty
(``"raw"``, ``"mean"`` or ``"saturate"``; see :class:`avalanche_spp.SPPPlugin`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from avalanche_spp.importance import SCALES, check_choice


def spp_penalty(params: Sequence[Tensor], anchors: Sequence[Tensor], omegas: Sequence[Tensor]) -> Tensor:
    """The SPP regulariser without its strength (paper eq. 5): ``sum_k Omega_k (W_k - W*_k)**2``.

    This runs at every training step, so it is one autograd node over all tensors built from fused
    multi-tensor kernels (``torch._foreach_*``), not a Python loop of small ops per parameter: the
    forward pass reads each tensor a constant number of times and the backward pass is a single
    ``2 * Omega * (W - W*)`` kept from the forward (``benchmarks/penalty_speed.py`` measures it).

    Args:
        params: current weights ``W`` (tensors of any shapes).
        anchors: ``W*``, the weights after the previous task, shaped like ``params``.
        omegas: accumulated importance ``Omega >= 0``, shaped like ``params``.

    Returns:
        A scalar tensor; its gradient w.r.t. each ``W`` is ``2 * Omega * (W - W*)``.

    Raises:
        ValueError: arguments that are not sequences of tensors of equal lengths and shapes. The
            values are not checked (that would synchronise a GPU at every step): ``Omega`` from
            :func:`entropy_importance` is finite and ``>= 0`` by construction.
    """
    _check_penalty_terms(params, anchors, omegas)
    return _WeightedSquaredDistance.apply(list(anchors), list(omegas), *params)


@torch.no_grad()
def add_spp_penalty_grad_(
    params: Sequence[Tensor], anchors: Sequence[Tensor], omegas: Sequence[Tensor], lam: float
) -> None:
    """Add the gradient of ``lam * sum_k Omega_k (W_k - W*_k)**2`` to each ``W.grad``, in place.

    The same update as ``(lam * spp_penalty(params, anchors, omegas)).backward()``, which it
    replaces on the hot path: ``W.grad += 2 * lam * Omega * (W - W*)`` in three fused multi-tensor
    kernels (``torch._foreach_*``), with no forward value and no autograd graph. It is about five
    times cheaper than the autograd form on the paper's MLP (``benchmarks/penalty_speed.py``).
    A parameter whose ``.grad`` is ``None`` (not reached by this step's loss) gets one.

    Args:
        params: current weights ``W``; their ``.grad`` is updated.
        anchors: ``W*``, shaped like ``params``.
        omegas: ``Omega >= 0``, shaped like ``params``.
        lam: the strength ``lambda >= 0``.

    Raises:
        ValueError: as :func:`spp_penalty`, or a negative / non-finite ``lam``.
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
    """The importance that weighs the penalty: ``Omega`` (raw), ``Omega / m`` or ``Omega / (Omega + m)``.

    Args:
        omega: accumulated importance (``>= 0``).
        scale: ``"raw"``, ``"mean"`` or ``"saturate"`` (see :class:`SPPPlugin`).
        mean: ``m``, the mean accumulated importance over every penalised scalar.
    """
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
