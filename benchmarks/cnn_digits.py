"""CNN streams: a narrow VGG-9 learning split digits or split Fashion-MNIST, SPP at several strengths.

    python -m benchmarks.cnn_digits --lams 0,3,10,30,100 --seeds 0,1,2,3,4 \\
        --out docs/results/cnn_digits/summary.json
    python -m benchmarks.cnn_digits --stream fmnist --split validation --lams 0,1,3,5,10,30,100 \\
        --seeds 0 --out docs/results/cnn_fmnist/validation_sgd.json

The paper's trunk (VGG-9 with BN, fewer channels: 16-16-32-32-64-64, fc 128) with one head per
task, task ``t`` the classes ``2t`` and ``2t + 1``, SGD lr 0.01 with momentum 0.9 (or Adam lr 1e-3).

* ``digits`` (default): scikit-learn's bundled digits as 3x8x8 images (1,200 training and 597 test
  images, one fixed split; no validation split), batch 32, 3 epochs per task: a toy that runs in
  seconds (``tests/test_spp_vs_naive.py`` runs it), with about 24 steps per task.
* ``fmnist``: Fashion-MNIST as 1x28x28 images, ``--train-limit`` training images per task (default
  4,000 of the 12,000, drawn once with seed 0), batch 128, 2 epochs per task. ``--split
  validation`` evaluates on 1,000 other training images per task (for choosing), ``test`` on the
  2,000 test images per task. Both take half of a task's images from each of its two classes.

``--scenario class``: class-incremental instead, as most Avalanche scripts run split data: one
10-way head (a plain ``nn.Sequential``), no task labels, each task's images with their own class.

``lam`` 0 is Naive (no plugin); any other is ``SPPPlugin(lam=...)`` with its other defaults. Per
strength: ACC and BWT of every seed (after each task) and their medians and means: one run that
loses every task while it learns the last one does not decide the medians.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avalanche_spp import SPPPlugin
from avalanche_spp.metrics import all_metrics

STREAMS = ("digits", "fmnist")

SCENARIOS = ("task", "class")  # one head per task with task labels, or one 10-way head and none

SPLITS = ("test", "validation")

FMNIST_TRAIN_LIMIT = 4000  # training images per task (of 12,000)

FMNIST_VALIDATION = 1000  # validation images per task (half per class), from the rest of the training set


def _tasks(
    train: tuple[torch.Tensor, torch.Tensor],
    evaluation: tuple[torch.Tensor, torch.Tensor],
    scenario: str = "task",
) -> Any:
    """Five two-class tasks (task t: classes 2t, 2t+1): with task labels and classes from 0 in each
    (``scenario="task"``), or class-incremental, no task labels and the ten classes' own labels."""
    from avalanche.benchmarks import nc_benchmark
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as tensors

    task = scenario == "task"
    return nc_benchmark(
        tensors(*train), tensors(*evaluation), n_experiences=5, task_labels=task, seed=0,
        fixed_class_order=list(range(10)), class_ids_from_zero_in_each_exp=task,
    )  # fmt: skip


def digit_images(scenario: str = "task") -> Any:
    """Split digits as 3x8x8 images (task t: digits 2t, 2t+1), 1,200 train / 597 test (``scenario``:
    as :func:`_tasks`)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None].expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = order[:1200], order[1200:]
    return _tasks((x[train], y[train]), (x[test], y[test]), scenario)


@functools.lru_cache(maxsize=2)
def fmnist_images(split: str = "test", train_limit: int = FMNIST_TRAIN_LIMIT, scenario: str = "task") -> Any:
    """Split Fashion-MNIST as 1x28x28 images: ``train_limit`` training images per task, evaluated
    on the test set (``split="test"``) or on ``FMNIST_VALIDATION`` other training images per task."""
    from benchmarks.streams import default_data_root
    from benchmarks.tensor_data import _load_fashion_mnist

    arrays = _load_fashion_mnist(default_data_root())
    x = (arrays.train_x.float() / arrays.scale).view(-1, 1, 28, 28)
    order = torch.randperm(len(arrays.train_y), generator=torch.Generator().manual_seed(0))
    train, held_out, n_held = [], [], FMNIST_VALIDATION // 2  # validation images per class
    for task in range(5):  # stratified: each class gives half the task's images (the first the odd one)
        for c, n_train in ((2 * task, (train_limit + 1) // 2), (2 * task + 1, train_limit // 2)):
            mine = order[arrays.train_y[order] == c]
            if len(mine) < n_train + n_held:
                raise ValueError(
                    f"--train-limit {train_limit} leaves fewer than {FMNIST_VALIDATION} validation images "
                    f"for task {task} ({2 * len(mine)} training images); use at most "
                    f"{max(0, 2 * (len(mine) - n_held))}"
                )
            train.append(mine[:n_train])
            held_out.append(mine[n_train : n_train + n_held])
    train_idx = torch.cat(train)
    if split == "validation":
        held = torch.cat(held_out)
        evaluation = (x[held], arrays.train_y[held])
    else:
        evaluation = ((arrays.test_x.float() / arrays.scale).view(-1, 1, 28, 28), arrays.test_y)
    return _tasks((x[train_idx], arrays.train_y[train_idx]), evaluation, scenario)


def cnn_run(
    plugins: list[Any], seed: int, stream: str = "digits", split: str = "test", optimizer: str = "sgd",
    train_limit: int = FMNIST_TRAIN_LIMIT, epochs: int | None = None, scenario: str = "task",
) -> np.ndarray:  # fmt: skip
    """A narrow VGG-9 trained with ``plugins``, one head per task (``scenario="task"``) or one 10-way
    head (``"class"``); returns ``P[j][i]`` on ``split`` (``epochs`` per task: None for the stream's
    own, 3 for digits and 2 for fmnist)."""
    from avalanche.training import Naive

    from benchmarks.cnn import MultiHeadCNN, TaskHeads
    from benchmarks.trunks import VGG9Features, _linear_head

    torch.manual_seed(seed)
    if stream == "digits":
        tasks, shape, batch, own_epochs = digit_images(scenario), (3, 8, 8), 32, 3
    else:
        tasks, shape, batch, own_epochs = fmnist_images(split, train_limit, scenario), (1, 28, 28), 128, 2
    trunk = VGG9Features(shape, dropout=0.0, channels=(16, 16, 32, 32, 64, 64), hidden=128)
    if scenario == "task":
        model = MultiHeadCNN(trunk, TaskHeads(functools.partial(_linear_head, 128), initial_classes=2))
    else:  # a plain nn.Module, as class-incremental Avalanche scripts use
        model = torch.nn.Sequential(trunk, _linear_head(128, 10))
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    strategy = Naive(
        model=model, optimizer=opt, criterion=torch.nn.CrossEntropyLoss(), train_mb_size=batch,
        train_epochs=epochs or own_epochs, plugins=plugins, evaluator=None,
    )  # fmt: skip
    n = len(tasks.train_stream)
    matrix = np.zeros((n, n))
    for j, experience in enumerate(tasks.train_stream):
        strategy.train(experience)
        model.eval()
        with torch.no_grad():
            for i in range(j + 1):
                data = tasks.test_stream[i].dataset
                x = torch.stack([data[k][0] for k in range(len(data))])
                y = torch.tensor([data[k][1] for k in range(len(data))])
                logits = model.forward_single_task(x, i) if scenario == "task" else model(x)
                matrix[j, i] = (logits.argmax(1) == y).float().mean().item()
    return matrix


def plugins_for(lam: float, mask_mean: str = "all") -> Callable[[], list[Any]]:
    """No plugin for ``lam == 0`` (Naive), else ``SPPPlugin(lam=lam)`` (``mask_mean`` other than
    ``"all"``: the harness's ``SPPVariantPlugin`` with that mask mean)."""
    if lam == 0:
        return lambda: []
    if mask_mean == "all":
        return lambda: [SPPPlugin(lam=lam)]
    from benchmarks.spp_variants import SPPVariantPlugin

    return lambda: [SPPVariantPlugin(lam, mask_mean=mask_mean)]


def measure(lam: float, seeds: Sequence[int], mask_mean: str = "all", **run: Any) -> dict[str, Any]:
    """ACC / BWT (in %) of every seed at one strength, their medians and means (``run``: the
    stream's options of :func:`cnn_run`)."""
    metrics = [all_metrics(cnn_run(plugins_for(lam, mask_mean)(), seed, **run)) for seed in seeds]
    acc = [100 * m["acc"] for m in metrics]
    bwt = [100 * m["bwt"] for m in metrics]
    return {
        "lam": lam, "seeds": list(seeds), "acc": acc, "bwt": bwt,
        "median_acc": float(np.median(acc)), "median_bwt": float(np.median(bwt)),
        "mean_acc": float(np.mean(acc)), "mean_bwt": float(np.mean(bwt)),
    }  # fmt: skip


def render(result: dict[str, Any]) -> str:
    """The table of ``result``: every seed, medians, means, and each strength's shortfall from the
    best mean ACC of the SPP strengths (``lam > 0``; Naive has none)."""
    best = max((np.mean(r["acc"]) for r in result["rows"] if r["lam"] > 0), default=np.nan)
    scenario = (
        f"; scenario {result['scenario']}: one 10-way head, no task labels" if "scenario" in result else ""
    )
    lines = [
        "Command: "
        + "; ".join(f"`{c}`" for c in result.get("commands", [result["command"]]))
        + f" ({result.get('split', 'test')} split; lam 0 is Naive; mask mean "
        + f"{result.get('mask_mean', 'all')}{scenario}).",
        "",
        "| lam | ACC per seed (%) | BWT per seed (%) | median ACC / BWT | mean ACC / BWT | shortfall |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        acc = " ".join(f"{v:.1f}" for v in row["acc"])
        bwt = " ".join(f"{v:.1f}" for v in row["bwt"])
        shortfall = f"{best - np.mean(row['acc']):.2f}" if row["lam"] > 0 else ""
        lines.append(
            f"| {row['lam']:g} | {acc} | {bwt} | {row['median_acc']:.1f} / {row['median_bwt']:.1f} "
            f"| {np.mean(row['acc']):.2f} / {np.mean(row['bwt']):.2f} | {shortfall} |"
        )
    return "\n".join(lines) + "\n"


def _options(argv: Sequence[str] | None) -> tuple[argparse.Namespace, dict[str, Any], list[float], list[int]]:
    """The command line: its namespace, the stream's options of :func:`cnn_run`, strengths, seeds."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cnn_digits", description=__doc__)
    parser.add_argument("--lams", default="0,3,100", help="comma list of strengths; 0 is Naive")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma list of seeds")
    parser.add_argument("--out", required=True, help="JSON output (a .md table is written beside it)")
    parser.add_argument(
        "--mask-mean", default="all", choices=("all", "median", "tensor", "reached"),
        help="the saturating mask's m: all (SPPPlugin's mean), or a harness variant's",
    )  # fmt: skip
    parser.add_argument("--stream", default="digits", choices=STREAMS, help="digits (toy) or fmnist")
    parser.add_argument(
        "--scenario", default="task", choices=SCENARIOS,
        help="task: one head per task, task labels (default); class: one 10-way head, no task labels",
    )  # fmt: skip
    parser.add_argument("--split", default="test", choices=SPLITS, help="fmnist only: validation")
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    parser.add_argument("--train-limit", type=int, help=f"fmnist only (default {FMNIST_TRAIN_LIMIT})")
    parser.add_argument("--epochs", type=int, help="epochs per task (default: digits 3, fmnist 2)")
    parser.add_argument(
        "--resume", action="store_true",
        help="keep the strengths --out already holds (same stream, options and seeds) and add the others",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.stream == "digits" and (args.split != "test" or args.train_limit is not None):
        parser.error("--split validation and --train-limit apply to --stream fmnist only (digits: one split)")
    if args.train_limit is not None and args.train_limit < 1:
        parser.error(f"--train-limit must be a positive number of images per task, got {args.train_limit}")
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be a positive number of epochs per task, got {args.epochs}")
    run = {"stream": args.stream, "split": args.split, "optimizer": args.optimizer, "epochs": args.epochs}
    if args.scenario != "task":  # kept out of the task-incremental results' settings, as before it existed
        run["scenario"] = args.scenario
    run["train_limit"] = args.train_limit or FMNIST_TRAIN_LIMIT
    if args.stream == "fmnist":
        try:
            # built once (cached); refused here if too large
            fmnist_images(args.split, run["train_limit"], args.scenario)
        except ValueError as error:
            parser.error(str(error))
    try:
        lams = [float(v) for v in args.lams.split(",")]
        seeds = [int(v) for v in args.seeds.split(",")]
    except ValueError as error:
        parser.error(f"--lams and --seeds must be comma lists of numbers: {error}")
    if any(not np.isfinite(lam) or lam < 0 for lam in lams):
        parser.error(f"--lams must be finite and >= 0, got {args.lams}")
    try:
        kept = _kept(Path(args.out), {"mask_mean": args.mask_mean, **run}, seeds) if args.resume else ([], {})
    except ValueError as error:
        parser.error(str(error))
    return args, run, lams, seeds, kept


def _kept(out: Path, settings: dict[str, Any], seeds: list[int]) -> tuple[list[str], dict[float, Any]]:
    """``--resume``: the commands and the rows (by strength) of an earlier run of the same stream."""
    if not out.exists():
        return [], {}
    old = json.loads(out.read_text())
    differ = [key for key, value in settings.items() if old.get(key) != value]
    if any(row["seeds"] != seeds for row in old["rows"]):
        differ.append("seeds")
    if differ:
        raise ValueError(
            f"--resume: {out} holds runs whose "
            f"{', '.join(differ)} differ from this command's; use another --out"
        )
    return old.get("commands", [old["command"]]), {row["lam"]: row for row in old["rows"]}


def main(argv: Sequence[str] | None = None) -> int:
    args, run, lams, seeds, (commands, rows) = _options(argv)
    torch.set_num_threads(1)
    command = "python -m benchmarks.cnn_digits " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"mask_mean": args.mask_mean, **run}
    for lam in lams:  # written after each strength: a run cut short keeps what it measured
        if lam in rows:
            continue
        rows[lam] = measure(lam, seeds, args.mask_mean, **run)
        print(
            f"lam {lam:g}: median ACC {rows[lam]['median_acc']:.1f}, BWT {rows[lam]['median_bwt']:.1f}",
            flush=True,
        )
        result = {
            "command": command,
            "commands": [*commands, command],
            **settings,
            "rows": [rows[k] for k in sorted(rows)],
        }
        out.write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
