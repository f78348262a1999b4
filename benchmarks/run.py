"""Compare SPP with the classic continual-learning baselines on one benchmark.

    python -m benchmarks.run --benchmark split_digits --methods all --seeds 1 --out runs/digits

For each method with a strength (EWC, SI, MAS, LwF, SPP) the strength is tuned on the validation
split (carved from the training data, never the test set) over a documented grid, unless given
with ``--strength METHOD=VALUE``. Then every method runs on the test split for each seed. Each run
writes one JSON record; the folder gets ``report.md`` with the paper-style table and PNG plots.

A killed comparison continues with the same command plus ``--resume``: runs whose JSON exists are
skipped, and an unfinished run continues from its checkpoint in ``<out>/checkpoints/`` (written
after every experience, removed when the run ends), so it ends with the numbers an uninterrupted
run would have given.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from avalanche_spp.importance import (
    DivergedError,
)
from benchmarks.baselines import STRENGTH_NAMES, TrainConfig
from benchmarks.errors import CheckpointMismatchError, DatasetCorruptError
from benchmarks.experiment import TensorSaver, run_method, tune_strength
from benchmarks.records import read_json, summarize, write_json
from benchmarks.report import markdown_table, write_report
from benchmarks.run_config import _RESULT_FIELDS, QUICKSTART_ARGS, RunConfig, parse_args
from benchmarks.streams import (
    DatasetNotFoundError,
)

log = logging.getLogger("benchmarks.run")


# Errors that end a comparison with a one-line message and exit status 2 (no traceback).
CLI_ERRORS = (
    DatasetNotFoundError, DatasetCorruptError, FileExistsError, CheckpointMismatchError, DivergedError,
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = list(QUICKSTART_ARGS)
        print("no option: the Quickstart comparison, python -m benchmarks.run " + " ".join(argv), flush=True)
    config = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if config.quiet else logging.INFO, format="%(message)s")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    out = Path(config.out)
    try:
        _prepare_output(out, config)
        records = run_comparison(config, out)
        checkpoints = out / "checkpoints"
        if checkpoints.is_dir() and not any(checkpoints.iterdir()):
            checkpoints.rmdir()  # every run finished: its checkpoint was removed
    except CLI_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in argv)
    sweep_rows = _sweep_rows(out, "spp")
    report = write_report(
        out,
        records,
        title=f"{config.benchmark}: SPP and baselines",
        sweep_rows=sweep_rows or None,
        notes=_notes(config, out, records),
        command=command,
    )
    print(markdown_table(summarize(records)), end="")  # the result, also with --quiet
    print(f"report: {report}")
    return 0


def run_comparison(config: RunConfig, out: Path) -> list[dict[str, Any]]:
    """Tune, then run every method for every seed; returns the final (test) records."""
    train = config.train_config()
    strengths = dict(config.strengths)
    for method in config.methods:
        if method in STRENGTH_NAMES and method not in strengths:
            if config.tune:
                strengths[method] = _tune(config, train, method, out)
            else:
                strengths[method] = None
    records = []
    for seed in config.seeds:
        joint = None
        ordered = sorted(config.methods, key=lambda m: m != "joint")  # joint first: its m_i feed FWT
        for method in ordered:
            path = out / "runs" / f"{method}_seed{seed}.json"
            if config.resume and path.exists():
                record = read_json(path)
                log.info("resume: %s exists, skipped", path)
            else:
                log.info("run %s seed %d (strength %s)", method, seed, strengths.get(method))
                saver = TensorSaver(out / "tensors" / f"{method}_seed{seed}") if config.save_tensors else None
                record = run_method(
                    method,
                    benchmark=config.benchmark,
                    seed=seed,
                    train=train,
                    strength=strengths.get(method),
                    split="test",
                    data_root=config.data_root,
                    n_tasks=config.n_tasks,
                    benchmark_options=config.benchmark_options(),
                    joint_accuracies=joint,
                    progress=not config.quiet,
                    on_task_end=saver,
                    checkpoint=out / "checkpoints" / f"{method}_seed{seed}.pt",
                    on_divergence="record",
                )
                write_json(path, record)
            if method == "joint":
                joint = record["joint_accuracies"]
            records.append(record)
        if "joint" not in config.methods:
            log.info("no joint run: FWT is n/a (add joint to --methods)")
    return records


def _tune(config: RunConfig, train: TrainConfig, method: str, out: Path) -> float | None:
    grid = config.grid(method)
    rows = []

    def evaluate(strength: float) -> dict[str, Any]:
        path = out / "tuning" / f"{method}_{strength:g}.json"
        if config.resume and path.exists():
            return read_json(path)
        checkpoint = out / "checkpoints" / f"tuning_{method}_{strength:g}.pt"
        try:
            record = run_method(
                method,
                benchmark=config.benchmark,
                seed=config.tune_seed,
                train=train,
                strength=strength,
                split="validation",
                data_root=config.data_root,
                n_tasks=config.n_tasks,
                benchmark_options=config.benchmark_options(),
                progress=not config.quiet,
                checkpoint=checkpoint,
            )
        except DivergedError:
            checkpoint.unlink(missing_ok=True)  # a diverged run is recorded in the summary only
            raise
        write_json(path, record)
        return record

    best, rows = tune_strength(grid, evaluate)
    log.info("tuned %s on validation: %s -> %s", method, [(r["strength"], r["acc"]) for r in rows], best)
    write_json(out / "tuning" / f"{method}_summary.json", {"method": method, "rows": rows, "best": best})
    return best


def _sweep_rows(out: Path, method: str) -> list[dict[str, Any]]:
    path = out / "tuning" / f"{method}_summary.json"
    if not path.exists():
        return []
    rows = read_json(path)["rows"]
    return [
        {"lam": r["strength"], "acc": r["acc"], "bwt": r["bwt"], "fwt": r["fwt"]}
        for r in rows
        if r.get("acc") is not None
    ]


def _notes(config: RunConfig, out: Path, records: Sequence[dict[str, Any]] = ()) -> str:
    lines = [
        "Strengths were tuned on the validation split (carved from the training data) with seed "
        f"{config.tune_seed}; the table reports the test split.",
    ]
    for method in config.methods:
        path = out / "tuning" / f"{method}_summary.json"
        if path.exists():
            summary = read_json(path)
            cells = ", ".join(f"{r['strength']:g}: {_cell(r)}" for r in summary["rows"])
            lines.append(f"- {method} validation ACC (%) by strength: {cells}; chosen {summary['best']}")
    lines.append("The lambda plot shows SPP's validation ACC/BWT/FWT over its tuning grid.")
    diverged = [r for r in records if r.get("diverged_at_task") is not None]
    for r in diverged:
        lines.append(
            f"- **{r['method']} seed {r['seed']} diverged** on task {r['diverged_at_task']} at its tuned "
            f"strength {r['strength']:g} (non-finite weights); it is kept in the mean with the "
            "accuracies of the diverged model, which are at chance level."
        )
    return "\n".join(lines)


def _cell(row: dict[str, Any]) -> str:
    if row.get("acc") is not None:
        return f"{100 * row['acc']:.1f}"
    return "skipped (a smaller strength diverged)" if row.get("status") == "skipped" else "diverged"


def _prepare_output(out: Path, config: RunConfig) -> None:
    saved = out / "config.json"
    if config.force and config.resume:
        raise FileExistsError("give either --resume (continue) or --force (start over), not both")
    has_results = (
        any(out.glob("runs/*.json")) or any(out.glob("tuning/*.json")) or any(out.glob("checkpoints/*.pt"))
    )
    if has_results and not (config.force or config.resume):
        raise FileExistsError(
            f"{out} already holds results. Pass --resume to continue it, --force to overwrite it, "
            "or choose another --out."
        )
    if config.resume and saved.exists():
        previous = read_json(saved)
        current = json.loads(json.dumps(asdict(config)))
        default = json.loads(json.dumps(asdict(RunConfig())))  # for a setting added since it was saved
        changed = [k for k in _RESULT_FIELDS if previous.get(k, default[k]) != current.get(k)]
        if changed:
            raise FileExistsError(
                f"--resume: {out} was made with different settings ({changed}); "
                "use the same settings, or --force to start over."
            )
    if config.force:
        stale = list(out.glob("runs/*.json")) + list(out.glob("tuning/*.json"))
        for path in stale + list(out.glob("checkpoints/*.pt")) + list(out.glob("checkpoints/*.tmp")):
            path.unlink()
    write_json(saved, asdict(config))


if __name__ == "__main__":
    sys.exit(main())
