"""The check of ``SPPPlugin()``'s defaults against Naive and tuned SPP, from a folder of test runs.

``python -m benchmarks.spp_defaults --split test ...`` writes the runs
(``<out>/runs/<stream>__<form>__<lam>__seed<k>.json``) and then, through :func:`write_check`,
``check.json`` and ``check.md`` with the issue's three criteria.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.records import write_json


def sample_std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _mean_std(values: list[float]) -> str:
    return f"{100 * float(np.mean(values)):.2f} ± {100 * sample_std(values):.2f}"


CHECKED = ("naive", "default", "tuned")
"""The forms a check compares, each at one strength per stream (other forms may share its folder)."""


def mixed_strengths(stems: Iterable[str]) -> str:
    """Why runs named ``<stream>__<form>__<lam>__seed<k>`` cannot make one check ('' if they can)."""
    strengths: dict[tuple[str, str], set[str]] = {}
    for stem in stems:
        stream, form, lam, _seed = stem.split("__")
        strengths.setdefault((stream, form), set()).add(lam)
    mixed = sorted(f"{s} {f}: {sorted(v)}" for (s, f), v in strengths.items() if len(v) > 1 and f in CHECKED)
    if not mixed:
        return ""
    return (
        f"runs of one stream and form at several strengths ({mixed}); a check compares one strength "
        "per form: give the other strengths their own --out folder"
    )


def check_rows(out: Path) -> list[dict[str, Any]]:
    """Per stream: Naive, ``SPPPlugin()`` and SPP at its tuned strength, and the issue's criteria.

    Criteria where Naive forgets (its mean BWT below -2 points): the default forgets at most half
    as much as Naive (|BWT| <= |BWT_naive| / 2), its ACC is not below Naive's, and its ACC is
    within 1 point of the tuned strength's.
    """
    records: dict[tuple[str, str], list[dict[str, Any]]] = {}
    paths = sorted((out / "runs").glob("*.json"))
    mixed = mixed_strengths(path.stem for path in paths)
    if mixed:  # the mean over seeds would silently average two strengths
        raise ValueError(f"{out / 'runs'}: {mixed}")
    for path in paths:
        stream, form, _lam, _seed = path.stem.split("__")
        records.setdefault((stream, form), []).append(json.loads(path.read_text()))
    rows = []
    for stream in sorted({k[0] for k in records}):
        got = {form: records.get((stream, form), []) for form in CHECKED}
        if not got["naive"] or not got["default"]:
            continue
        metric = {f: {k: [r["metrics"][k] for r in rs] for k in ("acc", "bwt")} for f, rs in got.items()}
        mean = {f: {k: float(np.mean(v)) if v else None for k, v in m.items()} for f, m in metric.items()}
        row: dict[str, Any] = {"stream": stream, "seeds": len(got["default"])}
        for form in CHECKED:
            row[form] = {k: _mean_std(v) for k, v in metric[form].items()} if got[form] else None
        row["tuned_lam"] = got["tuned"][0]["strength"] if got["tuned"] else None
        forgets, met = criteria(mean["naive"], mean["default"], mean["tuned"]["acc"], point=0.01)
        row["naive_forgets"], row["criteria"] = forgets, met
        rows.append(row)
    return rows


def criteria(
    naive: dict[str, float], default: dict[str, float], tuned_acc: float | None, *, point: float
) -> tuple[bool, dict[str, bool | None]]:
    """Whether Naive forgets (mean BWT below -2 points) and the issue's three criteria for the
    default, from mean ``acc`` and ``bwt`` in any unit of which ``point`` is one point (0.01 for
    fractions, 1 for percent); ``within_1_of_tuned`` is None without a tuned strength."""
    near = None if tuned_acc is None else default["acc"] >= tuned_acc - point
    return naive["bwt"] < -2 * point, {
        "half_the_forgetting": abs(default["bwt"]) <= abs(naive["bwt"]) / 2,
        "acc_not_below_naive": default["acc"] >= naive["acc"],
        "within_1_of_tuned": near,
    }


def write_check(out: Path, command: str) -> None:
    rows = check_rows(out)
    write_json(out / "check.json", {"command": command, "rows": rows})
    mark = {True: "yes", False: "**no**", None: "n/a"}
    lines = [
        f"Command: `{command}` (and one per stream for the tuned strength; see `check.json`).",
        "",
        "Test split, mean ± std over seeds, in %. Criteria apply where Naive forgets (BWT < -2).",
        "",
        "| stream | Naive ACC / BWT | SPPPlugin() ACC / BWT | tuned λ | tuned ACC / BWT "
        "| ≤ half the forgetting | ACC ≥ Naive | ACC within 1 of tuned |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pair = {f: "" if r[f] is None else f"{r[f]['acc']} / {r[f]['bwt']}" for f in CHECKED}
        crit = [mark[v] if r["naive_forgets"] else "(no forgetting)" for v in r["criteria"].values()]
        lam = "" if r["tuned_lam"] is None else f"{r['tuned_lam']:g}"
        lines.append(f"| {r['stream']} | {pair['naive']} | {pair['default']} | {lam} | {pair['tuned']} | "
                     + " | ".join(crit) + " |")  # fmt: skip
    (out / "check.md").write_text("\n".join(lines) + "\n")
