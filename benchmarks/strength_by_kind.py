"""How ``SPPPlugin()``'s strength fares by kind of stream, read from the kept runs (nothing is trained).

    python -m benchmarks.strength_by_kind --results docs/results --out docs/results/strength_by_kind

For every stream of ``benchmarks.spp_defaults`` with validation runs of SPP in the form
``SPPPlugin()`` uses (``docs/results/spp_defaults/*/runs``, seed 0, any folder; runs of other forms
and options are left out) and for the VGG-9 CNN's (``docs/results/cnn_fmnist/validation_*.json``):
the best strength on validation, and how far the default strength falls below it. For every stream
with a test check of the default (``check.json`` of ``python -m benchmarks.spp_defaults --split test
--seeds 0,1,2 --forms default --lams 10``, or the CNN's ``test_*.json``): the issue's three criteria
(at most half of Naive's forgetting, ACC at least Naive's, ACC within 1 point of SPP tuned on
validation), where Naive forgets. Streams are grouped by kind: the data (split, permuted or rotated
Fashion-MNIST, split digits; the CNN apart) and whether every task shares one head. Writes
``summary.json``, ``summary.md`` and ``kinds.md`` (the table by kind alone) under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avalanche_spp.importance import DEFAULT_LAM
from benchmarks.baselines import TrainConfig
from benchmarks.defaults_check import criteria
from benchmarks.records import write_json
from benchmarks.spp_defaults import STREAMS

#: The harness's SPP options, at the values of the form ``SPPPlugin()`` uses. A run counts as that
#: form when each of these its record holds has this value and it names no other ``spp_`` option. An
#: option the record lacks was added to the harness after the run: the experiments added later are
#: off unless named, and the importance mini-batch, before the harness named it, was the plugin's
#: default, 256. The importance's form (:data:`REQUIRED_OPTIONS`) must be named.
DEFAULT_OPTIONS = {k: v for k, v in dataclasses.asdict(TrainConfig()).items() if k.startswith("spp_")}
REQUIRED_OPTIONS = ("spp_taylor_of", "spp_scale", "spp_clamp", "spp_fisher", "spp_importance_samples")

DATA = {
    "split_fmnist": "split Fashion-MNIST",
    "permuted_fmnist": "permuted Fashion-MNIST",
    "rotated_fmnist": "rotated Fashion-MNIST",
    "split_digits": "split digits",
}
CNN_STREAM = re.compile(r"^vgg9_split_fmnist_(sgd|adam)2$")
CRITERIA = ("half_the_forgetting", "acc_not_below_naive", "within_1_of_tuned")


def stream_kind(stream: str) -> str:
    """The kind of a stream: its data and heads, e.g. ``"permuted Fashion-MNIST, one shared head"``."""
    if CNN_STREAM.match(stream):
        return "split Fashion-MNIST, VGG-9 CNN, a head per task"
    if stream not in STREAMS:
        raise ValueError(
            f"unknown stream {stream!r}: not a stream of benchmarks.spp_defaults (STREAMS) nor "
            "vgg9_split_fmnist_<sgd|adam>2; remove its runs or add it to STREAMS"
        )
    spec = STREAMS[stream]
    heads = "one shared head" if spec.single_head else "a head per task"
    return f"{DATA[spec.benchmark]}, {heads}"


def is_default_form(train: dict[str, Any]) -> bool:
    """Whether a run's training options are those of ``SPPPlugin()`` (see :data:`DEFAULT_OPTIONS`)."""
    if any(name not in train for name in REQUIRED_OPTIONS):
        return False
    missing = object()
    return all(
        DEFAULT_OPTIONS.get(name, missing) == value
        for name, value in train.items()
        if name.startswith("spp_")
    )


#: Two kept runs of one setting (stream, strength, seed) may come from different versions of the
#: code (a later folder reran it): they agree to floating-point noise, and their mean is used. Runs
#: further apart than this (ACC points) are not the same setting, and the summary refuses them.
SAME_RUN_TOLERANCE = 0.5


def _put(table: dict[str, dict[Any, list[float]]], stream: str, key: Any, acc: float, where: str) -> None:
    """Add one ACC for (stream, strength); a rerun elsewhere must agree within the tolerance."""
    known = table.setdefault(stream, {}).setdefault(key, [])
    if known and max(abs(k - acc) for k in known) > SAME_RUN_TOLERANCE:
        raise ValueError(
            f"{where}: {stream} at {key} has ACC {acc:.2f} here and {known[0]:.2f} in another folder, "
            f"more than {SAME_RUN_TOLERANCE} points apart, so they are not runs of one setting: "
            "remove the stale one"
        )
    known.append(acc)


def _means(table: dict[str, dict[Any, list[float]]]) -> dict[str, dict[Any, float]]:
    return {stream: {k: sum(v) / len(v) for k, v in grid.items()} for stream, grid in table.items()}


def validation_grids(spp_defaults: Path) -> dict[str, dict[Any, list[float]]]:
    """``{stream: {lam or "naive": [ACC in %, one per kept copy]}}``, seed 0, validation runs in the
    default form only."""
    grids: dict[str, dict[Any, list[float]]] = {}
    for path in sorted(spp_defaults.glob("*/runs/*.json")):
        record = json.loads(path.read_text())
        config = record["config"]
        if config.get("split") != "validation" or record.get("seed") != 0:
            continue
        stream = path.stem.split("__")[0]
        if record["method"] == "finetune":
            key: Any = "naive"
        elif record["method"] == "spp" and is_default_form(config["train"]):
            key = float(record["strength"])
        else:
            continue
        _put(grids, stream, key, 100 * float(record["metrics"]["acc"]), str(path))
    return grids


def test_checks(spp_defaults: Path, lam: float) -> dict[str, dict[str, Any]]:
    """The rows of every ``check.json`` of the default strength ``lam`` on seeds 0, 1, 2, by stream."""
    wanted = re.compile(rf"--seeds 0,1,2 .*--forms default --lams {lam:g}( |$)")
    rows: dict[str, dict[str, Any]] = {}
    for path in sorted(spp_defaults.glob("*/check.json")):
        check = json.loads(path.read_text())
        if not wanted.search(check["command"]):
            continue
        for row in check["rows"]:
            known = rows.get(row["stream"])
            if known is not None and known != row:
                raise ValueError(
                    f"{path}: the check of {row['stream']} differs from an earlier folder's copy; "
                    "keep one check per stream and strength"
                )
            rows[row["stream"]] = row
    return rows


def _cnn_acc(rows: list[dict[str, Any]], lam: float) -> dict[str, Any] | None:
    return next((r for r in rows if float(r["lam"]) == lam), None)


def cnn_streams(cnn_dir: Path, lam: float) -> tuple[dict[str, dict[Any, float]], dict[str, dict[str, Any]]]:
    """The VGG-9 streams' validation grids (seed 0) and, where its test file holds Naive, the
    default and the tuned strength, their check rows (as ``check.json``'s)."""
    table: dict[str, dict[Any, list[float]]] = {}
    checks: dict[str, dict[str, Any]] = {}
    for optimizer in ("sgd", "adam"):
        stream = f"vgg9_split_fmnist_{optimizer}2"
        validation = cnn_dir / f"validation_{optimizer}.json"
        if not validation.is_file():
            continue
        for row in json.loads(validation.read_text())["rows"]:
            if 0 in row["seeds"]:
                acc = row["acc"][row["seeds"].index(0)]
                _put(table, stream, "naive" if row["lam"] == 0 else float(row["lam"]), acc, str(validation))
        test = cnn_dir / f"test_{optimizer}.json"
        if test.is_file():
            row = _cnn_check(stream, json.loads(test.read_text())["rows"], _means(table)[stream], lam)
            if row is not None:
                checks[stream] = row
    return _means(table), checks


def _cnn_check(stream: str, rows: list[dict[str, Any]], grid: dict[Any, float], lam: float) -> dict | None:
    tuned_lam = max((k for k in grid if k != "naive"), key=grid.get)
    naive, default, tuned = (_cnn_acc(rows, x) for x in (0.0, lam, tuned_lam))
    if naive is None or default is None or tuned is None:
        return None

    def pair(r: dict[str, Any]) -> dict[str, str]:
        return {"acc": f"{r['mean_acc']:.2f}", "bwt": f"{r['mean_bwt']:.2f}"}

    def means(r: dict[str, Any]) -> dict[str, float]:
        return {"acc": r["mean_acc"], "bwt": r["mean_bwt"]}

    forgets, met = criteria(means(naive), means(default), tuned["mean_acc"], point=1.0)
    return {
        "stream": stream, "seeds": len(default["seeds"]), "naive": pair(naive), "default": pair(default),
        "tuned": pair(tuned), "tuned_lam": tuned_lam, "naive_forgets": forgets, "criteria": met,
    }  # fmt: skip


def stream_rows(grids: dict[str, dict[Any, float]], checks: dict[str, dict[str, Any]], lam: float) -> list:
    """One row per stream: validation (best strength, the default's shortfall) and the test check."""
    rows = []
    for stream in sorted(set(grids) | set(checks)):
        grid = {k: v for k, v in grids.get(stream, {}).items() if k != "naive"}
        best = max(grid, key=grid.get) if grid else None
        at_default = grid.get(lam)
        rows.append({
            "stream": stream,
            "kind": stream_kind(stream),
            "state_kept": stream.startswith("vgg9") or not STREAMS[stream].reset_optimizer,
            "validation_naive_acc": grids.get(stream, {}).get("naive"),
            "validation_strengths": sorted(grid),
            "best_lam": best,
            "best_acc": None if best is None else grid[best],
            "default_acc": at_default,
            "shortfall": None if at_default is None or best is None else grid[best] - at_default,
            "check": checks.get(stream),
        })  # fmt: skip
    return rows


def kind_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per kind: the best strengths' range, the default's largest shortfall, the criteria met on test."""
    kinds = []
    for kind in dict.fromkeys(r["kind"] for r in sorted(rows, key=lambda r: r["kind"])):
        members = [r for r in rows if r["kind"] == kind]
        tuned = [r for r in members if r["best_lam"] is not None and len(r["validation_strengths"]) >= 3]
        short = [r["shortfall"] for r in tuned if r["shortfall"] is not None]
        forgets = [r["check"] for r in members if r["check"] and r["check"]["naive_forgets"]]
        met = {c: sum(bool(ch["criteria"][c]) for ch in forgets) for c in CRITERIA}
        tuned_checks = [ch for ch in forgets if ch["tuned_lam"] is not None]
        met["within_1_of_tuned"] = sum(bool(ch["criteria"]["within_1_of_tuned"]) for ch in tuned_checks)
        kinds.append({
            "kind": kind,
            "streams": len(members),
            "tuned_streams": len(tuned),
            "best_lam_min": min((r["best_lam"] for r in tuned), default=None),
            "best_lam_max": max((r["best_lam"] for r in tuned), default=None),
            "default_within_1": sum(s <= 1 for s in short),
            "default_shortfall_max": max(short, default=None),
            "checked_where_naive_forgets": len(forgets),
            "checked_with_tuned": len(tuned_checks),
            "met": met,
        })  # fmt: skip
    return kinds


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "" if value is None else format(value, spec)


def render(summary: dict[str, Any], *, per_stream: bool = True) -> str:
    """``summary.md``: the table by kind, then one row per stream (``kinds.md``: the first only)."""
    lam = summary["default_lam"]
    lines = [
        f"Command: `{summary['command']}` (reads kept runs; trains nothing).",
        "",
        f"`SPPPlugin()` (`lam = {lam:g}`) by kind of stream. Validation: seed 0, SPP in the default form "
        "(streams with at least three strengths screened). Test: seeds 0-2, the streams where Naive "
        'forgets (BWT < -2), counted as met / checked; "within 1 of tuned" counts the streams with a '
        "tuned strength; blank where Naive forgets on none of the kind's checked streams.",
        "",
        "| kind of stream | streams | best λ on validation | default within 1 of best (validation) "
        "| largest shortfall (validation) | test: ≤ half the forgetting | test: ACC ≥ Naive "
        "| test: within 1 of tuned |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in summary["kinds"]:
        span = "" if k["best_lam_min"] is None else f"{k['best_lam_min']:g} to {k['best_lam_max']:g}"
        n, m = k["checked_where_naive_forgets"], k["met"]
        test = [f"{m[c]} / {n}" if n else "" for c in CRITERIA[:2]]
        test.append(
            f"{m['within_1_of_tuned']} / {k['checked_with_tuned']}" if k["checked_with_tuned"] else ""
        )
        lines.append(
            f"| {k['kind']} | {k['streams']} | {span} | {k['default_within_1']} / {k['tuned_streams']} "
            f"| {_fmt(k['default_shortfall_max'])} | " + " | ".join(test) + " |"
        )
    if not per_stream:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "Per stream (validation ACC in %; test ACC / BWT, mean over seeds 0-2):",
        "",
        "| stream | state kept | validation: Naive | best λ (ACC) | default ACC | shortfall "
        "| test: Naive | test: default | test: tuned λ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["streams"]:
        best = "" if r["best_lam"] is None else f"{r['best_lam']:g} ({r['best_acc']:.2f})"
        check = r["check"] or {}
        pairs = [f"{check[f]['acc']} / {check[f]['bwt']}" if check else "" for f in ("naive", "default")]
        tuned = "" if not check or check["tuned_lam"] is None else f"{check['tuned_lam']:g}"
        lines.append(
            f"| {r['stream']} | {'yes' if r['state_kept'] else 'no'} | {_fmt(r['validation_naive_acc'])} "
            f"| {best} | {_fmt(r['default_acc'])} | {_fmt(r['shortfall'])} "
            f"| {pairs[0]} | {pairs[1]} | {tuned} |"
        )
    return "\n".join(lines) + "\n"


def build(results: Path, lam: float, command: str) -> dict[str, Any]:
    """The summary of the kept results under ``results`` (``spp_defaults/`` and ``cnn_fmnist/``)."""
    spp_defaults = results / "spp_defaults"
    if not spp_defaults.is_dir():
        raise FileNotFoundError(f"{spp_defaults}: no such folder; --results must hold spp_defaults/")
    copies = validation_grids(spp_defaults)
    spread = max((max(v) - min(v) for grid in copies.values() for v in grid.values()), default=0.0)
    grids = _means(copies)
    checks = test_checks(spp_defaults, lam)
    cnn_grids, cnn_checks = cnn_streams(results / "cnn_fmnist", lam)
    grids.update(cnn_grids)
    checks.update(cnn_checks)
    if not grids:
        raise FileNotFoundError(f"{spp_defaults}: no validation run of SPP's default form under */runs/")
    rows = stream_rows(grids, checks, lam)
    return {
        "command": command,
        "default_lam": lam,
        "largest_spread_between_copies": spread,  # ACC points between kept copies of one setting
        "kinds": kind_rows(rows),
        "streams": rows,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.strength_by_kind", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--results", default="docs/results", help="the kept results (default: docs/results)")
    parser.add_argument("--out", required=True, help="folder for summary.json, summary.md and kinds.md")
    parser.add_argument(
        "--lam", type=float, default=DEFAULT_LAM, help=f"the strength judged (default {DEFAULT_LAM:g})"
    )
    args = parser.parse_args(argv)
    if not args.lam > 0:
        parser.error(f"--lam must be a positive strength, got {args.lam:g}")
    command = "python -m benchmarks.strength_by_kind " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        summary = build(Path(args.results), args.lam, command)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    out = Path(args.out)
    write_json(out / "summary.json", summary)
    (out / "summary.md").write_text(render(summary))
    (out / "kinds.md").write_text(render(summary, per_stream=False))
    print(render(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
