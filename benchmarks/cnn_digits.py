"""A CNN stream that runs in seconds: a narrow VGG-9 on split 8x8 digits, SPP at several strengths.

    python -m benchmarks.cnn_digits --lams 0,3,10,30,100 --seeds 0,1,2,3,4 \\
        --out docs/results/cnn_digits/summary.json

The paper's trunk (VGG-9, fewer channels) with one head per task, on scikit-learn's bundled digits
as 3x8x8 images (task ``t``: digits ``2t`` and ``2t + 1``; 1,200 training and 597 test images,
one fixed split), SGD lr 0.01 with momentum 0.9, batch 32, 3 epochs per task. ``lam`` 0 is Naive
(no plugin); any other is ``SPPPlugin(lam=...)`` with its other defaults. Per strength: ACC and BWT
of every seed (test split, after each task) and their medians: one run that loses every task
while it learns the last one does not decide them. ``tests/test_spp_vs_naive.py`` runs the same
stream. No validation split: a diagnosis of how much stiffness a CNN wants, not a tuned result.
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


def digit_images(n_tasks: int = 5) -> Any:
    """Split digits as 3x8x8 images (task t: digits 2t, 2t+1), 1,200 train / 597 test, task labels."""
    from avalanche.benchmarks import nc_benchmark
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as tensors
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None].expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = order[:1200], order[1200:]
    return nc_benchmark(
        tensors(x[train], y[train]), tensors(x[test], y[test]), n_experiences=n_tasks, task_labels=True,
        seed=0, fixed_class_order=list(range(10)), class_ids_from_zero_in_each_exp=True,
    )  # fmt: skip


def cnn_run(plugins: list[Any], seed: int) -> np.ndarray:
    """A narrow VGG-9, one head per task, trained with ``plugins``; returns ``P[j][i]`` (test)."""
    from avalanche.training import Naive

    from benchmarks.cnn import MultiHeadCNN, TaskHeads
    from benchmarks.trunks import VGG9Features, _linear_head

    torch.manual_seed(seed)
    stream = digit_images()
    trunk = VGG9Features((3, 8, 8), dropout=0.0, channels=(16, 16, 32, 32, 64, 64), hidden=128)
    model = MultiHeadCNN(trunk, TaskHeads(functools.partial(_linear_head, 128), initial_classes=2))
    strategy = Naive(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
        criterion=torch.nn.CrossEntropyLoss(), train_mb_size=32, train_epochs=3, plugins=plugins,
        evaluator=None,
    )  # fmt: skip
    n = len(stream.train_stream)
    matrix = np.zeros((n, n))
    for j, experience in enumerate(stream.train_stream):
        strategy.train(experience)
        model.eval()
        with torch.no_grad():
            for i in range(j + 1):
                data = stream.test_stream[i].dataset
                x = torch.stack([data[k][0] for k in range(len(data))])
                y = torch.tensor([data[k][1] for k in range(len(data))])
                matrix[j, i] = (model.forward_single_task(x, i).argmax(1) == y).float().mean().item()
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


def measure(lam: float, seeds: Sequence[int], mask_mean: str = "all") -> dict[str, Any]:
    """ACC / BWT (in %) of every seed at one strength, and their medians."""
    metrics = [all_metrics(cnn_run(plugins_for(lam, mask_mean)(), seed)) for seed in seeds]
    acc = [100 * m["acc"] for m in metrics]
    bwt = [100 * m["bwt"] for m in metrics]
    return {
        "lam": lam, "seeds": list(seeds), "acc": acc, "bwt": bwt,
        "median_acc": float(np.median(acc)), "median_bwt": float(np.median(bwt)),
    }  # fmt: skip


def render(result: dict[str, Any]) -> str:
    lines = [
        f"Command: `{result['command']}` (test split; lam 0 is Naive; mask mean "
        f"{result.get('mask_mean', 'all')}).",
        "",
        "| lam | ACC per seed (%) | BWT per seed (%) | median ACC / BWT |",
        "|---|---|---|---|",
    ]
    for row in result["rows"]:
        acc = " ".join(f"{v:.1f}" for v in row["acc"])
        bwt = " ".join(f"{v:.1f}" for v in row["bwt"])
        lines.append(
            f"| {row['lam']:g} | {acc} | {bwt} | {row['median_acc']:.1f} / {row['median_bwt']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cnn_digits", description=__doc__)
    parser.add_argument("--lams", default="0,3,100", help="comma list of strengths; 0 is Naive")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma list of seeds")
    parser.add_argument("--out", required=True, help="JSON output (a .md table is written beside it)")
    parser.add_argument(
        "--mask-mean", default="all", choices=("all", "median", "tensor"),
        help="the saturating mask's m: all (SPPPlugin's mean), or a harness variant's",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        lams = [float(v) for v in args.lams.split(",")]
        seeds = [int(v) for v in args.seeds.split(",")]
    except ValueError as error:
        parser.error(f"--lams and --seeds must be comma lists of numbers: {error}")
    if any(not np.isfinite(lam) or lam < 0 for lam in lams):
        parser.error(f"--lams must be finite and >= 0, got {args.lams}")
    torch.set_num_threads(1)
    command = "python -m benchmarks.cnn_digits " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for lam in lams:  # written after each strength: a run cut short keeps what it measured
        rows.append(measure(lam, seeds, args.mask_mean))
        print(
            f"lam {lam:g}: median ACC {rows[-1]['median_acc']:.1f}, BWT {rows[-1]['median_bwt']:.1f}",
            flush=True,
        )
        result = {"command": command, "mask_mean": args.mask_mean, "rows": rows}
        out.write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
