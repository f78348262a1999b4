"""The analysis written out: the figures (Figs. 6-8, Agg canvas, no pyplot state) and analysis.md."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from benchmarks.analysis import (
    _MEASURE_COLORS,
    _METHOD_COLORS,
    ACCURACY_PLOT,
    ANALYSIS_JSON,
    ANALYSIS_MD,
    CHANGE_PLOT,
    DENSITY_PLOT,
    FRECHET_PLOT,
    HEATMAP_PLOT,
    LOG_DENSITY_PLOT,
    Analysis,
)
from benchmarks.records import _write_text_atomic, write_json

log = logging.getLogger(__name__)


def _method_color(method: str, index: int) -> Any:
    return _METHOD_COLORS.get(method, colormaps["tab10"].colors[(index + 3) % 10])


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path


def _grid(n: int, width: float = 3.6, height: float = 3.0) -> tuple[Figure, list[Any]]:
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def plot_importance_density(
    distribution: Mapping[str, Any], path: str | os.PathLike[str], *, log: bool = False
) -> Path:
    """Fig. 6: one panel per group (overall, then each layer), a density line per measure.

    ``log=False``: ``Omega / max`` on ``[0, 1]`` with a logarithmic density axis (both ends of a
    polarised distribution show); ``log=True``: ``log10(Omega / max)`` of the non-zero values
    (the legend gives the fraction of exact zeros).
    """
    groups = distribution["groups"]
    edges = np.asarray(distribution["log_edges" if log else "edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    fig, axes = _grid(len(groups))
    for ax, (group, by_measure) in zip(axes, groups.items(), strict=True):
        for measure, row in by_measure.items():
            density = np.asarray(row["log_density" if log else "density"], dtype=float)
            if log:
                label = f"{measure.upper()} ({100 * row['zero_fraction']:.0f}% = 0, left out)"
            else:
                label = f"{measure.upper()} ({100 * row['near_zero_fraction']:.0f}% near 0)"
            ax.plot(centers, density, color=_MEASURE_COLORS.get(measure), label=label, drawstyle="steps-mid")
        ax.set_title("all layers" if group == "all" else group)
        ax.set_xlabel("log10(importance / max)" if log else "importance / max")
        ax.set_ylabel("density")
        if not log:
            ax.set_yscale("log")
        ax.legend(fontsize="x-small")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Importance distributions on {distribution['model']}")
    return _save(fig, path)


def plot_accuracy(accuracy: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Fig. 7(a): ACC on the tasks seen so far after each task, one line per method."""
    fig = Figure(figsize=(5.6, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for index, (method, row) in enumerate(accuracy.items()):
        mean = 100 * np.asarray([math.nan if v is None else v for v in row["mean"]], dtype=float)
        color = _method_color(method, index)
        ax.plot(np.arange(1, len(mean) + 1), mean, marker="o", label=method, color=color)
    ax.set_xlabel("tasks learned")
    ax.set_ylabel("average accuracy on tasks seen (%)")
    ax.set_title("(a) average accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _layer_bars(ax: Any, table: Mapping[str, Mapping[str, Mapping[str, float]]], key: str) -> None:
    methods = list(table)
    layers: list[str] = []
    for rows in table.values():
        layers += [layer for layer in rows if layer not in layers]
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(layers))
    for index, method in enumerate(methods):
        values = [table[method].get(layer, {}).get(key, math.nan) for layer in layers]
        positions = x + (index - (len(methods) - 1) / 2) * width
        ax.bar(positions, values, width, label=method, color=_method_color(method, index))
        for position, value in zip(positions, values, strict=True):
            if value == 0:  # invisible on a log axis: say it
                ax.annotate(
                    "0",
                    (position, 0),
                    xycoords=("data", "axes fraction"),
                    ha="center",
                    va="bottom",
                    fontsize="small",
                    color=_method_color(method, index),
                )
    ax.set_xticks(x, layers, rotation=20)
    ax.set_yscale("log")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, axis="y")


def plot_frechet(frechet: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Fig. 7(b): per layer, the Frechet distance of first- and last-task importance, per method."""
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    _layer_bars(ax, frechet, "frechet")
    ax.set_ylabel("Frechet distance (task 1 vs task T)")
    ax.set_title("(b) importance distribution, first vs last task")
    return _save(fig, path)


def plot_weighted_change(change: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Fig. 7(c): per layer, ``sum Omega_1 (W_T - W_1)**2``, per method."""
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    _layer_bars(ax, change, "weighted")
    ax.set_ylabel("sum Omega_1 (W_T - W_1)^2")
    ax.set_title("(c) importance-weighted parameter change")
    return _save(fig, path)


def plot_heatmaps(
    heatmaps: Mapping[str, Mapping[str, np.ndarray]],
    layer: str,
    path: str | os.PathLike[str],
    *,
    block: int | None = None,
) -> Path:
    """Fig. 8: per method (rows), the task-1 importance and ``|W_j - W_1|`` (columns) of one layer.

    Matrices are drawn transposed as in the paper: input units down, output units across; with
    ``block``, only the first ``block`` input and output units (single weights become visible). Each
    importance panel has its own colour scale (warm: important); the change panels share one scale
    per column (cold: small change). Scales are clipped at the 99th percentile, so a few extreme
    values do not wash the rest out.
    """
    if block is not None and (isinstance(block, bool) or not isinstance(block, int) or block < 1):
        raise ValueError(f"block must be a positive int or None (whole matrix), got {block!r}")
    crop = slice(None) if block is None else slice(0, block)
    heatmaps = {m: {c: a.T[crop, crop] for c, a in by.items()} for m, by in heatmaps.items()}  # (in, out)
    methods = list(heatmaps)
    columns = list(next(iter(heatmaps.values())))
    fig = Figure(figsize=(3.4 * len(columns), 3.0 * len(methods)), layout="constrained")
    axes = fig.subplots(len(methods), len(columns), squeeze=False)
    change_max = {
        c: max(float(np.percentile(heatmaps[m][c], 99)) for m in methods) or 1.0
        for c in columns
        if c != "importance"
    }
    for r, method in enumerate(methods):
        for c, column in enumerate(columns):
            ax = axes[r][c]
            matrix = heatmaps[method][column]
            if column == "importance":
                vmax = float(np.percentile(matrix, 99)) or float(matrix.max()) or 1.0
                image = ax.imshow(matrix, cmap="hot", vmin=0, vmax=vmax, aspect="auto")
                title = f"{method}: task-1 importance"
            else:
                image = ax.imshow(matrix, cmap="Blues_r", vmin=0, vmax=change_max[column], aspect="auto")
                title = f"{method}: |W{column.removeprefix('change_after_task')} - W1|"
            ax.set_title(title, fontsize="small")
            ax.set_xlabel("output unit")
            ax.set_ylabel("input unit")
            fig.colorbar(image, ax=ax, shrink=0.8)
    shown = "" if block is None else f", first {block} x {block} units"
    fig.suptitle(f"Layer {layer}{shown}: importance after task 1 and weight change after later tasks")
    return _save(fig, path)


def write_analysis(
    out_dir: str | os.PathLike[str],
    analysis: Analysis,
    *,
    command: str | None = None,
    config: Mapping[str, Any] | None = None,
    heatmap_block: int | None = 64,
) -> list[Path]:
    """Write ``analysis.json``, ``analysis.md`` and the PNGs (:data:`OUTPUT_FILES`) to ``out_dir``.

    Args:
        out_dir: the folder (created if missing).
        analysis: from :func:`analyze_run`.
        command: the command line that made it, shown in the markdown.
        config: the command line's settings, saved in the JSON as ``"config"``.
        heatmap_block: Fig. 8 shows the first ``heatmap_block`` input and output units of the
            layer (``None``: the whole matrix); its numbers always cover the whole layer.

    Returns:
        The paths written, in the order of :data:`OUTPUT_FILES`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    numbers = dict(analysis.numbers)
    numbers["heatmaps"] = {**numbers["heatmaps"], "block": heatmap_block}
    if config is not None:
        numbers["config"] = dict(config)
    if command is not None:
        numbers["command"] = command
    paths = [write_json(out_dir / ANALYSIS_JSON, numbers)]
    markdown = analysis_markdown(numbers, command=command)
    _write_text_atomic(out_dir / ANALYSIS_MD, markdown)
    paths.append(out_dir / ANALYSIS_MD)
    distribution = numbers["importance_distribution"]
    paths.append(plot_importance_density(distribution, out_dir / DENSITY_PLOT))
    paths.append(plot_importance_density(distribution, out_dir / LOG_DENSITY_PLOT, log=True))
    paths.append(plot_accuracy(numbers["accuracy"], out_dir / ACCURACY_PLOT))
    paths.append(plot_frechet(numbers["frechet"], out_dir / FRECHET_PLOT))
    paths.append(plot_weighted_change(numbers["weighted_change"], out_dir / CHANGE_PLOT))
    paths.append(
        plot_heatmaps(
            analysis.heatmaps, numbers["heatmaps"]["layer"], out_dir / HEATMAP_PLOT, block=heatmap_block
        )
    )
    return paths


def analysis_markdown(numbers: Mapping[str, Any], *, command: str | None = None) -> str:
    """The markdown page: setup, the figures and the tables of the numbers behind them."""
    run, settings = numbers["run"], numbers["settings"]
    n_tasks = run["n_tasks"]
    parts = [f"# Looking inside: {run['benchmark']}, {n_tasks} tasks (seed {run['seed']})\n"]
    if command:
        parts.append(f"Command:\n\n```\n{command}\n```\n")
    parts.append(
        f"- Run folder: `{run['run_dir']}`; methods: {', '.join(f'`{m}`' for m in run['methods'])}; "
        f"strengths: {json.dumps(run['strengths'])}\n"
        f"- Importance passes use {_samples_text(settings['samples_per_task'])} training samples "
        f"of the task measured; SPP's importance options: `{json.dumps(settings['spp_importance'])}`.\n"
        f"- Task numbers are 1-based: task 1 is the first task, task T = {n_tasks} the last.\n"
    )
    if run.get("same_weights_after_task_1") and len(run["methods"]) > 1:
        parts.append(
            "The methods hold identical weights after task 1 (same seed and initialisation, and no "
            "penalty acts during the first task), so their task-1 importances are identical too; "
            "they differ from task 2 on.\n"
        )
    parts += _fig6_text(numbers)
    parts += _fig7_text(numbers)
    parts += _fig8_text(numbers)
    parts += _check_text(numbers)
    parts.append("Every number is in `analysis.json`.\n")
    return "\n".join(parts)


def _fig6_text(numbers: Mapping[str, Any]) -> list[str]:
    """Fig. 6: the importance densities, and the near-zero fractions per layer."""
    parts: list[str] = []
    settings, dist = numbers["settings"], numbers["importance_distribution"]
    threshold = settings["near_zero_threshold"]
    parts.append("## Fig. 6: distribution of parameter importance\n")
    parts.append(
        f"EWC (diagonal Fisher, {settings['fisher_labels']} labels, per sample), MAS (mean absolute "
        "gradient of the squared L2 norm of the logits) and SPP (entropy importance, paper eq. 3) on "
        f"the same weights: {dist['model']}. Each measure is divided by its maximum in the group "
        f'(all layers, or one layer). "near 0": below {threshold:g} of that maximum; "= 0": exactly '
        "zero (SPP clamps negative estimates to 0).\n"
    )
    parts.append(f"![Importance densities]({DENSITY_PLOT})\n")
    parts.append(f"![Importance densities, log10 scale]({LOG_DENSITY_PLOT})\n")
    measures = dist["measures"]
    header = "| group | " + " | ".join(f"{m.upper()} near 0 | {m.upper()} = 0" for m in measures) + " |"
    parts.append(header)
    parts.append("|" + "---|" * (1 + 2 * len(measures)))
    for group, rows in dist["groups"].items():
        cells = " | ".join(
            f"{100 * rows[m]['near_zero_fraction']:.1f}% | {100 * rows[m]['zero_fraction']:.1f}%"
            for m in measures
        )
        parts.append(f"| {group} | {cells} |")
    parts.append("")
    return parts


def _fig7_text(numbers: Mapping[str, Any]) -> list[str]:
    """Fig. 7: accuracy over tasks, Frechet distances, importance-weighted change."""
    parts: list[str] = []
    run = numbers["run"]
    n_tasks = run["n_tasks"]
    parts.append("## Fig. 7(a): average accuracy over tasks\n")
    parts.append(
        "ACC on the tasks seen so far after each task (mean over seeds "
        f"{', '.join(str(s) for s in run['seeds'])}).\n"
    )
    parts.append(f"![Average accuracy]({ACCURACY_PLOT})\n")
    parts.append("| method | " + " | ".join(str(t) for t in range(1, n_tasks + 1)) + " |")
    parts.append("|" + "---|" * (1 + n_tasks))
    for method, row in numbers["accuracy"].items():
        parts.append(f"| {method} | " + " | ".join(_percent(v) for v in row["mean"]) + " |")
    parts.append("")
    parts.append("## Fig. 7(b): importance distribution, first vs last task\n")
    parts.append(
        "Per layer, SPP's entropy importance of each method's weights after task 1 (on task 1's "
        f"data) and after task {n_tasks} (on task {n_tasks}'s data), each fitted by a Gaussian; the "
        "Frechet distance is `(mu1 - mu2)^2 + s1^2 + s2^2 - 2 s1 s2`. Fine-tuning and SGD have no "
        'importance of their own: the same SPP measure is applied to their weights. "head" is the '
        "head of the task measured (head 1 vs head T for multi-head models).\n"
    )
    parts.append(f"![Frechet distance]({FRECHET_PLOT})\n")
    parts.append(_layer_table(numbers["frechet"], "frechet"))
    parts.append("## Fig. 7(c): importance-weighted parameter change\n")
    parts.append(
        f"Per layer, `sum Omega_1 (W_{n_tasks} - W_1)^2` with `Omega_1` the SPP importance of the "
        "method's own weights after task 1 (for a multi-head model, the task-1 head). The "
        "unweighted `sum (W_T - W_1)^2` is in the JSON (`squared`).\n"
    )
    parts.append(f"![Weighted change]({CHANGE_PLOT})\n")
    parts.append(_layer_table(numbers["weighted_change"], "weighted"))
    return parts


def _fig8_text(numbers: Mapping[str, Any]) -> list[str]:
    """Fig. 8: the heatmaps of one layer, and change by importance."""
    parts: list[str] = []
    heat = numbers["heatmaps"]
    parts.append(f"## Fig. 8: importance and weight change of layer `{heat['layer']}`\n")
    parts.append(
        "Left: task-1 importance (warm: important). Right: `|W_j - W_1|` after later tasks (cold: "
        f"small change). {_block_text(heat.get('block'))} The table, over the whole layer, compares, "
        "after the last task, the mean absolute change of the "
        "10 % most important weights with that of the 50 % least important, and gives Spearman's "
        "rank correlation of importance and change (negative: important weights moved less).\n"
    )
    parts.append(f"![Importance and change heatmaps]({HEATMAP_PLOT})\n")
    parts.append("| method | mean change, top 10 % | mean change, bottom 50 % | all | Spearman |")
    parts.append("|---|---|---|---|---|")
    for method, row in heat["methods"].items():
        by = row["mean_change_by_importance"]
        rho = row["spearman_importance_vs_change"]
        parts.append(
            f"| {method} | {by['top']:.4g} | {by['bottom']:.4g} | {by['all']:.4g} | "
            f"{'n/a' if rho is None else f'{rho:.3f}'} |"
        )
    parts.append("")
    return parts


def _check_text(numbers: Mapping[str, Any]) -> list[str]:
    """The saved importance against the recomputed one, when the run saved it."""
    parts: list[str] = []
    checks = numbers["checks"]["saved_vs_recomputed_spp_importance"]
    if checks:
        parts.append("## Check\n")
        cells = "; ".join(
            f"`{m}`: {_number(c['first_task'])}, {_number(c['last_task'])}" for m, c in checks.items()
        )
        parts.append(
            "Largest relative difference between the SPP importance recomputed here and the one the "
            "plugin saved during the run (first task, then last task as a difference of accumulated "
            f"importances): {cells}.\n"
        )
    return parts


def _layer_table(table: Mapping[str, Mapping[str, Mapping[str, float]]], key: str) -> str:
    layers: list[str] = []
    for rows in table.values():
        layers += [layer for layer in rows if layer not in layers]
    lines = ["| method | " + " | ".join(layers) + " |", "|" + "---|" * (1 + len(layers))]
    for method, rows in table.items():
        cells = [f"{rows[layer][key]:.3g}" if layer in rows else "" for layer in layers]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _block_text(block: int | None) -> str:
    if block is None:
        return "The whole weight matrix is shown."
    return f"Only the first {block} input and {block} output units are shown."


def _samples_text(samples: Mapping[Any, int]) -> str:
    counts = sorted(set(samples.values()))
    return " / ".join(str(c) for c in counts)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def _percent(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.1f}"
