"""Looking inside a comparison run: the numbers and plots of the paper's Sec. 4.2.5 (Figs. 6-8).

Peng et al., "Overcome Catastrophic Forgetting by Soft Parameter Pruning", arXiv 1812.01640, argue
that SPP's importance is "concentrated and polarised" and that important weights stay put. This
module measures that on a run directory written by ``python -m benchmarks.run --save-tensors``
(``runs/<method>_seed<s>.json`` records and ``tensors/<method>_seed<s>/task<j>.pt`` holding
``{"task": j, "weights": {name: W}, "omega": {name: Omega} | None}`` after each task ``j``):

- Fig. 6: the distribution of three importance measures on the *same* trained model (the weights
  after task 1): EWC's diagonal Fisher (:func:`fisher_importance`), MAS (:func:`mas_importance`)
  and SPP (:func:`avalanche_spp.importance.entropy_importance`), each divided by its maximum and
  shown as a normalised density (:func:`normalized_density`), per layer and overall, with the
  fraction of near-zero values (:func:`near_zero_fraction`).
- Fig. 7(a): average accuracy on the tasks seen so far after each task.
- Fig. 7(b): per layer, the Frechet distance (:func:`frechet_distance_1d`) between the importance
  distribution of the first task (measured after task 1) and of the last task (after task T).
- Fig. 7(c): per layer, ``sum Omega_1 (W_T - W_1)**2`` (:func:`weighted_squared_change`).
- Fig. 8: for one layer, heatmaps of the task-1 importance and of ``|W_j - W_1|`` after later tasks.

Layers: parameters are grouped by the module that owns them (weight and bias together; see
:func:`layer_key`); every output head, whatever the model, is called ``head``. For a multi-head
model, "head" at task ``t`` means head ``t`` (the head of the task being measured).

This module holds :func:`analyze_run` (everything behind the figures). The pure numbers are in
:mod:`benchmarks.analysis_numbers`, the two other importance measures and the run-directory reading
in :mod:`benchmarks.analysis_measures`, the plots and ``analysis.md`` in
:mod:`benchmarks.analysis_report`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from avalanche_spp.importance import check_choice, entropy_importance
from benchmarks.analysis_measures import (
    FISHER_LABELS,
    fisher_importance,
    load_task_tensors,
    mas_importance,
    read_records,
    rebuild_model,
    task_batches,
    task_forward,
)
from benchmarks.analysis_numbers import (
    LOG_DECADES,
    NEAR_ZERO,
    _check_bins,
    change_by_importance,
    fit_gaussian,
    frechet_distance_gaussians,
    layer_key,
    layer_values,
    layer_weight,
    log_density,
    near_zero_fraction,
    normalized_density,
    rank_correlation,
    weight_layers,
    weighted_squared_change,
)
from benchmarks.spp_variants import normalize_importance

log = logging.getLogger(__name__)

#: Methods of the paper's Fig. 7: SPP, multi-head fine-tuning, single-head SGD.
DEFAULT_METHODS = ("spp", "finetune", "sgd")
#: Importance measures of Fig. 6, in the paper's colour order (blue, orange, green).
MEASURES = ("ewc", "mas", "spp")

#: File names :func:`write_analysis` writes.
ANALYSIS_JSON = "analysis.json"
ANALYSIS_MD = "analysis.md"
DENSITY_PLOT = "importance_density.png"
LOG_DENSITY_PLOT = "importance_density_log.png"
ACCURACY_PLOT = "accuracy_over_tasks.png"
FRECHET_PLOT = "frechet_distance.png"
CHANGE_PLOT = "weighted_change.png"
HEATMAP_PLOT = "importance_change_heatmaps.png"
OUTPUT_FILES = (
    ANALYSIS_JSON,
    ANALYSIS_MD,
    DENSITY_PLOT,
    LOG_DENSITY_PLOT,
    ACCURACY_PLOT,
    FRECHET_PLOT,
    CHANGE_PLOT,
    HEATMAP_PLOT,
)

_MEASURE_COLORS = {"ewc": "tab:blue", "mas": "tab:orange", "spp": "tab:green"}  # the paper's Fig. 6
_METHOD_COLORS = {"spp": "tab:red", "finetune": "tab:blue", "sgd": "tab:green"}  # the paper's Fig. 7


# ------------------------------------------------------------------------------------ layers


# ------------------------------------------------------------------------- pure numbers


# Runs recorded before the sign option was named by what it computes.
_OLD_SIGNS = {"paper": "entropy", "authors": "neg_entropy"}


# --------------------------------------------------------------------- importance measures


# ------------------------------------------------------------------------ run directories


# ---------------------------------------------------------------------------- the analysis


@dataclass
class Analysis:
    """What :func:`analyze_run` found: ``numbers`` (JSON-ready) and the Fig. 8 matrices.

    ``heatmaps[method]`` holds ``"importance"`` and ``"change_after_task<j>"`` (1-based) as
    ``(out, in)`` float arrays of the chosen layer.
    """

    numbers: dict[str, Any]
    heatmaps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def _check_settings(fisher_labels: str, bins: int, near_zero: float) -> None:
    check_choice("fisher_labels", fisher_labels, FISHER_LABELS)
    _check_bins(bins)
    if not 0 < near_zero < 1:
        raise ValueError(f"near_zero must be a fraction of the maximum in (0, 1), got {near_zero!r}")


def analyze_run(
    run_dir: str | os.PathLike[str],
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    seed: int | None = None,
    reference_method: str = "spp",
    samples: int | None = None,
    fisher_labels: str = "empirical",
    near_zero: float = NEAR_ZERO,
    bins: int = 50,
    layer: str | None = None,
    data_root: str | os.PathLike[str] | None = None,
) -> Analysis:
    """Compute every number behind Figs. 6-8 for a comparison run directory.

    Args:
        run_dir: the ``--out`` folder of ``python -m benchmarks.run --save-tensors``.
        methods: the methods of Figs. 7-8 (those present in the run are used; at least one).
        seed: which seed's tensors to analyse (default: the smallest). Fig. 7(a) averages all seeds.
        reference_method: whose weights after task 1 Fig. 6 measures (EWC, MAS and SPP on them).
        samples: training samples of a task used by every importance pass (default: the run's
            ``spp_importance_samples``, i.e. what the SPP plugin used; ``None`` there: all).
        fisher_labels: EWC's Fisher, ``"empirical"`` or ``"expected"`` (:func:`fisher_importance`).
        near_zero: threshold of :func:`near_zero_fraction`, a fraction of the maximum.
        bins: bins of the densities.
        layer: Fig. 8's layer (default: the last shared layer with a weight matrix).
        data_root: overrides the records' data folder.

    Returns:
        An :class:`Analysis`.
    """
    from benchmarks.streams import make_benchmark

    run_dir = Path(run_dir)
    records = read_records(run_dir)
    seeds = sorted({s for (_, s) in records})
    seed = seeds[0] if seed is None else seed
    present = _check_inputs(records, methods, seed, reference_method, run_dir)
    _check_settings(fisher_labels, bins, near_zero)
    config = records[(present[0], seed)]["config"]
    benchmark, n_tasks = records[(present[0], seed)]["benchmark"], int(config["n_tasks"])
    train = config.get("train", {})
    spp_options = _spp_options(train)
    samples = train.get("spp_importance_samples") if samples is None else samples
    root = data_root if data_root is not None else config.get("data_root")
    stream = make_benchmark(
        benchmark,
        split=config.get("split", "test"),
        seed=seed,
        data_root=root,
        n_tasks=n_tasks,
        **config.get("benchmark_options", {}),
    )
    last = n_tasks - 1
    data = {t: task_batches(stream, t, samples=samples) for t in sorted({0, last})}
    n_samples = {t: sum(len(x) for x, _ in batches) for t, batches in data.items()}

    def spp_importance(model: nn.Module, task: int) -> dict[str, Tensor]:
        items = [x for x, _ in data[task]]
        options = {k: v for k, v in spp_options.items() if k != "normalize"}
        omega = entropy_importance(model, items, task_forward(model, task), **options)
        how = spp_options["normalize"]
        return {name: normalize_importance(value, how, 1.0) for name, value in omega.items()}

    # Fig. 6: EWC, MAS and SPP on the reference method's weights after task 1.
    reference = load_task_tensors(run_dir, reference_method, seed, 0)
    candidates = weight_layers(reference["weights"])
    if layer is not None and layer not in candidates:
        raise ValueError(f"layer {layer!r} has no weight matrix; choose one of {candidates}")
    model = rebuild_model(records[(reference_method, seed)], reference["weights"], stream, 0)
    forward = task_forward(model, 0)
    measures = {
        "ewc": fisher_importance(model, data[0], forward, labels=fisher_labels),
        "mas": mas_importance(model, data[0], forward),
        "spp": spp_importance(model, 0),
    }
    numbers: dict[str, Any] = {  # fmt: skip
        "run": {"run_dir": str(run_dir), "benchmark": benchmark, "n_tasks": n_tasks, "seed": seed,
                "seeds": seeds, "methods": present,
                "strengths": {m: records[(m, seed)].get("strength") for m in present}},
        "settings": {"samples_per_task": n_samples, "spp_importance": spp_options,
                     "fisher_labels": fisher_labels, "near_zero_threshold": near_zero, "bins": bins,
                     "log_decades": LOG_DECADES},
        "accuracy": accuracy_after_each_task(records, present),
        "importance_distribution": importance_distribution(
            measures, near_zero=near_zero, bins=bins, model=f"{reference_method} seed {seed} after task 1"
        ),
    }

    # Figs. 7(b), 7(c), 8: SPP's entropy importance of each method's weights after tasks 1 and T.
    first_importance, last_importance, weights, checks = {}, {}, {}, {}
    for method in present:
        tensors = {t: load_task_tensors(run_dir, method, seed, t) for t in range(n_tasks)}
        weights[method] = {t: tensors[t]["weights"] for t in range(n_tasks)}
        for task, target in ((0, first_importance), (last, last_importance)):
            rebuilt = rebuild_model(records[(method, seed)], weights[method][task], stream, task)
            target[method] = spp_importance(rebuilt, task)
        saved = [tensors[t].get("omega") for t in range(n_tasks)]
        if all(o is not None for o in saved):
            checks[method] = saved_importance_check(
                saved, first_importance[method], last_importance[method], train.get("spp_accumulate", "sum")
            )
    numbers["run"]["same_weights_after_task_1"] = _same_weights([weights[m][0] for m in present])
    numbers["frechet"] = frechet_by_layer(first_importance, last_importance, last_task=last)
    numbers["weighted_change"] = change_by_layer(first_importance, weights, last_task=last)
    chosen = layer or _default_layer(weights[present[0]][0])
    heatmap_numbers, heatmaps = heatmap_data(first_importance, weights, chosen)
    numbers["heatmaps"] = heatmap_numbers
    numbers["checks"] = {"saved_vs_recomputed_spp_importance": checks}
    return Analysis(numbers=numbers, heatmaps=heatmaps)


def _check_inputs(
    records: Mapping[tuple[str, int], Any],
    methods: Sequence[str],
    seed: int,
    reference_method: str,
    run_dir: Path,
) -> list[str]:
    """The requested methods present with ``seed`` (at least one), all on the same benchmark and tasks."""
    present = [m for m in methods if (m, seed) in records]
    if not present:
        available = sorted({m for (m, s) in records if s == seed})
        raise ValueError(f"none of the methods {list(methods)} ran with seed {seed}; the run has {available}")
    if (reference_method, seed) not in records:
        raise ValueError(
            f"reference method {reference_method!r} has no run with seed {seed} in {run_dir}; "
            f"choose one of {sorted({m for (m, s) in records if s == seed})}"
        )
    first = records[(present[0], seed)]
    for m in {*present, reference_method}:
        other = records[(m, seed)]
        if (
            other["benchmark"] != first["benchmark"]
            or other["config"]["n_tasks"] != first["config"]["n_tasks"]
        ):
            raise ValueError(f"{m} ran on a different benchmark or task count than {present[0]}")
    return present


def _spp_options(train: Mapping[str, Any]) -> dict[str, Any]:
    """The importance options the run's SPP used (runs from before an option existed: its old value)."""
    return {
        "fisher": train.get("spp_fisher", "per_sample"),
        "taylor_of": train.get("spp_taylor_of", _OLD_SIGNS.get(train.get("spp_first_order"), "entropy")),
        "clamp": train.get("spp_clamp", "experience"),
        "normalize": train.get("spp_normalize"),
    }


def accuracy_after_each_task(
    records: Mapping[tuple[str, int], Mapping[str, Any]], methods: Sequence[str]
) -> dict[str, Any]:
    """Fig. 7(a): ACC on the tasks seen so far after each task, mean over seeds, per method.

    Reads each record's ``metrics_after_each_task["acc"]`` (fractions).
    """
    out = {}
    for method in methods:
        runs = {s: r for (m, s), r in sorted(records.items()) if m == method}
        curves = {s: r["metrics_after_each_task"]["acc"] for s, r in runs.items()}
        lengths = {len(c) for c in curves.values()}
        if len(lengths) != 1:
            raise ValueError(f"{method}: seeds saw different numbers of tasks {sorted(lengths)}")
        stacked = np.asarray([[math.nan if v is None else v for v in c] for c in curves.values()])
        out[method] = {
            "seeds": list(curves),
            "mean": stacked.mean(axis=0).tolist(),
            "per_seed": {str(s): c for s, c in curves.items()},
        }
    return out


def importance_distribution(
    measures: Mapping[str, Mapping[str, Tensor]], *, near_zero: float, bins: int, model: str
) -> dict[str, Any]:
    """Fig. 6 numbers: per measure, overall and per layer, densities and near-zero fractions.

    Each group (``"all"`` or a layer) is divided by its own maximum. Head ``0`` of a multi-head
    model is the task-1 head.
    """
    groups: dict[str, dict[str, Any]] = {}
    edges = log_edges = None
    for measure, omega in measures.items():
        layers = layer_values(omega, task=0)
        for group, values in {"all": torch.cat(list(layers.values())), **layers}.items():
            edges, density = normalized_density(values, bins=bins)
            log_edges, log_dens = log_density(values, bins=bins)
            groups.setdefault(group, {})[measure] = {
                "n": int(values.numel()),
                "max": float(values.max()),
                "mean": float(values.mean()),
                "near_zero_fraction": near_zero_fraction(values, near_zero),
                "zero_fraction": float((values == 0).double().mean()),
                "density": density,
                "log_density": log_dens,
            }
    return {
        "model": model,
        "measures": list(measures),
        "edges": edges,
        "log_edges": log_edges,
        "groups": groups,
    }


def frechet_by_layer(
    first: Mapping[str, Mapping[str, Tensor]],
    last: Mapping[str, Mapping[str, Tensor]],
    *,
    last_task: int,
) -> dict[str, Any]:
    """Fig. 7(b): per method and layer, Gaussian fits and the Frechet distance, first vs last task.

    ``first[method]`` is measured after task 1 (head 0), ``last[method]`` after task T (head
    ``last_task``, 0-based), so "head" compares the head of each task being measured.
    """
    out: dict[str, Any] = {}
    for method in first:
        a = layer_values(first[method], task=0)
        b = layer_values(last[method], task=last_task)
        rows = {}
        for layer in a:
            if layer not in b:
                continue
            (mu1, s1), (mu2, s2) = fit_gaussian(a[layer]), fit_gaussian(b[layer])
            rows[layer] = {
                "mu_first": mu1,
                "sigma_first": s1,
                "mu_last": mu2,
                "sigma_last": s2,
                "frechet": frechet_distance_gaussians(mu1, s1, mu2, s2),
            }
        out[method] = rows
    return out


def change_by_layer(
    first_importance: Mapping[str, Mapping[str, Tensor]],
    weights: Mapping[str, Mapping[int, Mapping[str, Tensor]]],
    *,
    last_task: int,
) -> dict[str, Any]:
    """Fig. 7(c): per method and layer, ``sum Omega_1 (W_T - W_1)**2`` and ``sum (W_T - W_1)**2``.

    Parameters that exist after task 1 are compared (head 0 for a multi-head model).
    """
    out: dict[str, Any] = {}
    for method, omega in first_importance.items():
        w_first, w_last = weights[method][0], weights[method][last_task]
        per_layer: dict[str, dict[str, float]] = {}
        for name, o in omega.items():
            layer, task = layer_key(name)
            if task not in (None, 0):
                continue
            row = per_layer.setdefault(layer, {"weighted": 0.0, "squared": 0.0, "n": 0})
            row["weighted"] += weighted_squared_change(o, w_first[name], w_last[name])
            row["squared"] += weighted_squared_change(torch.ones_like(o), w_first[name], w_last[name])
            row["n"] += o.numel()
        out[method] = per_layer
    return out


def heatmap_data(
    first_importance: Mapping[str, Mapping[str, Tensor]],
    weights: Mapping[str, Mapping[int, Mapping[str, Tensor]]],
    layer: str,
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Fig. 8: the task-1 importance and ``|W_j - W_1|`` of one layer, with summary numbers.

    The changes are shown after task 2 and after task T. Numbers per method: Spearman's rank
    correlation of importance and change after task T, and the mean change of the 10 % most and
    the 50 % least important weights (:func:`change_by_importance`).
    """
    numbers: dict[str, Any] = {"layer": layer, "methods": {}}
    matrices: dict[str, dict[str, np.ndarray]] = {}
    for method, omega in first_importance.items():
        n_tasks = len(weights[method])
        shown = sorted({min(1, n_tasks - 1), n_tasks - 1} - {0}) or [0]
        importance = layer_weight(omega, layer, 0)
        first = layer_weight(weights[method][0], layer, 0)
        matrices[method] = {"importance": importance.numpy()}
        for j in shown:
            change = (layer_weight(weights[method][j], layer, 0) - first).abs()
            matrices[method][f"change_after_task{j + 1}"] = change.numpy()
        final = (layer_weight(weights[method][n_tasks - 1], layer, 0) - first).abs()
        numbers["methods"][method] = {
            "shape": list(importance.shape),
            "tasks_shown": [j + 1 for j in shown],
            "spearman_importance_vs_change": rank_correlation(importance, final),
            "mean_change_by_importance": change_by_importance(importance, final),
        }
    return numbers, matrices


def saved_importance_check(
    saved: Sequence[Mapping[str, Tensor]],
    first: Mapping[str, Tensor],
    last: Mapping[str, Tensor],
    accumulate: str,
) -> dict[str, float | None]:
    """Largest relative difference between recomputed and saved (plugin) SPP importances.

    ``saved[j]`` is the plugin's accumulated ``Omega`` after task ``j``; with ``accumulate="sum"``
    the last task's own importance is ``saved[T-1] - saved[T-2]``.
    """
    result: dict[str, float | None] = {"first_task": _relative_difference(first, saved[0])}
    if len(saved) > 1 and accumulate == "sum":
        own = {n: saved[-1][n] - saved[-2][n] for n in saved[-1] if n in saved[-2]}
        result["last_task"] = _relative_difference(last, own)
    else:
        result["last_task"] = None
    return result


def _relative_difference(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    common = [n for n in a if n in b and a[n].shape == b[n].shape]
    if not common:
        raise ValueError("no parameter in common between the recomputed and the saved importance")
    diff = max(float((a[n].double() - b[n].double()).abs().max()) for n in common)
    scale = max(float(b[n].double().abs().max()) for n in common)
    return diff / scale if scale > 0 else diff


def _same_weights(states: Sequence[Mapping[str, Tensor]]) -> bool:
    """Whether every state holds the same weights, layer by layer (the task-1 head for multi-head)."""

    def shared(state: Mapping[str, Tensor]) -> dict[tuple[str, str], Tensor]:
        keys = {n: layer_key(n) for n in state}
        return {(keys[n][0], n.rsplit(".", 1)[-1]): t for n, t in state.items() if keys[n][1] in (None, 0)}

    first = shared(states[0])
    for state in states[1:]:
        other = shared(state)
        if set(other) != set(first) or any(not torch.equal(first[n], other[n]) for n in first):
            return False
    return True


def _default_layer(weights: Mapping[str, Tensor]) -> str:
    shared = [layer for layer in weight_layers(weights) if not layer.startswith("head")]
    if not shared:
        raise ValueError("the model has no shared layer with a weight matrix; pass a layer name")
    return shared[-1]


# -------------------------------------------------------------------------------- plots


# ------------------------------------------------------------------------------ writing
