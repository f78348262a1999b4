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

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from avalanche_spp.errors import CheckpointMismatchError, DatasetCorruptError
from avalanche_spp.importance import (
    DEFAULT_CLAMP,
    DEFAULT_FISHER,
    DEFAULT_SCALE,
    DEFAULT_TAYLOR_OF,
    SCALES,
    TAYLOR_OF,
    DivergedError,
)
from benchmarks.baselines import METHODS, STRENGTH_GRIDS, STRENGTH_NAMES, TrainConfig
from benchmarks.experiment import TensorSaver, run_method, tune_strength
from benchmarks.report import markdown_table, read_json, summarize, write_json, write_report
from benchmarks.streams import (
    DatasetNotFoundError,
    available_benchmarks,
    benchmark_info,
    check_benchmark_options,
)

log = logging.getLogger("benchmarks.run")


@dataclass(frozen=True)
class RunConfig:
    """Everything a comparison depends on; saved as ``config.json`` in the output folder."""

    benchmark: str = "split_digits"  # registry name
    methods: tuple[str, ...] = METHODS  # methods to compare
    seeds: tuple[int, ...] = (0,)  # final seeds, evaluated on the test split
    out: str = "runs/comparison"  # output folder
    epochs: int = 5  # passes over each experience
    batch_size: int = 64  # training mini-batch
    lr: float = 0.01  # learning rate
    momentum: float = 0.9  # SGD momentum
    optimizer: str = "sgd"  # "sgd" or "adam"
    hidden: tuple[int, ...] = (512, 256)  # MLP hidden widths
    dropout: float | None = None  # dropout (None: the model's default; MLP 0, CNN heads 0.5)
    device: str = "cpu"  # torch device
    data_root: str | None = None  # data folder of file-based benchmarks
    n_tasks: int | None = None  # sequence length (None: the benchmark's)
    train_limit: int | None = None  # training samples per task (None: all)
    eval_limit: int | None = None  # evaluation samples per task (None: all)
    image_size: int | None = None  # image benchmarks: pixels per side (None: the paper's 32 or 224)
    strengths: tuple[tuple[str, float], ...] = ()  # fixed strengths (no tuning for these)
    grids: tuple[tuple[str, tuple[float, ...]], ...] = ()  # grids replacing the defaults
    tune: bool = True  # tune strengths on validation
    tune_seed: int = 0  # seed of the tuning runs
    spp_fisher: str = DEFAULT_FISHER  # SPP options (see SPPPlugin)
    spp_scale: str = DEFAULT_SCALE
    spp_taylor_of: str = DEFAULT_TAYLOR_OF
    spp_clamp: str = DEFAULT_CLAMP
    spp_normalize: str | None = None
    spp_accumulate: str = "sum"
    spp_importance_samples: int | None = None
    spp_curvature_cap: float | None = None  # not in the paper: cap lam*Omega for SGD stability
    save_tensors: bool = False  # keep weights and importances after each task (benchmarks.analyze)
    threads: int | None = None  # torch threads (None: torch's default)
    quiet: bool = False  # no progress bars
    force: bool = False  # overwrite existing results
    resume: bool = False  # skip runs whose JSON exists

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            optimizer=self.optimizer,
            hidden=self.hidden,
            dropout=self.dropout,
            device=self.device,
            spp_fisher=self.spp_fisher,
            spp_scale=self.spp_scale,
            spp_taylor_of=self.spp_taylor_of,
            spp_clamp=self.spp_clamp,
            spp_normalize=self.spp_normalize,
            spp_accumulate=self.spp_accumulate,
            spp_importance_samples=self.spp_importance_samples,
            spp_curvature_cap=self.spp_curvature_cap,
        )

    def benchmark_options(self) -> dict[str, int]:
        options = {
            "train_limit": self.train_limit,
            "eval_limit": self.eval_limit,
            "image_size": self.image_size,
        }
        return {k: v for k, v in options.items() if v is not None}

    def grid(self, method: str) -> tuple[float, ...]:
        return dict(self.grids).get(method, STRENGTH_GRIDS[method])


# Settings that change results: a resumed run must match them.
_RESULT_FIELDS = tuple(
    f.name for f in fields(RunConfig) if f.name not in ("out", "quiet", "force", "resume", "threads", "seeds")
)


def parse_args(argv: Sequence[str] | None = None) -> RunConfig:
    """Parse the command line (and an optional ``--config`` JSON file) into a :class:`RunConfig`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    if args.config is not None:
        values.update(_read_config_file(parser, args.config))
    explicit = {k: v for k, v in vars(args).items() if v is not None and k != "config"}
    values.update(explicit)
    return _to_config(parser, values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Compare SPP with SGD, SGD-F, fine-tuning, EWC, SI, MAS, LwF and joint training. "
        "With no option: the README's Quickstart comparison (" + " ".join(QUICKSTART_ARGS) + ").",
    )
    parser.add_argument("--benchmark", help=f"one of {available_benchmarks()} (default split_digits)")
    parser.add_argument("--methods", help="'all' or a comma list of " + ",".join(METHODS))
    parser.add_argument("--seeds", type=int, help="number of final seeds: 0 .. N-1 (default 1)")
    parser.add_argument("--seed-list", help="explicit comma list of seeds (instead of --seeds)")
    parser.add_argument("--out", help="output folder (default runs/<benchmark>)")
    parser.add_argument("--config", help="JSON file with any of the settings below (flags override it)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--momentum", type=float)
    parser.add_argument("--optimizer", choices=("sgd", "adam"))
    parser.add_argument("--hidden", help="comma list of MLP hidden widths (default 512,256)")
    parser.add_argument("--dropout", type=float)
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--data-root", help="folder of file-based data sets (see docs/datasets.md)")
    parser.add_argument("--n-tasks", type=int)
    parser.add_argument("--train-limit", type=int, help="training samples per task")
    parser.add_argument("--eval-limit", type=int, help="evaluation samples per task")
    parser.add_argument(
        "--image-size",
        type=int,
        help="image benchmarks only: side of the square images, the network built for it "
        "(default: the paper's, 32 or 224; minimum 8 for VGG-9, 32 for ResNet-18)",
    )
    parser.add_argument(
        "--strength",
        action="append",
        metavar="METHOD=VALUE",
        help="fix a method's strength instead of tuning it (repeatable), e.g. spp=100",
    )
    parser.add_argument("--lam", type=float, help="shorthand for --strength spp=VALUE")
    parser.add_argument(
        "--grid", action="append", metavar="METHOD=V1,V2,...", help="replace a method's tuning grid"
    )
    parser.add_argument("--no-tune", dest="tune", action="store_const", const=False, help="use defaults")
    parser.add_argument("--tune-seed", type=int)
    parser.add_argument("--spp-fisher", choices=("per_sample", "batch"))
    parser.add_argument("--spp-scale", choices=SCALES, help=f"default {DEFAULT_SCALE}")
    parser.add_argument("--spp-taylor-of", choices=TAYLOR_OF, help=f"default {DEFAULT_TAYLOR_OF}")
    parser.add_argument(
        "--spp-clamp", choices=("experience", "batch", "sample"), help=f"default {DEFAULT_CLAMP}"
    )
    parser.add_argument("--spp-normalize", choices=("none", "max", "softmax"))
    parser.add_argument("--spp-accumulate", choices=("sum", "max"))
    parser.add_argument("--spp-importance-samples", type=int)
    parser.add_argument(
        "--spp-curvature-cap",
        type=float,
        help="not in the paper: clip each lam*Omega to CAP*(1+momentum)/lr, CAP in (0, 1] (SGD only)",
    )
    parser.add_argument("--save-tensors", action="store_const", const=True)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_const", const=True, help="no progress output")
    parser.add_argument("--force", action="store_const", const=True, help="overwrite existing results")
    parser.add_argument("--resume", action="store_const", const=True, help="skip finished runs")
    return parser


def _read_config_file(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        parser.error(f"--config {path}: no such file")
    except json.JSONDecodeError as error:
        parser.error(f"--config {path}: not valid JSON ({error})")
    if not isinstance(data, dict):
        parser.error(f"--config {path}: must hold a JSON object of settings")
    known = {f.name for f in fields(RunConfig)} | {"seed_list", "lam", "strength", "grid"}
    unknown = sorted(set(data) - known)
    if unknown:
        parser.error(f"--config {path}: unknown settings {unknown}; known: {sorted(known)}")
    return data


def _to_config(parser: argparse.ArgumentParser, values: dict[str, Any]) -> RunConfig:
    _check_setting_types(parser, values)
    benchmark = values.get("benchmark", RunConfig.benchmark)
    if benchmark not in available_benchmarks():
        parser.error(f"--benchmark must be one of {available_benchmarks()}, got {benchmark!r}")
    methods = values.get("methods", "all")
    if isinstance(methods, str):
        methods = METHODS if methods == "all" else tuple(m.strip() for m in methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"--methods: unknown {unknown}; use 'all' or a comma list of {list(METHODS)}")
    if "seed_list" in values:
        seeds = _parse_numbers(parser, "--seed-list", values.pop("seed_list"), int)
    else:
        count = values.get("seeds", 1)
        if isinstance(count, (list, tuple)):
            seeds = tuple(int(s) for s in count)
        elif not isinstance(count, int) or count < 1:
            parser.error(f"--seeds must be a positive number of seeds, got {count!r}")
        else:
            seeds = tuple(range(count))
    strengths = dict(values.get("strengths", ()))
    for item in values.pop("strength", None) or ():
        method, _, value = item.partition("=")
        if method not in STRENGTH_NAMES or not value:
            parser.error(f"--strength {item!r}: use METHOD=VALUE with METHOD in {list(STRENGTH_NAMES)}")
        strengths[method] = _parse_numbers(parser, "--strength", value, float)[0]
    if values.get("lam") is not None:
        strengths["spp"] = float(values.pop("lam"))
    for method, value in strengths.items():
        if method not in STRENGTH_NAMES:
            parser.error(f"strengths: {method!r} has no strength; methods with one: {list(STRENGTH_NAMES)}")
        if not _is_number(value) or not value >= 0 or value == float("inf"):
            parser.error(f"the strength of {method} must be a finite number >= 0, got {value!r}")
    given_grids = values.get("grids", ())
    given_grids = given_grids.items() if isinstance(given_grids, dict) else given_grids
    grids = dict((k, tuple(v)) for k, v in given_grids)
    for method, grid in grids.items():
        if method not in STRENGTH_NAMES or not grid or not all(_is_number(v) and v >= 0 for v in grid):
            parser.error(f"grids: {method}={list(grid)!r}: use METHOD: [V1, ...] with numbers >= 0 and "
                         f"METHOD in {list(STRENGTH_NAMES)}")
    for item in values.pop("grid", None) or ():
        method, _, listed = item.partition("=")
        if method not in STRENGTH_NAMES or not listed:
            parser.error(f"--grid {item!r}: use METHOD=V1,V2 with METHOD in {list(STRENGTH_NAMES)}")
        grids[method] = _parse_numbers(parser, "--grid", listed, float)
        if any(not 0 <= v < float("inf") for v in grids[method]):
            parser.error(f"--grid {item!r}: strengths must be finite numbers >= 0")
    try:  # the task count and the image size must suit the benchmark and its network
        benchmark_info(benchmark, n_tasks=values.get("n_tasks"))
    except ValueError as error:
        parser.error(f"--n-tasks: {error}")
    try:
        benchmark_info(benchmark, image_size=values.get("image_size"))
    except ValueError as error:
        parser.error(f"--image-size: {error}")
    limits = {k: values[k] for k in ("train_limit", "eval_limit") if values.get(k) is not None}
    try:  # before any training: a bad limit must not fail after the first runs
        check_benchmark_options(benchmark, n_tasks=values.get("n_tasks"), **limits)
    except ValueError as error:
        parser.error(str(error))
    hidden = values.get("hidden", RunConfig.hidden)
    if isinstance(hidden, str):
        hidden = _parse_numbers(parser, "--hidden", hidden, int)
    normalize = values.get("spp_normalize")
    settings = {
        **values,
        "benchmark": benchmark,
        "methods": tuple(methods),
        "seeds": tuple(seeds),
        "strengths": tuple(sorted(strengths.items())),
        "grids": tuple(sorted(grids.items())),
        "hidden": tuple(int(h) for h in hidden),
        "spp_normalize": None if normalize in (None, "none") else normalize,
        "out": values.get("out") or f"runs/{benchmark}",
    }
    for key in ("tune", "save_tensors", "quiet", "force", "resume"):
        settings[key] = bool(settings.get(key, getattr(RunConfig, key)))
    if not all(0 <= seed < 2**32 for seed in settings["seeds"]):
        parser.error(f"seeds must be ints in [0, 2**32), got {list(settings['seeds'])}")
    if settings.get("threads") is not None and settings["threads"] < 1:
        parser.error(f"--threads must be a positive number of CPU threads, got {settings['threads']}")
    if settings.get("tune_seed") is not None and not 0 <= settings["tune_seed"] < 2**32:
        parser.error(f"--tune-seed must be an int in [0, 2**32), got {settings['tune_seed']}")
    if Path(settings["out"]).exists() and not Path(settings["out"]).is_dir():
        parser.error(f"--out {settings['out']} is a file; give a folder")
    device = settings.get("device", RunConfig.device)
    if isinstance(device, str) and device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {device}: torch.cuda.is_available() is False on this machine; use cpu")
    names = {f.name for f in fields(RunConfig)}
    config = RunConfig(**{k: v for k, v in settings.items() if k in names})
    try:
        config.train_config()  # validates the training budget
    except ValueError as error:
        parser.error(str(error))
    return config


# JSON types of the settings a --config file may hold (flags are typed by argparse already).
_BOOL_SETTINGS = ("tune", "save_tensors", "quiet", "force", "resume")
_INT_SETTINGS = (
    "epochs", "batch_size", "n_tasks", "train_limit", "eval_limit", "image_size",
    "spp_importance_samples", "threads", "tune_seed",
)  # fmt: skip
_NUMBER_SETTINGS = ("lr", "momentum", "dropout", "lam", "spp_curvature_cap")
_TEXT_SETTINGS = (
    "benchmark", "out", "device", "data_root", "optimizer",
    "spp_fisher", "spp_scale", "spp_taylor_of", "spp_clamp", "spp_normalize", "spp_accumulate",
)  # fmt: skip
_LIST_SETTINGS = ("methods", "hidden", "seed_list", "strength", "grid")  # a comma string or a list


def _check_setting_types(parser: argparse.ArgumentParser, values: dict[str, Any]) -> None:
    """Refuse a setting of the wrong type (a ``--config`` file may hold any JSON value)."""
    for key, value in values.items():
        expected = None
        if key in _BOOL_SETTINGS and not isinstance(value, bool):
            expected = "true or false"
        elif key in _INT_SETTINGS and value is not None and not _is_int(value):
            expected = "an integer (or null)"
        elif key in _NUMBER_SETTINGS and value is not None and not _is_number(value):
            expected = "a number"
        elif key in _TEXT_SETTINGS and value is not None and not isinstance(value, str):
            expected = "a string (or null)"
        elif key in _LIST_SETTINGS and not (
            isinstance(value, str)
            or isinstance(value, (list, tuple)) and all(isinstance(v, str) or _is_number(v) for v in value)
        ):
            expected = "a comma-separated string or a list"
        elif key == "seeds" and not (
            _is_int(value) or isinstance(value, (list, tuple)) and value and all(_is_int(v) for v in value)
        ):
            expected = "a number of seeds or a non-empty list of int seeds"
        elif key in ("strengths", "grids") and not (
            isinstance(value, dict)
            or isinstance(value, (list, tuple))
            and all(isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], str) for v in value)
        ):
            expected = "an object {METHOD: value} or a list of [METHOD, value] pairs"
        if expected is not None:
            parser.error(f"{key} must be {expected}, got {value!r}")
    for key in ("strength", "grid"):  # one METHOD=... string in a config file is a list of one
        if isinstance(values.get(key), str):
            values[key] = [values[key]]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_numbers(parser: argparse.ArgumentParser, flag: str, text: Any, kind: type) -> tuple:
    if isinstance(text, (list, tuple)):
        return tuple(kind(v) for v in text)
    try:
        return tuple(kind(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        parser.error(f"{flag}: expected a comma list of {kind.__name__} values, got {text!r}")
        raise  # unreachable: parser.error exits


# Errors that end a comparison with a one-line message and exit status 2 (no traceback).
CLI_ERRORS = (
    DatasetNotFoundError, DatasetCorruptError, FileExistsError, CheckpointMismatchError, DivergedError,
)  # fmt: skip


#: ``python -m benchmarks.run`` with no option runs the README's Quickstart comparison: split digits,
#: all nine methods, one seed, strengths tuned on validation, into runs/quickstart (overwritten).
QUICKSTART_ARGS = (
    "--benchmark", "split_digits", "--methods", "all", "--seeds", "1", "--lr", "0.1",
    "--hidden", "256,128", "--out", "runs/quickstart", "--force",
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
        changed = [k for k in _RESULT_FIELDS if previous.get(k) != current.get(k)]
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
