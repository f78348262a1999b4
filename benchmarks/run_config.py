"""The settings of ``python -m benchmarks.run``: :class:`RunConfig`, its flags and its JSON file.

:func:`parse_args` reads the command line (and an optional ``--config`` JSON file, whose settings
the flags override) and checks every setting before anything trains; a bad one exits with code 2
and a message that names it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from avalanche_spp.importance import (
    DEFAULT_CLAMP,
    DEFAULT_FISHER,
    DEFAULT_SCALE,
    DEFAULT_TAYLOR_OF,
    SCALES,
    TAYLOR_OF,
)
from benchmarks.baselines import METHODS, STRENGTH_GRIDS, STRENGTH_NAMES, TrainConfig
from benchmarks.streams import (
    available_benchmarks,
    benchmark_info,
    check_benchmark_options,
)

#: ``python -m benchmarks.run`` with no option runs the README's Quickstart comparison: split digits,
#: all nine methods, one seed, strengths tuned on validation, into runs/quickstart (overwritten).
QUICKSTART_ARGS = (
    "--benchmark", "split_digits", "--methods", "all", "--seeds", "3", "--lr", "0.1", "--epochs", "20",
    "--hidden", "256,128", "--out", "runs/quickstart", "--force",
)  # fmt: skip


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
    keep_optimizer_state: bool = False  # Avalanche's default (True) instead of a fresh state per task
    single_head: bool = False  # one head shared by every task, for every method (domain-incremental)
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
            reset_optimizer=not self.keep_optimizer_state,
            single_head=self.single_head,
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
    parser.add_argument(
        "--keep-optimizer-state", action="store_const", const=True,
        help="keep momentum / Adam's moments from one task to the next (Avalanche's default); "
        "without it every method starts each task with a fresh optimiser state",
    )  # fmt: skip
    parser.add_argument(
        "--single-head", action="store_const", const=True,
        help="one output head shared by every task, for every method (domain-incremental: the tasks share "
        "their labels); without it every method but sgd gets one head per task",
    )  # fmt: skip
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
    """Check every setting (``parser.error`` names the bad one) and build the :class:`RunConfig`."""
    _check_setting_types(parser, values)
    benchmark = values.get("benchmark", RunConfig.benchmark)
    if benchmark not in available_benchmarks():
        parser.error(f"--benchmark must be one of {available_benchmarks()}, got {benchmark!r}")
    methods = _methods(parser, values.get("methods", "all"))
    seeds = _seeds(parser, values)
    strengths = _strengths(parser, values)
    grids = _grids(parser, values)
    _check_benchmark_fit(parser, benchmark, values)
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
    for key in _BOOL_SETTINGS:
        settings[key] = bool(settings.get(key, getattr(RunConfig, key)))
    _check_run_settings(parser, settings)
    names = {f.name for f in fields(RunConfig)}
    config = RunConfig(**{k: v for k, v in settings.items() if k in names})
    try:
        config.train_config()  # validates the training budget
    except ValueError as error:
        parser.error(str(error))
    return config


def _methods(parser: argparse.ArgumentParser, methods: Any) -> tuple[str, ...]:
    if isinstance(methods, str):
        methods = METHODS if methods == "all" else tuple(m.strip() for m in methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"--methods: unknown {unknown}; use 'all' or a comma list of {list(METHODS)}")
    return tuple(methods)


def _seeds(parser: argparse.ArgumentParser, values: dict[str, Any]) -> tuple[int, ...]:
    if "seed_list" in values:
        return _parse_numbers(parser, "--seed-list", values.pop("seed_list"), int)
    count = values.get("seeds", 1)
    if isinstance(count, (list, tuple)):
        return tuple(int(s) for s in count)
    if not isinstance(count, int) or count < 1:
        parser.error(f"--seeds must be a positive number of seeds, got {count!r}")
    return tuple(range(count))


def _strengths(parser: argparse.ArgumentParser, values: dict[str, Any]) -> dict[str, float]:
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
    return strengths


def _grids(parser: argparse.ArgumentParser, values: dict[str, Any]) -> dict[str, tuple[float, ...]]:
    given_grids = values.get("grids", ())
    given_grids = given_grids.items() if isinstance(given_grids, dict) else given_grids
    grids = dict((k, tuple(v)) for k, v in given_grids)
    for method, grid in grids.items():
        if method not in STRENGTH_NAMES or not grid or not all(_is_number(v) and v >= 0 for v in grid):
            parser.error(
                f"grids: {method}={list(grid)!r}: use METHOD: [V1, ...] with numbers >= 0 and "
                f"METHOD in {list(STRENGTH_NAMES)}"
            )
    for item in values.pop("grid", None) or ():
        method, _, listed = item.partition("=")
        if method not in STRENGTH_NAMES or not listed:
            parser.error(f"--grid {item!r}: use METHOD=V1,V2 with METHOD in {list(STRENGTH_NAMES)}")
        grids[method] = _parse_numbers(parser, "--grid", listed, float)
        if any(not 0 <= v < float("inf") for v in grids[method]):
            parser.error(f"--grid {item!r}: strengths must be finite numbers >= 0")
    return grids


def _check_benchmark_fit(parser: argparse.ArgumentParser, benchmark: str, values: dict[str, Any]) -> None:
    """The task count, the image size and the limits must suit the benchmark and its network."""
    try:
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


def _check_run_settings(parser: argparse.ArgumentParser, settings: dict[str, Any]) -> None:
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


# JSON types of the settings a --config file may hold (flags are typed by argparse already).
_BOOL_SETTINGS = ("tune", "keep_optimizer_state", "single_head", "save_tensors", "quiet", "force", "resume")


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
            or isinstance(value, (list, tuple))
            and all(isinstance(v, str) or _is_number(v) for v in value)
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
