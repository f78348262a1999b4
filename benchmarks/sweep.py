"""SPP's robustness to its strength (the paper's Fig. 4): ACC, BWT and FWT over a lambda range.

    python -m benchmarks.sweep --benchmark split_fmnist --method spp --lams 0,1,10,100,1000,10000 \
        --seeds 1 --out runs/sweep_fmnist

This is an analysis of sensitivity, not a tuning step: it runs on the test split by default
(``--split validation`` for the validation split) and picks nothing. A ``joint`` run per seed gives
FWT's reference accuracies. Writes one JSON per run, ``sweep.json`` (means per lambda), and
``sweep.md`` with a table and ``lambda_sweep.png``. A folder that already holds results is refused
unless ``--resume`` (skip the runs whose JSON exists) or ``--force`` (delete them and start over).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from avalanche_spp.importance import TAYLOR_OF, DivergedError
from benchmarks.baselines import STRENGTH_NAMES, TrainConfig
from benchmarks.errors import DatasetCorruptError
from benchmarks.experiment import run_method
from benchmarks.plots import plot_lambda_sweep
from benchmarks.records import read_json, write_json
from benchmarks.streams import DatasetNotFoundError, available_benchmarks, check_benchmark_options

log = logging.getLogger("benchmarks.sweep")


@dataclass(frozen=True)
class SweepConfig:
    benchmark: str = "split_digits"  # registry name
    method: str = "spp"  # a method with a strength
    lams: tuple[float, ...] = (0.0, 1.0, 10.0, 100.0, 1000.0, 10000.0)  # strengths to run
    seeds: tuple[int, ...] = (0,)  # seeds
    split: str = "test"  # "test" or "validation"
    out: str = "runs/sweep"  # output folder
    train: TrainConfig = TrainConfig()  # shared budget
    data_root: str | None = None
    n_tasks: int | None = None
    train_limit: int | None = None
    eval_limit: int | None = None
    quiet: bool = False
    resume: bool = False  # skip runs whose JSON exists
    force: bool = False  # delete the results already in `out` and start over


def parse_args(argv: Sequence[str] | None = None) -> SweepConfig:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__)
    parser.add_argument("--benchmark", default="split_digits", choices=available_benchmarks())
    parser.add_argument("--method", default="spp", choices=sorted(STRENGTH_NAMES))
    parser.add_argument("--lams", default="0,1,10,100,1000,10000", help="comma list of strengths")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--split", default="test", choices=("test", "validation"))
    parser.add_argument("--out", default=None)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--momentum", type=float, default=TrainConfig.momentum)
    parser.add_argument("--optimizer", default=TrainConfig.optimizer, choices=("sgd", "adam"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--taylor-of",
        default=TrainConfig.spp_taylor_of,
        choices=TAYLOR_OF,
        help="SPP's Taylor estimate (see SPPPlugin's taylor_of)",
    )
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--n-tasks", type=int, default=None)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--eval-limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quiet", action="store_true")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="skip the runs whose JSON exists in --out")
    mode.add_argument("--force", action="store_true", help="delete the results in --out and start over")
    args = parser.parse_args(argv)
    try:
        lams = tuple(float(v) for v in args.lams.split(",") if v.strip())
    except ValueError:
        parser.error(f"--lams must be a comma list of numbers, got {args.lams!r}")
    if not lams or any(not (v >= 0 and np.isfinite(v)) for v in lams):
        parser.error(f"--lams must be finite numbers >= 0, got {args.lams!r}")
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be a positive number of CPU threads, got {args.threads}")
    limits = {"train_limit": args.train_limit, "eval_limit": args.eval_limit}
    try:  # refused now rather than after the first runs
        check_benchmark_options(
            args.benchmark, n_tasks=args.n_tasks, **{k: v for k, v in limits.items() if v is not None}
        )
    except ValueError as error:
        parser.error(str(error))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch.cuda.is_available() is False on this machine; use cpu")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        train = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            momentum=args.momentum,
            optimizer=args.optimizer,
            device=args.device,
            spp_taylor_of=args.taylor_of,
        )
    except ValueError as error:
        parser.error(str(error))
    return SweepConfig(
        benchmark=args.benchmark,
        method=args.method,
        lams=lams,
        seeds=tuple(range(args.seeds)),
        split=args.split,
        out=args.out or f"runs/sweep_{args.benchmark}_{args.method}",
        train=train,
        data_root=args.data_root,
        n_tasks=args.n_tasks,
        train_limit=args.train_limit,
        eval_limit=args.eval_limit,
        quiet=args.quiet,
        resume=args.resume,
        force=args.force,
    )


def run_sweep(config: SweepConfig) -> list[dict[str, float | None]]:
    """Run every strength for every seed; returns one row of mean metrics per strength."""
    out = Path(config.out)
    options = {"train_limit": config.train_limit, "eval_limit": config.eval_limit}
    common = {
        "benchmark": config.benchmark,
        "train": config.train,
        "split": config.split,
        "data_root": config.data_root,
        "n_tasks": config.n_tasks,
        "benchmark_options": {k: v for k, v in options.items() if v is not None},
        "progress": not config.quiet,
    }

    def cached(path: Path, method: str, **kwargs) -> dict | None:
        if config.resume and path.exists():
            return read_json(path)
        try:
            record = run_method(method, **common, **kwargs)
        except DivergedError as error:
            log.warning("%s diverged: %s", path.name, error)
            return None
        write_json(path, record)
        return record

    per_lam: dict[float, list[dict]] = {lam: [] for lam in config.lams}
    for seed in config.seeds:
        joint = cached(out / "runs" / f"joint_seed{seed}.json", "joint", seed=seed)
        for lam in config.lams:
            log.info("%s lam=%g seed=%d", config.method, lam, seed)
            record = cached(
                out / "runs" / f"{config.method}_{lam:g}_seed{seed}.json",
                config.method,
                seed=seed,
                strength=lam,
                joint_accuracies=None if joint is None else joint["joint_accuracies"],  # None: diverged
            )
            if record is not None:
                per_lam[lam].append(record["metrics"])
    rows = []
    for lam, metrics in per_lam.items():
        row: dict[str, float | None] = {"lam": lam, "n": len(metrics)}
        for key in ("acc", "bwt", "fwt", "smt"):
            values = [m[key] for m in metrics if m[key] is not None]
            row[key] = float(np.mean(values)) if values else None
            row[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def plateau(rows: Sequence[dict], tolerance: float = 0.005) -> dict[str, float] | None:
    """The strengths whose mean ACC is within ``tolerance`` (0.5 points) of the best, around the best.

    Only ``lam > 0`` counts, and the range is the contiguous run of strengths (in increasing order)
    around the best one: a diverged strength (no finished run) or one below the threshold ends it.

    Returns:
        ``{"best_lam", "best_acc", "low", "high", "decades"}`` (``decades = log10(high / low)``), or
        ``None`` when no positive strength finished.
    """
    ordered = sorted((r for r in rows if r["lam"] > 0), key=lambda r: r["lam"])
    finished = [r for r in ordered if r["acc"] is not None]
    if not finished:
        return None
    best = max(finished, key=lambda r: r["acc"])
    index = ordered.index(best)
    inside = [r["acc"] is not None and r["acc"] >= best["acc"] - tolerance for r in ordered]
    low = high = index
    while low > 0 and inside[low - 1]:
        low -= 1
    while high < len(ordered) - 1 and inside[high + 1]:
        high += 1
    lo, hi = ordered[low]["lam"], ordered[high]["lam"]
    return {"best_lam": best["lam"], "best_acc": best["acc"], "low": lo, "high": hi,
            "decades": float(np.log10(hi / lo))}  # fmt: skip


def write_sweep(config: SweepConfig, rows: list[dict], command: str | None = None) -> Path:
    out = Path(config.out)
    flat = plateau(rows)
    command = command or "python -m benchmarks.sweep " + " ".join(sys.argv[1:])
    write_json(
        out / "sweep.json", {"config": asdict(config), "rows": rows, "plateau": flat, "command": command}
    )
    finished = [r for r in rows if r["acc"] is not None]
    if finished:
        plot_lambda_sweep(finished, out / "lambda_sweep.png")
    lines = [
        f"# {config.method} strength sweep on {config.benchmark} ({config.split} split)",
        "",
        f"Command: `{command}`",
        "",
        f"Seeds: {list(config.seeds)}; numbers in percent, mean over seeds; raw data: `sweep.json`.",
        "",
        "| lambda | ACC (%) | BWT (%) | FWT (%) | n |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        cells = ["diverged" if r[k] is None else f"{100 * r[k]:.2f}" for k in ("acc", "bwt", "fwt")]
        lines.append(f"| {r['lam']:g} | " + " | ".join(cells) + f" | {r['n']} |")
    if flat is not None:
        lines += [
            "",
            f"Plateau (mean ACC within 0.5 points of the best, {100 * flat['best_acc']:.2f} at lambda "
            f"{flat['best_lam']:g}): lambda {flat['low']:g} to {flat['high']:g}, "
            f"{flat['decades']:.2f} decades.",
        ]
    if finished:
        lines += ["", "Figure: `lambda_sweep.png` beside this file (ACC above, BWT and FWT below)."]
    path = out / "sweep.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def prepare_output(config: SweepConfig) -> None:
    """Refuse an output folder holding results unless ``resume`` or ``force`` (which deletes them).

    Raises:
        FileExistsError: results present and neither ``resume`` nor ``force``.
    """
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give a folder")
    results = sorted(out.glob("runs/*.json")) + [p for p in (out / "sweep.json",) if p.exists()]
    if results and config.force:
        for path in [*results, out / "sweep.md", out / "lambda_sweep.png"]:
            path.unlink(missing_ok=True)
    elif results and not config.resume:
        raise FileExistsError(
            f"{out} already holds results ({len(results)} files). Pass --resume to continue it, "
            "--force to overwrite it, or choose another --out."
        )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if config.quiet else logging.INFO, format="%(message)s")
    try:
        prepare_output(config)
        rows = run_sweep(config)
    except (DatasetNotFoundError, DatasetCorruptError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"sweep written to {write_sweep(config, rows)}")
    flat = plateau(rows)
    if flat is not None:
        print(f"plateau (ACC within 0.5 points of the best): lambda {flat['low']:g} to {flat['high']:g}, "
              f"{flat['decades']:.2f} decades")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
