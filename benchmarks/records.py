"""Run records (JSON) of a continual-learning comparison, and their summary over seeds.

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
mean and standard deviation per method. Tables and the report are :mod:`benchmarks.report`, the
plots :mod:`benchmarks.plots`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import tempfile
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

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


_LABELS = {"acc": "ACC", "bwt": "BWT", "fwt": "FWT", "smt": "SMT"}


#: Display scale: ACC, BWT, FWT are fractions shown in percent; SMT is a variance of fractions,
#: shown as a variance of percentages (percent squared).
_SCALE = {"acc": 100.0, "bwt": 100.0, "fwt": 100.0, "smt": 100.0**2}


_UNITS = {"acc": "%", "bwt": "%", "fwt": "%", "smt": "%²"}


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
            raise ValueError(f"method {method!r} has several records for seed(s) {twice}; keep one per seed")
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
                    method,
                    name,
                    len(group) - len(present),
                    len(group),
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
                    key: _mean_std([r["wall_time_s"][key] for r in group]) for key in WALL_TIME_KEYS
                },
            }
        )
    finetune = next((s for s in summary if s["method"] == "finetune"), None)
    reference = None if finetune is None else finetune["wall_time_s"]["total"]["mean"]
    for row in summary:
        mean = row["wall_time_s"]["total"]["mean"]
        row["x_finetune"] = mean / reference if reference else None
    return summary
