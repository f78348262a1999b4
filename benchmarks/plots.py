"""PNG plots of a comparison: accuracy over tasks, the metrics after each task, accuracy matrices, λ sweeps.

Plots are drawn on :class:`matplotlib.figure.Figure` objects (Agg canvas), never through
``pyplot``, so this module changes no global matplotlib state and needs no display.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from avalanche_spp.metrics import METRIC_NAMES
from benchmarks.records import _LABELS, _SCALE, _UNITS, METHOD_ORDER, _group

log = logging.getLogger(__name__)

ACCURACY_PLOT = "accuracy_over_tasks.png"


METRICS_PLOT = "metrics_over_tasks.png"


MATRICES_PLOT = "accuracy_matrices.png"


SWEEP_PLOT = "lambda_sweep.png"


def _color(method: str, methods: Sequence[str]) -> Any:
    """A colour per method, the same in every plot: SPP black, the others tab10 by position in
    METHOD_ORDER, then any other method."""
    palette = colormaps["tab10"].colors
    if method == "spp":
        return "black"
    if method in METHOD_ORDER:
        return palette[METHOD_ORDER.index(method) % len(palette)]
    others = [m for m in methods if m not in METHOD_ORDER]
    return palette[(len(METHOD_ORDER) + others.index(method)) % len(palette)]


def _floats(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([math.nan if v is None else v for v in values], dtype=float)


def _curves(records: Sequence[Mapping[str, Any]], name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per method: ``(T,)`` mean and std over seeds of ``metrics_after_each_task[name]``, scaled
    for display. ``NaN`` (a gap in the line) where a seed has ``None``."""
    curves = {}
    for method, group in _group(records).items():
        rows = [_floats(r["metrics_after_each_task"][name]) for r in group]
        lengths = sorted({len(row) for row in rows})
        if len(lengths) > 1:
            raise ValueError(
                f"method {method!r}: metrics_after_each_task[{name!r}] has lengths {lengths} "
                f"across seeds; every seed must see the same number of tasks"
            )
        stacked = np.stack(rows) * _SCALE[name]  # (n_seeds, T)
        std = np.std(stacked, axis=0, ddof=1) if len(rows) > 1 else np.zeros(stacked.shape[1])
        curves[method] = (np.mean(stacked, axis=0), std)
    return curves


def _draw_curves(ax: Any, curves: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
    methods = list(curves)
    for method, (mean, std) in curves.items():
        x = np.arange(1, len(mean) + 1)
        color = _color(method, methods)
        ax.plot(x, mean, marker="o", markersize=3, label=method, color=color)
        if np.any(std > 0):
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)
    longest = max(len(mean) for mean, _ in curves.values())
    ax.set_xticks(np.arange(1, longest + 1, max(1, longest // 10)))
    ax.set_xlabel("tasks learned")
    ax.grid(alpha=0.3)


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path


def plot_accuracy_over_tasks(records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Average accuracy on the tasks seen so far after each task, one line per method.

    Mean over seeds (band: ± one standard deviation) of ``metrics_after_each_task["acc"]``.

    Returns:
        ``path``.
    """
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    _draw_curves(ax, _curves(records, "acc"))
    ax.set_ylabel("average accuracy on tasks seen (%)")
    ax.set_title("ACC after each task")
    ax.legend(fontsize="small", ncol=2)
    return _save(fig, path)


def plot_metrics_over_tasks(records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """ACC, BWT, FWT and SMT after each task (2x2 grid), one line per method, as the paper's
    Figs. 3, 9, 10. Mean over seeds; BWT, FWT and SMT start at the second task.

    Returns:
        ``path``.
    """
    fig = Figure(figsize=(10, 7), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    for ax, name in zip(axes, METRIC_NAMES, strict=True):
        _draw_curves(ax, _curves(records, name))
        ax.set_ylabel(f"{_LABELS[name]} ({_UNITS[name]})")
        ax.set_title(_LABELS[name])
    axes[0].legend(fontsize="small", ncol=2)
    return _save(fig, path)


def _mean_matrix(group: Sequence[Mapping[str, Any]], method: str) -> np.ndarray:
    """``(T, T)`` mean over seeds of the accuracy matrices, in percent; NaN where none measured."""
    matrices = [np.asarray([_floats(row) for row in r["accuracy_matrix"]], dtype=float) for r in group]
    shapes = sorted({m.shape for m in matrices})
    if len(shapes) > 1:
        raise ValueError(f"method {method!r}: accuracy matrices of shapes {shapes} across seeds")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN cells stay NaN
        return np.nanmean(np.stack(matrices), axis=0) * 100.0


def plot_accuracy_matrices(records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """One heatmap per method of ``P`` (mean over seeds, percent), annotated, blank where no
    seed measured a cell. Rows: after training task ``j``; columns: task ``i``; 1-based.

    Returns:
        ``path``.
    """
    groups = _group(records)
    n = len(groups)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.8 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    image = None
    for ax, (method, group) in zip(axes, groups.items(), strict=False):
        matrix = _mean_matrix(group, method)
        t = matrix.shape[0]
        image = ax.imshow(np.ma.masked_invalid(matrix), vmin=0, vmax=100, cmap="viridis")
        ticks = np.arange(0, t, max(1, t // 10))
        ax.set_xticks(ticks, [str(k + 1) for k in ticks])
        ax.set_yticks(ticks, [str(k + 1) for k in ticks])
        ax.set_xlabel("task evaluated")
        ax.set_ylabel("after training task")
        ax.set_title(f"{method} (n={len(group)})")
        if t <= 20:
            fontsize = max(4.0, 9.0 - t / 3)
            for j in range(t):
                for i in range(t):
                    if np.isfinite(matrix[j, i]):
                        ax.text(
                            i,
                            j,
                            f"{matrix[j, i]:.0f}",
                            ha="center",
                            va="center",
                            fontsize=fontsize,
                            color="black" if matrix[j, i] > 60 else "white",
                        )
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.colorbar(image, ax=list(axes[:n]), label="test accuracy (%)", shrink=0.8)
    return _save(fig, path)


def _check_sweep_rows(sweep_rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if not sweep_rows:
        raise ValueError("sweep_rows is empty: give one {'lam', 'acc', 'bwt', 'fwt'} per strength")
    for k, row in enumerate(sweep_rows):
        missing = [key for key in ("lam", "acc", "bwt", "fwt") if key not in row]
        if missing:
            raise ValueError(f"sweep_rows[{k}] lacks {missing}; each row needs lam, acc, bwt, fwt")
        lam = row["lam"]
        if not isinstance(lam, int | float) or not math.isfinite(lam) or lam < 0:
            raise ValueError(f"sweep_rows[{k}]['lam'] must be a finite strength >= 0; got {lam!r}")
    return sorted(sweep_rows, key=lambda row: row["lam"])


def plot_lambda_sweep(sweep_rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """ACC, BWT and FWT against the strength ``lambda`` (the paper's Fig. 4), x on a log scale.

    Args:
        sweep_rows: one dict per strength with ``"lam"`` (>= 0) and the means ``"acc"``,
            ``"bwt"``, ``"fwt"`` (fractions; ``None`` for undefined). Optional ``"acc_std"``,
            ``"bwt_std"``, ``"fwt_std"`` are drawn as error bars. If ``lam = 0`` is present the
            axis is ``symlog`` (linear below the smallest positive ``lam``) so that it shows.
        path: the PNG to write.

    Returns:
        ``path``.

    Raises:
        ValueError: for no rows, a row without those keys, or a negative strength.
    """
    rows = _check_sweep_rows(sweep_rows)
    lams = np.asarray([row["lam"] for row in rows], dtype=float)
    fig = Figure(figsize=(6.4, 6.0), layout="constrained")
    # ACC on its own axis: its differences are a few points, BWT and FWT sit near 0.
    axes = fig.subplots(2, 1, sharex=True)
    for ax, names in zip(axes, (("acc",), ("bwt", "fwt")), strict=True):
        for name in names:
            values = _floats([row[name] for row in rows]) * 100.0
            errors = None
            if all(row.get(f"{name}_std") is not None for row in rows):
                errors = _floats([row[f"{name}_std"] for row in rows]) * 100.0
            ax.errorbar(lams, values, yerr=errors, marker="o", markersize=3, capsize=2, label=_LABELS[name])
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[1].axhline(0.0, color="grey", linewidth=0.8)
    positive = lams[lams > 0]
    if len(positive) == 0:
        log.warning("plot_lambda_sweep: no positive strength, x axis left linear")
    elif np.any(lams == 0):
        axes[1].set_xscale("symlog", linthresh=float(positive.min()))
        axes[1].set_xlim(left=0.0)  # no negative strengths on the axis
    else:
        axes[1].set_xscale("log")
    axes[1].set_xlabel("strength λ")
    axes[0].set_title("Strength sweep")
    return _save(fig, path)
