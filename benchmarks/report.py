"""The report of a comparison: paper-style markdown tables, ``report.md`` and tables in the docs.

:func:`markdown_table` prints the summary of :func:`benchmarks.records.summarize` as in the paper's
Tables 2-3, :func:`write_report` writes ``report.md``, ``summary.json`` and the plots
(:mod:`benchmarks.plots`) into a folder, :func:`variant_table` compares SPP variants across
folders, and :func:`fill_tables` regenerates the measured tables included in docs/.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avalanche_spp.metrics import METRIC_NAMES
from benchmarks.plots import (
    ACCURACY_PLOT,
    MATRICES_PLOT,
    METRICS_PLOT,
    SWEEP_PLOT,
    _check_sweep_rows,
    plot_accuracy_matrices,
    plot_accuracy_over_tasks,
    plot_lambda_sweep,
    plot_metrics_over_tasks,
)
from benchmarks.records import (
    _LABELS,
    _SCALE,
    _UNITS,
    _jsonable,
    _write_text_atomic,
    read_json,
    summarize,
    write_json,
)

log = logging.getLogger(__name__)

#: File names :func:`write_report` writes into its folder.
REPORT_FILE = "report.md"
SUMMARY_FILE = "summary.json"


# ----------------------------------------------------------------------------- records and JSON


# ----------------------------------------------------------------------------- summary and table


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
    parts.append("".join(f"- `{row['method']}`: {_fmt_strengths(row['strengths'])}\n" for row in summary))
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
