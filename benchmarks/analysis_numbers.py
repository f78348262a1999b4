"""The numbers behind the analysis figures: layers of a model, densities, Frechet distances, change."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor

log = logging.getLogger(__name__)

#: A value is "near zero" when below this fraction of the maximum (see :func:`near_zero_fraction`).
NEAR_ZERO = 1e-3
#: Lower end of the log10 density's range, in decades below the maximum.
LOG_DECADES = 8


_HEAD = re.compile(r"^classifier\.(?:classifiers|heads)\.(?P<task>\d+)(?:\.(?P<rest>.+))?$")


def layer_key(name: str) -> tuple[str, int | None]:
    """The layer a parameter belongs to, and the task of its head (``None``: shared).

    ``features.1.weight`` -> ``("features.1", None)``; a multi-head MLP's
    ``classifier.classifiers.3.classifier.bias`` -> ``("head", 3)``; a multi-head CNN's
    ``classifier.heads.3.0.weight`` -> ``("head.0", 3)``; a single head ``classifier.weight`` ->
    ``("head", None)`` (the repository's models call their output layer(s) ``classifier``).
    """
    path = name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name
    match = _HEAD.match(path)
    if match:
        rest = match["rest"]
        return ("head" if rest in (None, "classifier") else f"head.{rest}"), int(match["task"])
    if path == "classifier":
        return "head", None
    if path.startswith("classifier."):
        return "head." + path[len("classifier.") :], None
    return path, None


def layer_values(tensors: Mapping[str, Tensor], task: int = 0) -> dict[str, Tensor]:
    """Flatten and concatenate the tensors of each layer (weights, then bias), in model order.

    Args:
        tensors: ``{param_name: tensor}`` (weights, importances, ...).
        task: which head of a multi-head model to keep (others are left out); shared layers and a
            single head are always kept.

    Returns:
        ``{layer: (n,) float64 tensor}``.
    """
    grouped: dict[str, list[Tensor]] = {}
    for name, tensor in tensors.items():
        layer, head_task = layer_key(name)
        if head_task is not None and head_task != task:
            continue
        grouped.setdefault(layer, []).append(tensor.detach().reshape(-1).to(torch.float64).cpu())
    return {layer: torch.cat(parts) for layer, parts in grouped.items()}


def layer_weight(tensors: Mapping[str, Tensor], layer: str, task: int = 0) -> Tensor:
    """The ``weight`` tensor of ``layer`` (head ``task`` of a multi-head model).

    Raises:
        ValueError: no such layer, naming the layers there are.
    """
    for name, tensor in tensors.items():
        if name.endswith(".weight") and layer_key(name) in ((layer, task), (layer, None)):
            return tensor.detach().to(torch.float64).cpu()
    layers = sorted({layer_key(n)[0] for n in tensors if n.endswith(".weight")})
    raise ValueError(f"no layer {layer!r} with a weight; layers: {layers}")


def weight_layers(tensors: Mapping[str, Tensor]) -> list[str]:
    """Layers whose ``weight`` is a 2-D matrix, in model order (candidates for Fig. 8)."""
    found: list[str] = []
    for name, tensor in tensors.items():
        layer = layer_key(name)[0]
        if name.endswith(".weight") and tensor.dim() == 2 and layer not in found:
            found.append(layer)
    return found


def fit_gaussian(values: Tensor | np.ndarray) -> tuple[float, float]:
    """Mean and (population, ``ddof=0``) standard deviation of a 1-D sample, in float64."""
    array = _flat64(values)
    if array.size == 0:
        raise ValueError("cannot fit a Gaussian to an empty set of values")
    return float(array.mean()), float(array.std())


def frechet_distance_gaussians(mu1: float, sigma1: float, mu2: float, sigma2: float) -> float:
    """Frechet distance between two 1-D Gaussians ``N(mu1, sigma1**2)`` and ``N(mu2, sigma2**2)``.

    ``d**2 = (mu1 - mu2)**2 + sigma1**2 + sigma2**2 - 2 sigma1 sigma2 = (mu1 - mu2)**2 +
    (sigma1 - sigma2)**2``: the 1-D case of ``|mu1 - mu2|**2 + tr(S1 + S2 - 2 (S1 S2)**0.5)`` (the
    formula behind FID). Like FID, the squared distance is reported.
    """
    if sigma1 < 0 or sigma2 < 0:
        raise ValueError(f"standard deviations must be >= 0, got {sigma1!r} and {sigma2!r}")
    return (mu1 - mu2) ** 2 + sigma1**2 + sigma2**2 - 2.0 * sigma1 * sigma2


def frechet_distance_1d(first: Tensor | np.ndarray, second: Tensor | np.ndarray) -> float:
    """Frechet distance of two samples, each fitted by a Gaussian (:func:`fit_gaussian`).

    The paper's Fig. 7(b) compares the importance distribution of a layer after the first task with
    the one after the last task this way.
    """
    return frechet_distance_gaussians(*fit_gaussian(first), *fit_gaussian(second))


def normalized_density(
    values: Tensor | np.ndarray, *, bins: int = 50, scale: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Histogram density of ``values / scale`` on ``[0, 1]``: it integrates to 1.

    Args:
        values: ``(n,)`` non-negative importances.
        bins: number of equal-width bins.
        scale: divisor (default: the maximum of ``values``; all-zero values stay 0).

    Returns:
        ``(edges (bins + 1,), density (bins,))`` with ``sum(density * diff(edges)) == 1``.
    """
    scaled = _scaled(values, scale)
    edges = np.linspace(0.0, 1.0, _check_bins(bins) + 1)
    counts, _ = np.histogram(np.clip(scaled, 0.0, 1.0), bins=edges)
    return edges, counts / (scaled.size * np.diff(edges))


def log_density(
    values: Tensor | np.ndarray,
    *,
    bins: int = 50,
    scale: float | None = None,
    decades: int = LOG_DECADES,
) -> tuple[np.ndarray, np.ndarray]:
    """Histogram density of ``log10(values / scale)`` over the *non-zero* values, on ``[-decades, 0]``.

    Exact zeros have no logarithm: they are left out (report their fraction apart, e.g. SPP's
    clamped estimates). Non-zero values below ``10**-decades`` of the scale are counted in the first
    bin, so the density integrates to 1 whenever one value is non-zero (all zeros: a zero density).

    Returns:
        ``(edges (bins + 1,), density (bins,))``.
    """
    if isinstance(decades, bool) or not isinstance(decades, int) or decades < 1:
        raise ValueError(f"decades must be a positive int, got {decades!r}")
    scaled = _scaled(values, scale)
    positive = scaled[scaled > 0]
    edges = np.linspace(-float(decades), 0.0, _check_bins(bins) + 1)
    if positive.size == 0:
        return edges, np.zeros(bins)
    logs = np.log10(np.clip(positive, 10.0 ** (-decades), 1.0))
    counts, _ = np.histogram(logs, bins=edges)
    return edges, counts / (positive.size * np.diff(edges))


def near_zero_fraction(
    values: Tensor | np.ndarray, threshold: float = NEAR_ZERO, *, scale: float | None = None
) -> float:
    """Fraction of ``values`` below ``threshold * scale`` (default scale: their maximum).

    All-zero values are all near zero (1.0).
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1) (a fraction of the maximum), got {threshold!r}")
    array = _flat64(values)
    if array.size == 0:
        raise ValueError("near_zero_fraction of an empty set of values")
    peak = float(array.max()) if scale is None else float(scale)
    if peak <= 0:
        return 1.0
    return float(np.mean(array < threshold * peak))


def weighted_squared_change(omega: Tensor, first: Tensor, last: Tensor) -> float:
    """``sum_k Omega_k (W_T,k - W_1,k)**2`` (the paper's Fig. 7(c)), in float64.

    Args:
        omega: ``Omega_1``, the importance measured after the first task, any shape.
        first: ``W_1``, the weights after the first task, shaped like ``omega``.
        last: ``W_T``, the weights after the last task, shaped like ``omega``.
    """
    if not (omega.shape == first.shape == last.shape):
        raise ValueError(
            f"omega {tuple(omega.shape)}, first {tuple(first.shape)} and last {tuple(last.shape)} "
            "must have the same shape"
        )
    diff = last.detach().to(torch.float64) - first.detach().to(torch.float64)
    return float((omega.detach().to(torch.float64) * diff * diff).sum())


def rank_correlation(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float | None:
    """Spearman's rank correlation of two equal-length samples (ties get their average rank).

    Returns ``None`` when either sample is constant (the correlation is undefined).
    """
    x, y = _flat64(a), _flat64(b)
    if x.shape != y.shape:
        raise ValueError(f"samples of different sizes: {x.size} and {y.size}")
    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def change_by_importance(
    omega: Tensor, change: Tensor, *, top: float = 0.1, bottom: float = 0.5
) -> dict[str, float]:
    """Mean absolute change of the most and of the least important weights.

    Args:
        omega: importances, any shape. change: ``|W_j - W_1|``, shaped like ``omega``.
        top: fraction of the most important weights (by rank).
        bottom: fraction of the least important weights (by rank).

    Returns:
        ``{"top": mean change of the top fraction, "bottom": ... of the bottom fraction,
        "all": mean change}``.
    """
    if omega.shape != change.shape:
        raise ValueError(f"omega {tuple(omega.shape)} and change {tuple(change.shape)} differ in shape")
    for name, value in (("top", top), ("bottom", bottom)):
        if not 0 < value <= 1:
            raise ValueError(f"{name} must be a fraction in (0, 1], got {value!r}")
    order = np.argsort(_flat64(omega), kind="stable")  # ascending importance
    values = _flat64(change)[order]
    n = values.size
    n_top, n_bottom = max(1, round(top * n)), max(1, round(bottom * n))
    return {
        "top": float(values[n - n_top :].mean()),
        "bottom": float(values[:n_bottom].mean()),
        "all": float(values.mean()),
    }


def _flat64(values: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().to(torch.float64).reshape(-1).numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _scaled(values: Tensor | np.ndarray, scale: float | None) -> np.ndarray:
    array = _flat64(values)
    if array.size == 0:
        raise ValueError("no values to make a density of")
    if np.any(array < 0):
        raise ValueError("importances must be >= 0 for a density on [0, 1]")
    peak = float(array.max()) if scale is None else float(scale)
    return array / peak if peak > 0 else array


def _check_bins(bins: int) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    return bins
