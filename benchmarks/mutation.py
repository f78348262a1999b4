"""Mutation testing of the core: run mutmut and keep its score per module.

``python -m benchmarks.mutation`` runs ``mutmut run`` with the settings of ``[tool.mutmut]`` in
pyproject.toml (the importance math, the plugin, the metrics and the resume code; the fast tests
that cover them), then reads mutmut's results and writes ``scores.json`` and ``scores.md`` into
``--out`` (default ``docs/results/mutation``). ``--report-only`` rewrites the report from the
results of an earlier run (the ``mutants/`` folder) without running anything.

A mutant that survives is either a gap in the tests (add a test that kills it) or *equivalent*:
a change that cannot alter behaviour. Equivalent mutants are listed by hand in
``equivalent.json`` beside the scores, ``{"mutant name": "one-line reason"}``; the score of a
module is ``killed / (mutants - equivalent)``, with timeouts counted as killed (the tests noticed)
and mutants no test reaches counted as not killed. A listed name that no longer exists, or that
was killed, is reported as stale so the list cannot rot silently.

Not part of CI: it takes about half an hour on 2 cores (docs/testing.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.records import write_json

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "results" / "mutation"
EQUIVALENT_FILE = "equivalent.json"
# mutmut's exit codes (mutmut/stats.py, 3.8): what each means for the score
STATUS_BY_EXIT_CODE = {
    1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
    36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", None: "not checked",
}  # fmt: skip
TARGET = 0.90  # issue 12: at least 90% of the mutants killed, the rest equivalent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.mutation",
        description="Run mutmut on the core modules and write the score per module.",
    )
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutmut workers (default 2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of scores.json / scores.md")
    parser.add_argument("--report-only", action="store_true", help="read the mutants/ folder, run nothing")
    args = parser.parse_args(argv)
    if args.max_children < 1:
        parser.error(f"--max-children must be >= 1, got {args.max_children}")
    return args


def collect(mutants_dir: Path) -> dict[str, dict[str, str]]:
    """``{module: {mutant name: status}}`` from mutmut's ``*.py.meta`` files under ``mutants_dir``."""
    metas = sorted(mutants_dir.rglob("*.py.meta"))
    if not metas:
        raise FileNotFoundError(
            f"no mutmut results under {mutants_dir}: run `python -m benchmarks.mutation` "
            "(without --report-only) first"
        )
    results: dict[str, dict[str, str]] = {}
    for meta in metas:
        module = meta.relative_to(mutants_dir).as_posix().removesuffix(".py.meta").replace("/", ".")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        results[module] = {name: STATUS_BY_EXIT_CODE.get(code, "suspicious") for name, code in codes.items()}
    return results


def score(results: dict[str, dict[str, str]], equivalent: dict[str, str]) -> dict[str, Any]:
    """Counts and score per module, the survivors not listed as equivalent, and stale list entries."""
    modules: dict[str, Any] = {}
    unexplained: list[str] = []
    known = {name: status for statuses in results.values() for name, status in statuses.items()}
    stale = sorted(
        name for name in equivalent if known.get(name) != "survived"
    )  # gone, or killed: not equivalent
    for module, statuses in sorted(results.items()):
        counts = Counter(statuses.values())
        n_equivalent = sum(1 for n, s in statuses.items() if s == "survived" and n in equivalent)
        detected = counts["killed"] + counts["timeout"]
        denominator = len(statuses) - n_equivalent
        modules[module] = {
            "mutants": len(statuses),
            "killed": counts["killed"],
            "timeout": counts["timeout"],
            "survived": counts["survived"] - n_equivalent,
            "equivalent": n_equivalent,
            "no_tests": counts["no tests"],
            "other": len(statuses) - detected - counts["survived"] - counts["no tests"],
            "score": detected / denominator if denominator else None,
        }
        unexplained += sorted(n for n, s in statuses.items() if s == "survived" and n not in equivalent)
    total = {key: sum(m[key] for m in modules.values()) for key in ("mutants", "killed", "timeout",
                                                                     "survived", "equivalent", "no_tests",
                                                                     "other")}  # fmt: skip
    denominator = total["mutants"] - total["equivalent"]
    total["score"] = (total["killed"] + total["timeout"]) / denominator if denominator else None
    return {
        "modules": modules,
        "total": total,
        "unexplained_survivors": unexplained,
        "stale_equivalents": stale,
    }


def markdown(summary: dict[str, Any], equivalent: dict[str, str]) -> str:
    """The scores table, the survivors still to explain, and the equivalent mutants with reasons."""

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}"

    lines = [
        "# Mutation testing of the core",
        "",
        f"Command: `{summary['command']}` ({summary['wall_time_min']:.1f} min on {summary['max_children']} "
        f"worker{'s' if summary['max_children'] != 1 else ''}; mutmut {summary['mutmut_version']}; "
        f"commit {summary['git_commit']}).",
        "",
        "Score = (killed + timeout) / (mutants - equivalent). Target: "
        f"{pct(TARGET)}% for the importance math, the plugin and the metrics. Killed of all = "
        "(killed + timeout) / mutants, the share the tests notice with no mutant set aside.",
        "",
        "| module | mutants | killed | timeout | survived | equivalent | no tests | score (%) "
        "| killed of all (%) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = list(summary["modules"].items()) + [("all", summary["total"])]
    for module, m in rows:
        lines.append(
            f"| {module} | {m['mutants']} | {m['killed']} | {m['timeout']} | {m['survived']} | "
            f"{m['equivalent']} | {m['no_tests']} | {pct(m['score'])} | "
            f"{pct((m['killed'] + m['timeout']) / m['mutants'] if m['mutants'] else 0.0)} |"
        )
    lines += ["", f"## Survivors not explained ({len(summary['unexplained_survivors'])})", ""]
    lines += [f"- `{name}`" for name in summary["unexplained_survivors"]] or ["None."]
    lines += ["", f"## Equivalent mutants ({len(equivalent)})", ""]
    lines += [f"- `{name}`: {reason}" for name, reason in sorted(equivalent.items())] or ["None."]
    if summary["stale_equivalents"]:
        lines += ["", "## Stale entries of equivalent.json (gone or killed)", ""]
        lines += [f"- `{name}`" for name in summary["stale_equivalents"]]
    return "\n".join(lines) + "\n"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def _mutmut_version() -> str:
    """The installed mutmut's version; a report rebuilt where it is not installed says so."""
    try:
        return metadata.version("mutmut")
    except metadata.PackageNotFoundError:
        return "not installed (pip install -e '.[dev]')"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m benchmarks.mutation" + (
        "" if args.max_children == 2 else f" --max-children {args.max_children}"
    )
    wall_min = None
    commit = _git_commit()  # the code mutmut copies now (a commit made during the run is not it)
    if not args.report_only:
        start = time.monotonic()
        status = subprocess.run(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children)], cwd=REPO
        ).returncode
        wall_min = (time.monotonic() - start) / 60
        if status != 0:
            print(f"mutmut run ended with status {status}; see its output above", file=sys.stderr)
            return status
    equivalent_path = args.out / EQUIVALENT_FILE
    equivalent = json.loads(equivalent_path.read_text()) if equivalent_path.is_file() else {}
    try:
        results = collect(REPO / "mutants")
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 2
    summary = score(results, equivalent)
    previous = args.out / "scores.json"
    max_children, version = args.max_children, _mutmut_version()
    if args.report_only and previous.is_file():  # keep what describes the run it reports
        kept = json.loads(previous.read_text())
        wall_min, commit = kept.get("wall_time_min"), kept.get("git_commit", commit)
        command, max_children = kept.get("command", command), kept.get("max_children", max_children)
        version = kept.get("mutmut_version", version)
    summary |= {
        "command": command,
        "wall_time_min": wall_min if wall_min is not None else float("nan"),
        "max_children": max_children,
        "mutmut_version": version,
        "git_commit": commit,
        "date": datetime.date.today().isoformat(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "scores.json", summary)
    (args.out / "scores.md").write_text(markdown(summary, equivalent))
    print(markdown(summary, equivalent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
