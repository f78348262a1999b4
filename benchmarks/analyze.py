"""Look inside a comparison run: the paper's Figs. 6-8 for your own run directory.

    python -m benchmarks.run --benchmark permuted_fmnist --n-tasks 6 \\
        --methods finetune,sgd,spp --save-tensors --out runs/pfm6
    python -m benchmarks.analyze runs/pfm6            # writes runs/pfm6/analysis/

Reads the records and the tensors saved after each task (``--save-tensors``), measures EWC, MAS and
SPP importance on the same trained model, compares first- and last-task importance per layer
(Frechet distance), the importance-weighted parameter change, and draws importance / change
heatmaps (see :mod:`benchmarks.analysis`). Writes ``analysis.md``, ``analysis.json`` (every
number, and this command's settings) and the PNGs into ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.analysis import DEFAULT_METHODS, analyze_run
from benchmarks.analysis_measures import FISHER_LABELS
from benchmarks.analysis_numbers import NEAR_ZERO
from benchmarks.analysis_report import write_analysis
from benchmarks.streams import DatasetNotFoundError

log = logging.getLogger("benchmarks.analyze")


@dataclass(frozen=True)
class AnalyzeConfig:
    """Settings of one analysis; saved in ``analysis.json`` as ``"config"``."""

    run_dir: str  # the --out folder of `python -m benchmarks.run --save-tensors`
    out: str  # output folder (default RUN_DIR/analysis)
    methods: tuple[str, ...] = DEFAULT_METHODS  # methods of Figs. 7-8 (those in the run)
    seed: int | None = None  # seed whose tensors are analysed (None: the smallest)
    reference_method: str = "spp"  # whose weights after task 1 Fig. 6 measures
    samples: int | None = None  # samples per importance pass (None: what the SPP plugin used)
    fisher_labels: str = "empirical"  # EWC Fisher: "empirical" (data labels) or "expected"
    near_zero: float = NEAR_ZERO  # "near zero": below this fraction of the maximum
    bins: int = 50  # density bins
    layer: str | None = None  # Fig. 8 layer (None: the last shared weight matrix)
    heatmap_block: int | None = 64  # Fig. 8 shows the first N x N units (None: whole matrix)
    data_root: str | None = None  # data folder, if not the run's
    threads: int | None = None  # torch CPU threads (None: torch's default)
    quiet: bool = False  # warnings only


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.analyze",
        description="Importance distributions, first/last-task similarity, weighted parameter change "
        "and heatmaps (the paper's Figs. 6-8) of a comparison run made with --save-tensors.",
    )
    parser.add_argument("run_dir", help="output folder of `python -m benchmarks.run --save-tensors`")
    parser.add_argument("--out", help="output folder (default RUN_DIR/analysis)")
    parser.add_argument("--methods", help=f"comma list for Figs. 7-8 (default {','.join(DEFAULT_METHODS)})")
    parser.add_argument("--seed", type=int, help="seed whose tensors are analysed (default: smallest)")
    parser.add_argument("--reference-method", help="whose task-1 weights Fig. 6 measures (default spp)")
    parser.add_argument("--samples", type=int, help="samples per importance pass (default: as the run)")
    parser.add_argument("--fisher-labels", choices=FISHER_LABELS, help="EWC Fisher (default empirical)")
    parser.add_argument("--near-zero", type=float, help=f"fraction of the max (default {NEAR_ZERO:g})")
    parser.add_argument("--bins", type=int, help="density bins (default 50)")
    parser.add_argument("--layer", help="Fig. 8 layer, e.g. features.3 (default: last shared layer)")
    parser.add_argument("--heatmap-block", type=int, help="Fig. 8 shows N x N units; 0: all (default 64)")
    parser.add_argument("--data-root", help="data folder, if not the one the run used")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="warnings only")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> AnalyzeConfig:
    """Parse the command line into an :class:`AnalyzeConfig` (errors exit with status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    values = {k: v for k, v in vars(args).items() if v is not None}
    run_dir = Path(values.pop("run_dir"))
    if not run_dir.is_dir():
        parser.error(f"RUN_DIR {run_dir} is not a folder: give the --out folder of benchmarks.run")
    methods = values.pop("methods", None)
    if methods is not None:
        values["methods"] = tuple(m.strip() for m in methods.split(",") if m.strip())
        if not values["methods"]:
            parser.error("--methods: give a comma list of method names, e.g. spp,finetune,sgd")
    for name in ("samples", "bins", "threads"):
        if name in values and values[name] < 1:
            parser.error(f"--{name}: must be a positive int, got {values[name]}")
    if "heatmap_block" in values:
        if values["heatmap_block"] < 0:
            parser.error("--heatmap-block: must be >= 0 (0 shows the whole matrix)")
        values["heatmap_block"] = values["heatmap_block"] or None
    if "near_zero" in values and not 0 < values["near_zero"] < 1:
        parser.error(f"--near-zero: must be a fraction of the maximum in (0, 1), got {values['near_zero']}")
    out = values.pop("out", None) or str(run_dir / "analysis")
    return AnalyzeConfig(run_dir=str(run_dir), out=out, **values)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if config.quiet else logging.INFO, format="%(message)s")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        analysis = analyze_run(
            config.run_dir,
            methods=config.methods,
            seed=config.seed,
            reference_method=config.reference_method,
            samples=config.samples,
            fisher_labels=config.fisher_labels,
            near_zero=config.near_zero,
            bins=config.bins,
            layer=config.layer,
            data_root=config.data_root,
        )
    except (ValueError, DatasetNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    arguments = sys.argv[1:] if argv is None else list(argv)
    command = "python -m benchmarks.analyze " + " ".join(shlex.quote(a) for a in arguments)
    paths = write_analysis(
        config.out, analysis, command=command, config=asdict(config), heatmap_block=config.heatmap_block
    )
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
