"""Choose SPPPlugin's defaults by measurement: SPP forms x strengths on validation splits.

    python -m benchmarks.spp_defaults --streams split_fmnist_sgd2 --forms all --lams 0.1,1,10 \\
        --out docs/results/spp_defaults/screen

A *stream* is a benchmark with a training budget (optimiser, learning rate, epochs); a *form* is a
set of SPP options (``scale``, ``taylor_of``, ``clamp``, ``fisher``, importance samples). Every
(stream, form, lam, seed) is one run of ``benchmarks``' harness on the **validation** split (never
the test split), kept as ``<out>/runs/<stream>__<form>__lam<lam>__seed<seed>.json``; a run whose
file exists is skipped, so a killed sweep continues where it stopped. Naive (``finetune``) runs
once per stream and seed as the reference. ``<out>/summary.json`` and ``<out>/summary.md`` hold,
per stream, ACC and BWT of every form and strength (mean over seeds) next to Naive's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.baselines import TrainConfig
from benchmarks.defaults_check import mixed_strengths, sample_std, write_check
from benchmarks.experiment import run_method
from benchmarks.records import write_json


@dataclass(frozen=True)
class Stream:
    """A benchmark and the budget it is learned with."""

    benchmark: str
    optimizer: str
    lr: float
    epochs: int
    batch_size: int = 128
    train_limit: int | None = None  # training samples per task (None: all)
    eval_limit: int | None = None  # evaluation samples per task (None: all)
    n_tasks: int | None = None
    reset_optimizer: bool = True  # a fresh optimiser state per experience (False: Avalanche's default)
    single_head: bool = False  # one head shared by every task (domain-incremental), Naive's too


STREAMS = {
    f"{bench}_{opt}{epochs}{suffix}{'' if reset else '_keep'}": Stream(
        bench, opt, 0.01 if opt == "sgd" else 1e-3, epochs, train_limit=limit, eval_limit=eval_limit,
        reset_optimizer=reset,
    )
    for bench, suffix, limit, eval_limit in (
        ("split_fmnist", "", None, None),
        ("permuted_fmnist", "", None, None),
        ("permuted_fmnist", "_10k", 10_000, None),
        ("permuted_fmnist", "_3k", 3_000, None),
        ("permuted_fmnist", "_3k_e1k", 3_000, 1_000),
        ("permuted_fmnist", "_10k_e2k", 10_000, 2_000),
        ("split_digits", "", None, None),
        ("rotated_fmnist", "", None, None),
        ("rotated_fmnist", "_3k_e1k", 3_000, 1_000),
    )
    for opt in ("sgd", "adam")
    for epochs in (2, 5)
    for reset in (True, False)
}  # fmt: skip
STREAMS.update({
    f"{name}_sh": replace(stream, single_head=True)
    for name, stream in list(STREAMS.items())
    if stream.benchmark in ("permuted_fmnist", "split_fmnist", "rotated_fmnist")
})  # fmt: skip
"""``<benchmark>_<optimiser><epochs>[_10k|_3k][_e1k|_e2k][_keep][_sh]``: SGD lr 0.01 momentum
0.9, or Adam lr 1e-3; batch 128; ``_10k`` / ``_3k``: that many training samples per task;
``_e1k`` / ``_e2k``: 1000 / 2000 evaluation samples per task (the permuted streams' evaluation of
every task after every task dominates their time); ``_keep``: the optimiser's state (SGD momentum,
Adam's moments) kept from one experience to the next, Avalanche's default and what
``Naive(model, optimizer, ...)`` does unless told otherwise (without it the harness resets the
state at every experience); ``_sh`` (Fashion-MNIST streams): one head shared by every task, for
every method, where the other streams give each task its own head (domain-incremental: permuted
and rotated tasks share their ten labels; split tasks their two, "first or second class of the
pair"). ``rotated_fmnist``: task ``t`` turned ``18 t`` degrees, a stream no default was chosen on."""

_NEG_BF_FORM: dict[str, Any] = {
    "spp_scale": "saturate",
    "spp_clamp": "batch",
    "spp_taylor_of": "neg_entropy",
    "spp_fisher": "batch",
}
"""The previous SPPPlugin() form, spelled out (``sat_batch_neg_bf``, the default until
``taylor_of="second_order"`` replaced ``"neg_entropy"``): the base of the screened variants below."""

_SO_BF_FORM: dict[str, Any] = {**_NEG_BF_FORM, "spp_taylor_of": "second_order"}
"""SPPPlugin()'s form spelled out (``sat_batch_so_bf``)."""

FORMS: dict[str, dict[str, Any]] = {
    # the paper's scale (the previous default) and the authors' code form
    "raw_exp_ent": {"spp_scale": "raw", "spp_clamp": "experience", "spp_taylor_of": "entropy"},
    "raw_batch_neg_bf": {
        "spp_scale": "raw", "spp_clamp": "batch", "spp_taylor_of": "neg_entropy", "spp_fisher": "batch",
    },
    # the scale-free strength, every clamp and sign
    "sat_exp_ent": {"spp_scale": "saturate", "spp_clamp": "experience", "spp_taylor_of": "entropy"},
    "sat_exp_neg": {"spp_scale": "saturate", "spp_clamp": "experience", "spp_taylor_of": "neg_entropy"},
    "sat_batch_ent": {"spp_scale": "saturate", "spp_clamp": "batch", "spp_taylor_of": "entropy"},
    "sat_batch_neg": {"spp_scale": "saturate", "spp_clamp": "batch", "spp_taylor_of": "neg_entropy"},
    "sat_batch_ent_bf": {
        "spp_scale": "saturate", "spp_clamp": "batch", "spp_taylor_of": "entropy", "spp_fisher": "batch",
    },
    "sat_batch_neg_bf": {**_NEG_BF_FORM},
    "sat_sample_ent": {
        "spp_scale": "saturate", "spp_clamp": "sample", "spp_taylor_of": "entropy",
        "spp_fisher": "per_sample",
    },
    "sat_sample_neg": {
        "spp_scale": "saturate", "spp_clamp": "sample", "spp_taylor_of": "neg_entropy",
        "spp_fisher": "per_sample",
    },
    "mean_batch_ent_bf": {
        "spp_scale": "mean", "spp_clamp": "batch", "spp_taylor_of": "entropy", "spp_fisher": "batch",
    },
    "mean_batch_neg_bf": {
        "spp_scale": "mean", "spp_clamp": "batch", "spp_taylor_of": "neg_entropy", "spp_fisher": "batch",
    },
    # the unbounded mean scale, kept stable by the curvature cap (lam * Omega / m <= (1 + mu) / (2 eta))
    "mean_batch_neg_bf_cap": {
        "spp_scale": "mean", "spp_clamp": "batch", "spp_taylor_of": "neg_entropy", "spp_fisher": "batch",
        "spp_curvature_cap": 0.5,
    },
    # importances of successive tasks combined by their maximum (the authors' Caltech-101 runs)
    "sat_batch_neg_bf_max": {
        "spp_scale": "saturate", "spp_clamp": "batch", "spp_taylor_of": "neg_entropy", "spp_fisher": "batch",
        "spp_accumulate": "max",
    },
    # MAS's importance (output-norm sensitivity) through SPP's scale and penalty: ranking vs scale
    "sat_outnorm": {"spp_scale": "saturate", "spp_importance": "output_norm"},
    # the entropy of softmax(z / T): sure inputs count too (their entropy gradient vanishes at T = 1)
    "sat_batch_ent_bf_t4": {
        "spp_scale": "saturate", "spp_clamp": "batch", "spp_taylor_of": "entropy", "spp_fisher": "batch",
        "spp_temperature": 4.0,
    },
    # the saturating mask as a Hill function of exponent 2, 3 or 5: the frozen set grows more slowly with lam
    "sat_batch_neg_bf_h2": {**_NEG_BF_FORM, "spp_sharpness": 2.0},
    "sat_batch_neg_bf_h3": {**_NEG_BF_FORM, "spp_sharpness": 3.0},
    "sat_batch_neg_bf_h5": {**_NEG_BF_FORM, "spp_sharpness": 5.0},
    # the saturating mask's m per parameter tensor: every layer the same share of stiff weights
    "sat_batch_neg_bf_tm": {**_NEG_BF_FORM, "spp_mask_mean": "tensor"},
    # lam in units of the loss's mean curvature (the expected Fisher, labels from the model's softmax)
    "sat_batch_neg_bf_curv": {**_NEG_BF_FORM, "spp_stiffness": "curvature"},
    # the default form, with that curvature measured and kept but not applied (a diagnostic)
    "sat_batch_neg_bf_mc": {**_NEG_BF_FORM, "spp_measure_curvature": True},
    # the Taylor estimate's second-order term alone, 1/2 W**2 F (Optimal Brain Damage's saliency): no
    # first-order term, so no weight's importance is clamped to zero
    "sat_batch_so_bf": {**_SO_BF_FORM},
    # and with the saturating mask's m the mean importance of one experience (not of their sum)
    "sat_batch_so_bf_em": {**_SO_BF_FORM, "spp_mask_mean": "experience"},
    "sat_batch_neg_bf_em": {**_NEG_BF_FORM, "spp_mask_mean": "experience"},
    # the default form with importance mini-batches of 64 or 128 instead of 256 (the batch Fisher
    # depends on it; 64 costs less per image on a CPU CNN)
    "sat_batch_so_bf_ib64": {**_SO_BF_FORM, "spp_importance_batch_size": 64},
    "sat_batch_so_bf_ib128": {**_SO_BF_FORM, "spp_importance_batch_size": 128},
    # the default form, for plasticity: a Hill mask of exponent 2 (the many weights of small
    # 1/2 W^2 F nearly free), m per tensor, or the importances of successive tasks by their maximum
    "sat_batch_so_bf_h2": {**_SO_BF_FORM, "spp_sharpness": 2.0},
    # and a flatter mask, r**0.5 / (1 + r**0.5): the many weights of small importance less free
    # (sqrt(1/2 W^2 F) is |g W| / sqrt(2), the first-order pruning saliency's magnitude)
    "sat_batch_so_bf_h05": {**_SO_BF_FORM, "spp_sharpness": 0.5},
    # and nearly flat, r**0.01 / (1 + r**0.01): about 1/2 for every weight of nonzero importance,
    # an L2 pull to W* of strength lam / 2 (a diagnostic: does the importance's ranking matter?)
    "sat_batch_so_bf_h001": {**_SO_BF_FORM, "spp_sharpness": 0.01},
    "sat_batch_so_bf_tm": {**_SO_BF_FORM, "spp_mask_mean": "tensor"},
    "sat_batch_so_bf_max": {**_SO_BF_FORM, "spp_accumulate": "max"},
    # and with the entropy of softmax(z / 4): inputs the model is sure of count too
    "sat_batch_so_bf_t4": {**_SO_BF_FORM, "spp_temperature": 4.0},
    # and with the mask's m the median importance: half the weights have M >= 1/2 on any model
    "sat_batch_so_bf_md": {**_SO_BF_FORM, "spp_mask_mean": "median"},
    # and with m the mean importance of the parameters the new task's loss reaches (not old heads)
    "sat_batch_so_bf_rm": {**_SO_BF_FORM, "spp_mask_mean": "reached"},
    # the default form with the unbounded scale Omega / m (no saturation; SGD's stability then
    # depends on the largest importance, Adam has no such limit)
    "mean_batch_so_bf": {**_SO_BF_FORM, "spp_scale": "mean"},
    # the default form with W* the importance-weighted mean of the weights after each task
    "sat_batch_so_bf_wa": {**_SO_BF_FORM, "spp_anchor": "weighted"},
    # and with past importance halved before each new one is added (MAS's alpha = 0.5 weighting)
    "sat_batch_so_bf_d05": {**_SO_BF_FORM, "spp_decay": 0.5},
    # each experience's Omega divided by its own mean before it is summed (session 21)
    "sat_batch_so_bf_nm": {**_SO_BF_FORM, "spp_normalize": "experience_mean"},
    # importance from a subset of each experience
    "sat_batch_ent_bf_2k": {
        "spp_scale": "saturate", "spp_clamp": "batch", "spp_taylor_of": "entropy", "spp_fisher": "batch",
        "spp_importance_samples": 2048,
    },
    "sat_sample_ent_2k": {
        "spp_scale": "saturate", "spp_clamp": "sample", "spp_taylor_of": "entropy",
        "spp_fisher": "per_sample",
        "spp_importance_samples": 2048,
    },
    "sat_sample_neg_2k": {
        "spp_scale": "saturate", "spp_clamp": "sample", "spp_taylor_of": "neg_entropy",
        "spp_fisher": "per_sample",
        "spp_importance_samples": 2048,
    },
    # the default form with lam set per task by stability decay (benchmarks.auto_strength): the
    # stiffest strength, from the run's lam down, whose new-task training accuracy is at least
    # (1 - drop) times fine-tuning's
    "auto_p02": {**_SO_BF_FORM, "spp_auto_drop": 0.02},
    "auto_p05": {**_SO_BF_FORM, "spp_auto_drop": 0.05},
    "auto_p10": {**_SO_BF_FORM, "spp_auto_drop": 0.1},
    # and each task's search starting at the previous task's choice (the strength never grows)
    "auto_p02_mono": {**_SO_BF_FORM, "spp_auto_drop": 0.02, "spp_auto_monotone": True},
    "auto_p05_mono": {**_SO_BF_FORM, "spp_auto_drop": 0.05, "spp_auto_monotone": True},
    # the defaults as they stand (whatever SPPPlugin() does now), and the same form at a strength
    # tuned on validation for one stream (``--check``)
    "default": {},
    "tuned": {},
}  # fmt: skip
"""SPP option sets, by short name: ``<scale>_<clamp>_<ent|neg>[_bf: batch Fisher][_2k: 2048 samples]``."""

BASELINES = ("ewc", "si", "mas", "lwf")
"""The other regularisers, also accepted by ``--forms`` (``--lams`` is then their own strength): a
stream's references, to tell a weakness of SPP from a stream on which no regulariser helps."""


def run_one(
    stream: Stream, method: str, form: dict[str, Any], lam: float | None, seed: int, split: str = "validation"
) -> dict[str, Any]:
    train = replace(
        TrainConfig(),
        epochs=stream.epochs,
        batch_size=stream.batch_size,
        lr=stream.lr,
        optimizer=stream.optimizer,
        reset_optimizer=stream.reset_optimizer,
        single_head=stream.single_head,
        **form,
    )
    limits = {"train_limit": stream.train_limit, "eval_limit": stream.eval_limit}
    options = {k: v for k, v in limits.items() if v is not None}
    start = time.perf_counter()
    record = run_method(
        method,
        benchmark=stream.benchmark,
        seed=seed,
        train=train,
        strength=lam,
        split=split,
        n_tasks=stream.n_tasks,
        benchmark_options=options,
        on_divergence="record",
    )
    record["wall_s"] = time.perf_counter() - start
    return record


def summarize(out: Path) -> dict[str, Any]:
    """Mean ACC / BWT (in %) over seeds of every (stream, form, lam) in ``out/runs``, and ACC's std."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for path in sorted((out / "runs").glob("*.json")):
        stream, form, lam, _seed = path.stem.split("__")
        groups.setdefault((stream, form, lam), []).append(json.loads(path.read_text()))
    rows = []
    for (stream, form, lam), records in sorted(groups.items()):
        metrics = [r["metrics"] for r in records]
        rows.append({
            "stream": stream,
            "form": form,
            "lam": None if lam == "none" else float(lam[3:]),
            "seeds": len(records),
            "acc": 100 * float(np.mean([m["acc"] for m in metrics])),
            "bwt": 100 * float(np.mean([m["bwt"] for m in metrics])),
            "acc_std": 100 * sample_std([m["acc"] for m in metrics]),  # sample std (ddof 1), in the JSON only
            "diverged": sum(r.get("diverged_at_task") is not None for r in records),
            "split": records[0]["config"]["split"],
        })  # fmt: skip
    return {"rows": rows}


#: The option set ``SPPPlugin()`` uses, whose strength :func:`strength_choice` chooses.
DEFAULT_FORM = "sat_batch_so_bf"


#: The forms whose strengths :func:`write_summary` also compares side by side (the three
#: ``taylor_of``: the second-order term alone, and either sign of the first-order term).
TAYLOR_FORMS = (DEFAULT_FORM, "sat_batch_neg_bf", "sat_batch_ent_bf")


def strength_choice(
    rows: list[dict[str, Any]], form: str = DEFAULT_FORM, forms: Sequence[str] | None = None
) -> dict[str, Any]:
    """The strength with the smallest worst-case shortfall from each stream's best, for ``form``.

    Streams: those where every form was screened, at two strengths or more in all, and Naive
    forgets (its BWT below -2 points; a stream without a Naive run counts). A strength's shortfall on a stream
    is the stream's best ACC over the forms' strengths minus its ACC there (points). Candidates
    are the strengths screened on every such stream; the choice minimises the worst shortfall.
    ``forms`` (several forms) makes the candidates ``(form, strength)`` pairs instead, and the
    choice one of them.
    """
    names = tuple(forms) if forms is not None else (form,)
    streams: dict[str, dict[tuple[str, float], float]] = {}
    for row in rows:
        if row["form"] in names and row["lam"] is not None:
            streams.setdefault(row["stream"], {})[(row["form"], row["lam"])] = row["acc"]
    naive = {r["stream"]: r["bwt"] for r in rows if r["form"] == "naive"}
    streams = {
        s: a
        for s, a in streams.items()
        if len(a) >= 2 and naive.get(s, -100.0) < -2.0 and {f for f, _ in a} == set(names)
    }
    best = {s: max(a.values()) for s, a in streams.items()}
    keys = sorted({key for a in streams.values() for key in a}, key=lambda k: (names.index(k[0]), k[1]))
    table = []
    for key in keys:
        gaps = {s: best[s] - a[key] for s, a in streams.items() if key in a}
        table.append(
            {
                "form": key[0],
                "lam": key[1],
                "shortfall": gaps,
                "worst": max(gaps.values()),
                "everywhere": len(gaps) == len(streams),
            }
        )
    candidates = [r for r in table if r["everywhere"]]
    best_row = min(candidates, key=lambda r: r["worst"]) if candidates else None
    chosen = (
        None
        if best_row is None
        else (best_row["lam"] if forms is None else (best_row["form"], best_row["lam"]))
    )
    return {"form": form if forms is None else list(names), "streams": sorted(streams), "best": best,
            "table": table, "chosen": chosen}  # fmt: skip


def _choice_lines(choice: dict[str, Any], title: str) -> list[str]:
    names = choice["streams"]
    lines = [
        title,
        "",
        "Shortfall from the stream's best, in ACC points (validation).",
        "",
        "| form | lam | " + " | ".join(names) + " | worst |",
        "|---" * (len(names) + 3) + "|",
    ]
    for r in choice["table"]:
        cells = [f"{r['shortfall'][n]:.2f}" if n in r["shortfall"] else "" for n in names]
        worst = f"{r['worst']:.2f}" + ("" if r["everywhere"] else " (not screened everywhere)")
        lines.append(f"| {r['form']} | {r['lam']:g} | " + " | ".join(cells) + f" | {worst} |")
    chosen = choice["chosen"]
    text = (
        "n/a"
        if chosen is None
        else (f"lam {chosen:g}" if isinstance(chosen, float) else f"{chosen[0]} at lam {chosen[1]:g}")
    )
    return lines + ["", f"Smallest worst shortfall among those screened on every stream: {text}", ""]


def write_summary(out: Path, command: str, compare: Sequence[str] = ()) -> None:
    """``summary.json`` and ``summary.md`` of ``out``'s runs; ``compare`` (two forms or more): also the
    ``(form, lam)`` with the smallest worst shortfall over the streams where every one of them ran."""
    summary = summarize(out)
    summary["command"] = command
    # the strengths of SPPPlugin()'s form, spelled out or as "default" (the same options)
    spelled = any(row["form"] == DEFAULT_FORM for row in summary["rows"])
    choice = strength_choice(summary["rows"], form=DEFAULT_FORM if spelled else "default")
    summary["strength_choice"] = choice
    splits = sorted({row["split"] for row in summary["rows"]})
    lines = [f"Command: `{command}`", "", f"Split: {', '.join(splits)}. ACC / BWT in %, mean over seeds.", ""]
    by_stream: dict[str, list[dict[str, Any]]] = {}
    for row in summary["rows"]:
        by_stream.setdefault(row["stream"], []).append(row)
    for stream, rows in by_stream.items():
        lams = sorted({r["lam"] for r in rows if r["lam"] is not None})
        forms = sorted({r["form"] for r in rows if r["form"] != "naive"})
        naive = [r for r in rows if r["form"] == "naive"]
        lines += [f"### {stream}", ""]
        if naive:
            lines += [
                f"Naive: ACC {naive[0]['acc']:.2f}, BWT {naive[0]['bwt']:.2f} ({naive[0]['seeds']} seeds)",
                "",
            ]
        lines += ["| form | " + " | ".join(f"lam {lam:g}" for lam in lams) + " |"]
        lines += ["|---" * (len(lams) + 1) + "|"]
        for form in forms:
            cells = []
            for lam in lams:
                hit = [r for r in rows if r["form"] == form and r["lam"] == lam]
                if not hit:
                    cells.append("")
                    continue
                r = hit[0]
                mark = f" (div {r['diverged']})" if r["diverged"] else ""
                cells.append(f"{r['acc']:.2f} / {r['bwt']:.2f}{mark}")
            lines.append(f"| {form} | " + " | ".join(cells) + " |")
        lines.append("")
    if choice["table"]:
        lines += _choice_lines(choice, f"### Choosing the strength of `{choice['form']}`")
    signs = strength_choice(summary["rows"], forms=TAYLOR_FORMS)
    summary["taylor_choice"] = signs
    if signs["table"]:
        lines += _choice_lines(signs, "### The three Taylor forms side by side (`taylor_of`)")
    if compare:  # also alone in forms_choice.md, for docs/ to include
        summary["forms_choice"] = side = strength_choice(summary["rows"], forms=compare)
        forms = ", ".join(f"`{f}`" for f in compare)
        part = _choice_lines(side, f"### The forms {forms} side by side") if side["table"] else []
        (out / "forms_choice.md").write_text("\n".join([f"Command: `{command}`", "", *part]))
        lines += part
    write_json(out / "summary.json", summary)  # once, with every choice above
    (out / "summary.md").write_text("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.spp_defaults", description=__doc__)
    parser.add_argument("--streams", required=True, help=f"comma list of {sorted(STREAMS)}")
    parser.add_argument(
        "--forms", required=True, help=f"comma list of {sorted(FORMS)} or {list(BASELINES)}, or 'all'"
    )
    parser.add_argument("--lams", required=True, help="comma list of strengths")
    parser.add_argument("--seeds", default="0", help="comma list of seeds (default 0)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--split", default="validation", choices=("validation", "test"),
        help="validation (choosing defaults; the default) or test (checking the chosen ones)",
    )  # fmt: skip
    parser.add_argument("--no-naive", action="store_true", help="skip the Naive reference runs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--shard", default="0/1", help="K/N: run every N-th job from the K-th (parallel)")
    parser.add_argument(
        "--compare", default="", help="comma list of two forms or more: choose a (form, lam) among them"
    )  # fmt: skip
    args = parser.parse_args(argv)
    streams = args.streams.split(",")
    forms = sorted(FORMS) if args.forms == "all" else args.forms.split(",")
    for name, known, what in ((streams, STREAMS, "--streams"), (forms, [*FORMS, *BASELINES], "--forms")):
        unknown = sorted(set(name) - set(known))
        if unknown:
            parser.error(f"{what}: unknown {unknown}; choose from {sorted(known)}")
    try:
        lams = [float(v) for v in args.lams.split(",")]
        seeds = [int(v) for v in args.seeds.split(",")]
        shard, shards = (int(v) for v in args.shard.split("/"))
    except ValueError as error:
        parser.error(str(error))
    if not 0 <= shard < shards:
        parser.error(f"--shard {args.shard}: K must be in [0, N)")
    compare = [f for f in args.compare.split(",") if f]
    if len(compare) == 1 or set(compare) - set(FORMS):
        parser.error(f"--compare {args.compare}: give two forms or more of {sorted(FORMS)}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    jobs = []
    for stream in streams:
        for seed in seeds:
            if not args.no_naive:
                jobs.append((stream, "naive", None, seed))
            jobs += [(stream, form, lam, seed) for form in forms for lam in lams]
    names = [f"{st}__{f}__{'none' if lam is None else f'lam{lam:g}'}__seed{k}" for st, f, lam, k in jobs]
    mixed = mixed_strengths({*names, *(path.stem for path in (out / "runs").glob("*.json"))})
    if args.split == "test" and mixed:
        parser.error(f"--out {out}: {mixed}")
    (out / "runs").mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.spp_defaults " + " ".join(argv if argv is not None else sys.argv[1:])
    for index, ((stream, form, lam, seed), name) in enumerate(zip(jobs, names, strict=True)):
        if index % shards != shard:
            continue
        path = out / "runs" / f"{name}.json"
        if path.exists():
            continue
        method, options = (
            ("finetune", {}) if form == "naive" else ("spp", FORMS[form]) if form in FORMS else (form, {})
        )
        record = run_one(STREAMS[stream], method, options, lam, seed, args.split)
        record["stream"] = {"name": stream, **asdict(STREAMS[stream])}
        record["form"] = {"name": form, **options}
        write_json(path, record)
        m = record["metrics"]
        print(f"{path.stem}: ACC {100 * m['acc']:.2f} BWT {100 * m['bwt']:.2f} "
              f"({record['wall_s']:.0f} s)", flush=True)  # fmt: skip
    write_summary(out, command, compare)
    if args.split == "test":
        write_check(out, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
