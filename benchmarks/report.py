"""Run records (JSON), paper-style markdown tables and PNG plots of a continual-learning comparison.

A *run record* is one method trained with one seed on one benchmark, as a JSON-ready dict::

    {"method": str, "benchmark": str, "seed": int, "strength": float | None,
     "config": dict, "versions": dict,
     "accuracy_matrix": list[list[float | None]],   # (T, T), P[j][i], fractions; None = not measured
     "joint_accuracies": list[float] | None,         # (T,) m_i of the joint run, for FWT
     "metrics": {"acc", "bwt", "fwt", "smt"},        # avalanche_spp.metrics.all_metrics
     "metrics_after_each_task": {"acc", "bwt", "fwt", "smt"},  # lists of T values
     "wall_time_s": {"train": float, "importance": float, "total": float}}

:func:`build_record` makes one from an accuracy matrix (so the metrics always match the matrix),
:func:`write_json` stores it atomically, :func:`summarize` reduces the records of several seeds to
mean and standard deviation per method, :func:`markdown_table` prints them as in the paper's
Tables 2-3, and :func:`write_report` writes ``report.md`` with the plots beside it.

Plots are drawn on :class:`matplotlib.figure.Figure` objects (Agg canvas), never through
``pyplot``, so this module changes no global matplotlib state and needs no display.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from avalanche_spp.metrics import METRIC_NAMES, all_metrics, metrics_after_each_task

log = logging.getLogger(__name__)

#: Row order of tables and legends: the paper's baselines, then SPP. Other methods follow.
METHOD_ORDER = ("sgd", "sgd_f", "finetune", "ewc", "si", "mas", "lwf", "joint", "spp")
#: Keys every run record must have.
RECORD_KEYS = (
    "method",
    "benchmark",
    "seed",
    "strength",
    "config",
    "versions",
    "accuracy_matrix",
    "joint_accuracies",
    "metrics",
    "metrics_after_each_task",
    "wall_time_s",
)
WALL_TIME_KEYS = ("train", "importance", "total")
#: Distributions whose versions :func:`package_versions` reports.
PACKAGES = ("torch", "torchvision", "avalanche-lib", "numpy", "avalanche-spp")
#: File names :func:`write_report` writes into its folder.
REPORT_FILE = "report.md"
SUMMARY_FILE = "summary.json"
ACCURACY_PLOT = "accuracy_over_tasks.png"
METRICS_PLOT = "metrics_over_tasks.png"
MATRICES_PLOT = "accuracy_matrices.png"
SWEEP_PLOT = "lambda_sweep.png"

_LABELS = {"acc": "ACC", "bwt": "BWT", "fwt": "FWT", "smt": "SMT"}
#: Display scale: ACC, BWT, FWT are fractions shown in percent; SMT is a variance of fractions,
#: shown as a variance of percentages (percent squared).
_SCALE = {"acc": 100.0, "bwt": 100.0, "fwt": 100.0, "smt": 100.0**2}
_UNITS = {"acc": "%", "bwt": "%", "fwt": "%", "smt": "%²"}


# ----------------------------------------------------------------------------- records and JSON


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages a result depends on, to save beside it.

    Returns:
        ``{"python": "3.11.7", "torch": ..., "torchvision": ..., "avalanche-lib": ...,
        "numpy": ..., "avalanche-spp": ...}``; ``"not installed"`` for a missing distribution.
    """
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _jsonable(obj: Any, where: str = "obj") -> Any:
    """``obj`` with numpy values, tuples and paths turned into JSON types; ``NaN`` becomes ``None``.

    Raises:
        ValueError: for an infinite float (JSON has none, and an accuracy or time is never one).
    """
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist(), where)
    if isinstance(obj, list | tuple):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return _jsonable(obj.item(), where)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            raise ValueError(f"{where} is {obj}: JSON has no infinity; fix the value before saving")
    return obj


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically: a temporary file in the same folder, then
    ``os.replace``. A reader never sees a half-written file, and a crash leaves the old one.

    Numpy arrays and scalars become lists and numbers, tuples become lists, ``NaN`` becomes
    ``null`` (e.g. unmeasured accuracies above the diagonal). Missing parent folders are created.

    Args:
        path: the destination file.
        obj: anything JSON can hold after the conversions above.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: for an infinite float. TypeError: for an object JSON cannot hold.
    """
    path = Path(path)
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n"
    _write_text_atomic(path, text)
    return path


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes the file private (0o600); results are for reading
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file written by :func:`write_json` (``null`` stays ``None``)."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def build_record(
    *,
    method: str,
    benchmark: str,
    seed: int,
    strength: float | None,
    config: Mapping[str, Any],
    accuracy_matrix: Sequence[Sequence[float]] | np.ndarray,
    joint_accuracies: Sequence[float] | np.ndarray | None,
    wall_time_s: Mapping[str, float],
    versions: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A run record whose metrics are computed from its accuracy matrix.

    Args:
        method: e.g. ``"spp"``. benchmark: e.g. ``"split_fmnist"``. seed: the run's seed.
        strength: the regularisation strength used (``lambda``), or ``None`` for methods without.
        config: the settings of the run (``dataclasses.asdict(config)``).
        accuracy_matrix: ``(T, T)`` ``P[j][i]``, fractions; ``NaN`` where not measured.
        joint_accuracies: ``(T,)`` joint training's test accuracies, or ``None``.
        wall_time_s: seconds, with keys ``"train"``, ``"importance"``, ``"total"``.
        versions: defaults to :func:`package_versions`.

    Returns:
        The record (JSON-ready: ``NaN`` stored as ``None``), checked by :func:`validate_record`.
    """
    matrix = np.asarray(accuracy_matrix, dtype=float)
    record = {
        "method": method,
        "benchmark": benchmark,
        "seed": seed,
        "strength": strength,
        "config": dict(config),
        "versions": dict(package_versions() if versions is None else versions),
        "accuracy_matrix": matrix,
        "joint_accuracies": None if joint_accuracies is None else list(joint_accuracies),
        "metrics": all_metrics(matrix, joint_accuracies),
        "metrics_after_each_task": metrics_after_each_task(matrix, joint_accuracies),
        "wall_time_s": dict(wall_time_s),
    }
    record = _jsonable(record)
    validate_record(record)
    return record


def validate_record(record: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming what is wrong if ``record`` is not a complete run record."""
    name = f"record of method {record.get('method')!r}, seed {record.get('seed')!r}"
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing:
        raise ValueError(f"{name} lacks {missing}; a run record needs all of {list(RECORD_KEYS)}")
    for key in ("metrics", "metrics_after_each_task"):
        lacking = [m for m in METRIC_NAMES if m not in record[key]]
        if lacking:
            raise ValueError(f"{name}: {key!r} lacks {lacking}; it needs {list(METRIC_NAMES)}")
    wall = record["wall_time_s"]
    lacking = [k for k in WALL_TIME_KEYS if not isinstance(wall, Mapping) or k not in wall]
    if lacking:
        raise ValueError(f"{name}: 'wall_time_s' lacks {lacking}; it needs {list(WALL_TIME_KEYS)}")
    for key in WALL_TIME_KEYS:
        value = wall[key]
        if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}: wall_time_s[{key!r}] must be seconds >= 0; got {value!r}")
    matrix = np.asarray(
        [[math.nan if v is None else v for v in row] for row in record["accuracy_matrix"]],
        dtype=float,
    )
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{name}: accuracy_matrix must be square (T, T); got {matrix.shape}")


# ----------------------------------------------------------------------------- summary and table


def _method_order(methods: Sequence[str]) -> list[str]:
    """Unique methods, those of :data:`METHOD_ORDER` first in that order, then the rest as given."""
    unique = list(dict.fromkeys(methods))
    known = [m for m in METHOD_ORDER if m in unique]
    return known + [m for m in unique if m not in METHOD_ORDER]


def _group(records: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Records by method in table order; refuses several benchmarks or a method's seed twice."""
    if not records:
        raise ValueError("no run records given: nothing to summarise")
    for record in records:
        validate_record(record)
    benchmarks = sorted({str(r["benchmark"]) for r in records})
    if len(benchmarks) > 1:
        raise ValueError(f"records of several benchmarks {benchmarks}: report one at a time")
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for method in _method_order([r["method"] for r in records]):
        group = [r for r in records if r["method"] == method]
        seeds = [r["seed"] for r in group]
        twice = sorted({s for s in seeds if seeds.count(s) > 1})
        if twice:
            raise ValueError(
                f"method {method!r} has several records for seed(s) {twice}; keep one per seed"
            )
        groups[method] = sorted(group, key=lambda r: r["seed"])
    return groups


def _mean_std(values: Sequence[float]) -> dict[str, float | None]:
    """Mean and sample standard deviation (``ddof=1``; 0 for one value; None for none)."""
    if not values:
        return {"mean": None, "std": None, "n": 0}
    array = np.asarray(values, dtype=float)
    std = float(np.std(array, ddof=1)) if len(array) > 1 else 0.0
    return {"mean": float(np.mean(array)), "std": std, "n": len(array)}


def summarize(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds, per method, of the metrics and wall times.

    A metric that is ``None`` for some seeds (e.g. FWT without a joint run) is averaged over the
    seeds that have it, and its ``"n"`` says how many; ``None`` for all seeds gives ``None``.

    Args:
        records: run records (see the module docstring) of one benchmark.

    Returns:
        One dict per method, in :data:`METHOD_ORDER`, with keys ``"method"``, ``"benchmark"``,
        ``"n_seeds"``, ``"seeds"``, ``"strengths"`` (the distinct strengths used, ``None``
        included), ``"metrics"`` (``{"acc": {"mean", "std", "n"}, ...}``, fractions),
        ``"wall_time_s"`` (``{"train" | "importance" | "total": {"mean", "std", "n"}}``) and
        ``"x_finetune"`` (mean total wall time over ``finetune``'s; ``None`` without finetune).
        Standard deviations are sample ones (``ddof=1``), 0 for a single seed.

    Raises:
        ValueError: for no records, an incomplete record, several benchmarks, or a seed repeated
            within a method.
    """
    groups = _group(records)
    summary = []
    for method, group in groups.items():
        metric_stats = {}
        for name in METRIC_NAMES:
            present = [r["metrics"][name] for r in group if r["metrics"][name] is not None]
            metric_stats[name] = _mean_std(present)
            if 0 < len(present) < len(group):
                log.warning(
                    "%s: %s is missing for %d of %d seeds; averaged over the others",
                    method, name, len(group) - len(present), len(group),
                )
        summary.append(
            {
                "method": method,
                "benchmark": group[0]["benchmark"],
                "n_seeds": len(group),
                "seeds": [r["seed"] for r in group],
                "strengths": list(dict.fromkeys(r["strength"] for r in group)),
                "metrics": metric_stats,
                "wall_time_s": {
                    key: _mean_std([r["wall_time_s"][key] for r in group])
                    for key in WALL_TIME_KEYS
                },
            }
        )
    finetune = next((s for s in summary if s["method"] == "finetune"), None)
    reference = None if finetune is None else finetune["wall_time_s"]["total"]["mean"]
    for row in summary:
        mean = row["wall_time_s"]["total"]["mean"]
        row["x_finetune"] = mean / reference if reference else None
    return summary


def _fmt_number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt_stat(stats: Mapping[str, Any], scale: float, digits: int, n_seeds: int) -> str:
    if stats["mean"] is None:
        return "n/a"
    text = f"{stats['mean'] * scale:.{digits}f} ± {stats['std'] * scale:.{digits}f}"
    if stats["n"] < n_seeds:
        text += f" (n={stats['n']})"
    return text


def _fmt_strengths(strengths: Sequence[float | None]) -> str:
    shown = [f"{s:g}" for s in strengths if s is not None]
    return ", ".join(shown) if shown else "n/a"


def markdown_table(summary: Sequence[Mapping[str, Any]], *, digits: int = 2) -> str:
    """The paper-style results table (its Tables 2-3) of a :func:`summarize` output.

    ACC, BWT and FWT are shown in percent, SMT in percent squared (the variance of accuracies
    written in percent), each as ``mean ± std`` over seeds; ``n/a`` where a value is undefined
    (e.g. FWT without a joint run). A metric known for fewer seeds than the row's gets ``(n=k)``.
    Rows keep the order of ``summary``.

    Args:
        summary: the list returned by :func:`summarize`.
        digits: decimals of the metrics (wall times get one, ratios two).

    Returns:
        A GitHub-flavoured markdown table, ending with a newline.
    """
    header = ["Method", "strength"]
    header += [f"{_LABELS[m]} ({_UNITS[m]})" for m in METRIC_NAMES]
    header += ["wall time (s)", "x finetune", "n seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for row in summary:
        n_seeds = row["n_seeds"]
        cells = [row["method"], _fmt_strengths(row["strengths"])]
        cells += [_fmt_stat(row["metrics"][m], _SCALE[m], digits, n_seeds) for m in METRIC_NAMES]
        cells.append(_fmt_stat(row["wall_time_s"]["total"], 1.0, 1, n_seeds))
        cells.append(_fmt_number(row["x_finetune"], 2))
        cells.append(str(n_seeds))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plots


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


def _curves(
    records: Sequence[Mapping[str, Any]], name: str
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
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


def plot_accuracy_over_tasks(
    records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]
) -> Path:
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


def plot_metrics_over_tasks(
    records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]
) -> Path:
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
    matrices = [
        np.asarray([_floats(row) for row in r["accuracy_matrix"]], dtype=float) for r in group
    ]
    shapes = sorted({m.shape for m in matrices})
    if len(shapes) > 1:
        raise ValueError(f"method {method!r}: accuracy matrices of shapes {shapes} across seeds")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN cells stay NaN
        return np.nanmean(np.stack(matrices), axis=0) * 100.0


def plot_accuracy_matrices(
    records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]
) -> Path:
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
                            i, j, f"{matrix[j, i]:.0f}", ha="center", va="center",
                            fontsize=fontsize, color="black" if matrix[j, i] > 60 else "white",
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


def plot_lambda_sweep(
    sweep_rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]
) -> Path:
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


# ----------------------------------------------------------------------------- report


def _shared_and_varying(dicts: Sequence[Mapping[str, Any]]) -> tuple[dict, dict]:
    """Keys with one value in all ``dicts``, and the others with their distinct values."""
    keys = list(dict.fromkeys(k for d in dicts for k in d))
    shared, varying = {}, {}
    for key in keys:
        values = [json.dumps(_jsonable(d.get(key)), sort_keys=True) for d in dicts]
        distinct = list(dict.fromkeys(values))
        if len(distinct) == 1 and all(key in d for d in dicts):
            shared[key] = dicts[0][key]
        else:
            varying[key] = [json.loads(v) for v in distinct]
    return shared, varying


def _sweep_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| λ | ACC (%) | BWT (%) | FWT (%) |", "|---|---|---|---|"]
    for row in rows:
        cells = [f"{row['lam']:g}"]
        for name in ("acc", "bwt", "fwt"):
            value, std = row[name], row.get(f"{name}_std")
            text = "n/a" if value is None else f"{value * 100:.2f}"
            if value is not None and std is not None:
                text += f" ± {std * 100:.2f}"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: str | os.PathLike[str],
    records: Sequence[Mapping[str, Any]],
    *,
    title: str,
    sweep_rows: Sequence[Mapping[str, Any]] | None = None,
    notes: str | None = None,
    command: str | None = None,
) -> Path:
    """Write ``report.md``, ``summary.json`` and the PNG plots of a comparison into ``out_dir``.

    ``report.md`` holds the title, the notes, the command (if given), the configuration shared by
    all runs (and the settings that vary), the package versions, the paper-style table
    (:func:`markdown_table`), the strengths chosen per method, the plots (relative links) and,
    with ``sweep_rows``, the strength sweep as a table and a plot. ``summary.json`` holds the
    :func:`summarize` output (and the sweep rows), so every number in the report is also in JSON.

    Args:
        out_dir: the folder (created if missing).
        records: the run records of one benchmark.
        title: the report's heading.
        sweep_rows: optional ``lambda`` sweep, as in :func:`plot_lambda_sweep`.
        notes: optional markdown placed under the title.
        command: optional command line that produced the records, shown verbatim.

    Returns:
        The path of ``report.md``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(records)
    rows = _check_sweep_rows(sweep_rows) if sweep_rows is not None else None
    plot_accuracy_over_tasks(records, out_dir / ACCURACY_PLOT)
    plot_metrics_over_tasks(records, out_dir / METRICS_PLOT)
    plot_accuracy_matrices(records, out_dir / MATRICES_PLOT)
    if rows is not None:
        plot_lambda_sweep(rows, out_dir / SWEEP_PLOT)
    write_json(out_dir / SUMMARY_FILE, {"summary": summary, "sweep": rows})

    shared_config, varying_config = _shared_and_varying([r["config"] for r in records])
    shared_versions, varying_versions = _shared_and_varying([r["versions"] for r in records])
    seeds = sorted({r["seed"] for r in records})
    parts = [f"# {title}\n"]
    if notes:
        parts.append(notes.strip() + "\n")
    parts.append("## Setup\n")
    methods = ", ".join(f"`{row['method']}`" for row in summary)
    parts.append(
        f"- Benchmark: `{summary[0]['benchmark']}`\n"
        f"- Methods: {methods}\n"
        f"- Seeds: {', '.join(str(s) for s in seeds)}\n"
    )
    if command:
        parts.append(f"Command:\n\n```\n{command}\n```\n")
    parts.append(
        "Configuration shared by all runs:\n\n```json\n"
        + json.dumps(_jsonable(shared_config), indent=2, sort_keys=True)
        + "\n```\n"
    )
    if varying_config:
        parts.append(
            "Settings that differ between runs:\n\n"
            + "".join(f"- `{k}`: {json.dumps(v)}\n" for k, v in varying_config.items())
        )
    versions = ", ".join(f"{k} {v}" for k, v in shared_versions.items())
    parts.append(f"Versions: {versions}\n")
    if varying_versions:
        parts.append(
            "**Versions differ between runs:** "
            + "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in varying_versions.items())
            + "\n"
        )
    parts.append("## Results\n")
    parts.append(
        "Mean ± sample standard deviation over seeds. ACC, BWT, FWT (paper eqs. 6-8) in percent, "
        "higher is better; SMT (eq. 9: variance of a task's accuracy from when it was learned to "
        "the end, averaged over tasks) in percent squared, lower is more stable. FWT is relative "
        "to `joint`'s per-task accuracies (n/a without a joint run). Wall time is a whole run "
        "(training, importance passes and evaluation); `x finetune` is its ratio to `finetune`.\n"
    )
    parts.append(markdown_table(summary))
    parts.append("## Chosen strengths\n")
    parts.append(
        "".join(
            f"- `{row['method']}`: {_fmt_strengths(row['strengths'])}\n" for row in summary
        )
    )
    parts.append("## Plots\n")
    parts.append(f"![Average accuracy on the tasks seen after each task]({ACCURACY_PLOT})\n")
    parts.append(f"![ACC, BWT, FWT and SMT after each task]({METRICS_PLOT})\n")
    parts.append(f"![Accuracy matrices, mean over seeds]({MATRICES_PLOT})\n")
    if rows is not None:
        parts.append("## Strength sweep\n")
        parts.append(_sweep_table(rows))
        parts.append(f"![ACC, BWT and FWT against the strength]({SWEEP_PLOT})\n")
    report = out_dir / REPORT_FILE
    _write_text_atomic(report, "\n".join(parts))
    return report


# ----------------------------------------------------------------------------- variant table


def variant_row(label: str, folder: str | os.PathLike[str], method: str = "spp") -> dict[str, Any]:
    """One line of a variant study, read from a comparison folder written by ``benchmarks.run``.

    Returns:
        ``label``, the ``method``'s mean metrics and wall time (from ``summary.json``), its chosen
        strength, the largest strength that trained and the smallest that diverged on validation
        (from ``tuning/<method>_summary.json``, when it was tuned), and the mean over seeds of
        the importance statistics the SPP records carry (``spp_importance``), when they do.

    Raises:
        FileNotFoundError: ``folder`` has no ``summary.json``. ValueError: it has no ``method`` row.
    """
    folder = Path(folder)
    path = folder / SUMMARY_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `python -m benchmarks.run --out {folder} ...` first")
    rows = [r for r in read_json(path)["summary"] if r["method"] == method]
    if not rows:
        raise ValueError(f"{path} has no {method!r} row")
    summary = rows[0]
    row: dict[str, Any] = {
        "label": label,
        "folder": str(folder),
        "n_seeds": summary["n_seeds"],
        "strength": summary["strengths"][0] if summary["strengths"] else None,
        **{name: summary["metrics"][name] for name in METRIC_NAMES},
        "wall_time_s": summary["wall_time_s"]["total"]["mean"],
        "importance_time_s": summary["wall_time_s"]["importance"]["mean"],
        "largest_trained": None,
        "smallest_diverged": None,
    }
    tuning = folder / "tuning" / f"{method}_summary.json"
    if tuning.exists():
        tuning_rows = read_json(tuning)["rows"]
        trained = [r["strength"] for r in tuning_rows if r.get("acc") is not None]
        diverged = [r["strength"] for r in tuning_rows if r.get("status") == "diverged"]
        row["largest_trained"] = max(trained) if trained else None
        row["smallest_diverged"] = min(diverged) if diverged else None
    stats = [read_json(p).get("spp_importance") for p in sorted(folder.glob(f"runs/{method}_seed*.json"))]
    stats = [s for s in stats if s]
    for key in ("max", "max_shared", "median_nonzero", "fraction_zero", "lam_stability_limit"):
        values = [s[key] for s in stats if s.get(key) is not None]
        row[f"omega_{key}"] = float(np.mean(values)) if values else None
    return row


def variant_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of :func:`variant_row` lines (metrics in percent, mean ± std over seeds)."""
    header = (
        "| variant | λ chosen | ACC (%) | BWT (%) | SMT (%²) | largest λ trained | smallest λ diverged "
        "| max Ω | max Ω shared | median Ω > 0 | Ω = 0 (%) | λ limit (1+μ)/(η max Ω shared) "
        "| importance (s) | wall time (s) |"
    )
    lines = [header, "|" + "---|" * 14]
    for r in rows:
        cells = [
            r["label"],
            _fmt_strengths([r["strength"]]),
            *(_fmt_stat(r[name], _SCALE[name], 2, r["n_seeds"]) for name in ("acc", "bwt", "smt")),
            _fmt_strengths([r["largest_trained"]]),
            _fmt_strengths([r["smallest_diverged"]]),
            "n/a" if r["omega_max"] is None else f"{r['omega_max']:.3g}",
            "n/a" if r.get("omega_max_shared") is None else f"{r['omega_max_shared']:.3g}",
            "n/a" if r.get("omega_median_nonzero") is None else f"{r['omega_median_nonzero']:.3g}",
            "n/a" if r["omega_fraction_zero"] is None else f"{100 * r['omega_fraction_zero']:.1f}",
            "n/a" if r["omega_lam_stability_limit"] is None else f"{r['omega_lam_stability_limit']:.3g}",
            f"{r['importance_time_s']:.2f}",
            f"{r['wall_time_s']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- tables in docs

_TABLE_BLOCK = re.compile(
    r"(?P<open><!-- (?P<kind>summary|include): (?P<path>[^ ]+) -->\n)(?P<body>.*?)(?P<close><!-- end -->)",
    re.DOTALL,
)


def fill_tables(text: str, base: str | os.PathLike[str]) -> str:
    """Regenerate the measured tables inside a markdown document.

    A block ``<!-- summary: DIR -->`` ... ``<!-- end -->`` is replaced by the results table of the
    comparison in ``base/DIR`` (its ``summary.json``, as ``report.md`` shows it); a block
    ``<!-- include: FILE -->`` ... ``<!-- end -->`` by the text of ``base/FILE`` (e.g. the table
    ``benchmarks.table`` wrote). So the numbers in the docs are the measured ones, never typed.

    Raises:
        FileNotFoundError: a block names a folder or file that does not exist.
    """
    base = Path(base)

    def render(match: re.Match) -> str:
        path = base / match["path"]
        if match["kind"] == "summary":
            if not (path / SUMMARY_FILE).exists():
                raise FileNotFoundError(f"{path / SUMMARY_FILE} (named in a summary block) does not exist")
            body = markdown_table(read_json(path / SUMMARY_FILE)["summary"])
        else:
            if not path.exists():
                raise FileNotFoundError(f"{path} (named in an include block) does not exist")
            body = path.read_text(encoding="utf-8")
        return match["open"] + body + match["close"]

    return _TABLE_BLOCK.sub(render, text)
