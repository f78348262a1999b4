"""Where the forgetting that no strength removes lives: the weights SPP's clamp sets to ``Omega = 0``.

    python -m benchmarks.zero_importance --out docs/results/zero_importance

Two tasks of permuted Fashion-MNIST (task 0 unpermuted, task 1 one seeded pixel permutation; the
same ``train_limit`` samples, default 3000, for both), the paper's 784-512-256 MLP with one head per
task, SGD lr 0.01 momentum 0.9, batch 128, 2 epochs per task, written as a plain PyTorch loop with
the library's importance and saturating mask (``M = Omega / (Omega + m)``). After task 1, learned
under ``lam * sum M (W - W*)**2``, the trunk's weights of one group are put back to ``W*`` (task 0's
weights) and task 0's test accuracy is measured again: the group whose reset restores it holds the
forgetting. Groups: ``Omega == 0`` (clamped), ``M < 0.1``, ``M >= 0.5``, everything. For every
``taylor_of`` and ``lam`` given. Writes ``<out>/zero_importance.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avalanche_spp.importance import TAYLOR_OF, entropy_importance
from avalanche_spp.penalty import mean_importance, scaled_importance
from benchmarks.models import mlp_trunk
from benchmarks.records import write_json
from benchmarks.streams import default_data_root
from benchmarks.tensor_data import _load_fashion_mnist

GROUPS = {
    "omega == 0": lambda omega, mask: omega == 0,
    "M < 0.1": lambda omega, mask: mask < 0.1,
    "M >= 0.5": lambda omega, mask: mask >= 0.5,
    "all": lambda omega, mask: torch.ones_like(mask, dtype=torch.bool),
}


def _data(arrays: Any, train_limit: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One seed's training subset, the test set and task 1's permutation, from the loaded arrays."""
    rows = np.random.RandomState(seed).choice(len(arrays.train_y), train_limit, replace=False)
    x = arrays.train_x[torch.from_numpy(rows)].reshape(train_limit, -1).float() * arrays.scale
    x_test = arrays.test_x.reshape(len(arrays.test_y), -1).float() * arrays.scale
    permutation = torch.from_numpy(np.random.RandomState(seed + 1).permutation(784))
    return x, arrays.train_y[torch.from_numpy(rows)], x_test, arrays.test_y, permutation


def one_run(data: tuple, taylor_of: str, lam: float, seed: int, epochs: int = 2) -> dict:
    """Task 0, its importance, task 1 under the penalty, then task 0's accuracy with each group reset."""
    x, y, x_test, y_test, permutation = data
    torch.manual_seed(seed)
    trunk, heads = mlp_trunk(784), nn.ModuleList([nn.Linear(256, 10), nn.Linear(256, 10)])
    inputs = (x, x[:, permutation])

    def accuracy() -> float:
        with torch.no_grad():
            return 100 * float((heads[0](trunk(x_test)).argmax(1) == y_test).float().mean())

    def train(task: int, penalty) -> None:
        optimizer = torch.optim.SGD([*trunk.parameters(), *heads[task].parameters()], lr=0.01, momentum=0.9)
        order_rng = torch.Generator().manual_seed(seed * 10 + task)
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=order_rng)
            for start in range(0, len(y), 128):
                batch = order[start : start + 128]
                loss = F.cross_entropy(heads[task](trunk(inputs[task][batch])), y[batch]) + penalty()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

    train(0, lambda: 0.0)
    before = accuracy()
    model = nn.Sequential(trunk, heads[0])
    omega_all = entropy_importance(model, list(x.split(256)), taylor_of=taylor_of)
    omega = {n[2:]: o for n, o in omega_all.items() if n.startswith("0.")}  # the trunk's
    m = mean_importance(omega.values())
    mask = {n: scaled_importance(o, "saturate", m) for n, o in omega.items()}
    anchor = {n: p.detach().clone() for n, p in trunk.named_parameters()}
    train(1, lambda: lam * sum((mask[n] * (p - anchor[n]) ** 2).sum() for n, p in trunk.named_parameters()))
    moved = {n: p.detach().clone() for n, p in trunk.named_parameters()}
    record = {
        "taylor_of": taylor_of,
        "lam": lam,
        "seed": seed,
        "task0_before": before,
        "task0_after": accuracy(),
    }
    total = sum(o.numel() for o in omega.values())
    record["share_zero"] = 100 * sum(int((o == 0).sum()) for o in omega.values()) / total
    for group, select in GROUPS.items():
        chosen = {n: select(omega[n], mask[n]) for n in omega}
        with torch.no_grad():
            for n, p in trunk.named_parameters():
                p.copy_(torch.where(chosen[n], anchor[n], moved[n]))
            record[f"reset {group}"] = accuracy()
            for n, p in trunk.named_parameters():
                p.copy_(moved[n])
        record[f"share {group}"] = 100 * sum(int(c.sum()) for c in chosen.values()) / total
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.zero_importance", description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--taylor-of", default="neg_entropy,second_order", help=f"comma list of {TAYLOR_OF}")
    parser.add_argument("--lams", default="0.5,3,100")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--train-limit", type=int, default=3000)
    parser.add_argument("--data-root", default=None, help="default: benchmarks.streams.default_data_root()")
    args = parser.parse_args(argv)
    forms = args.taylor_of.split(",")
    for form in forms:
        if form not in TAYLOR_OF:
            parser.error(f"--taylor-of: {form!r} is not one of {list(TAYLOR_OF)}")
    torch.set_num_threads(1)
    rows = []
    root = Path(args.data_root) if args.data_root else default_data_root()
    arrays = _load_fashion_mnist(root, download=False)  # loaded once, every seed draws from it
    for seed in (int(s) for s in args.seeds.split(",")):
        data = _data(arrays, args.train_limit, seed)
        for form in forms:
            for lam in (float(v) for v in args.lams.split(",")):
                rows.append(one_run(data, form, lam, seed))
                print(
                    {k: round(v, 2) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True
                )
    out = Path(args.out)
    command = " ".join(["python -m benchmarks.zero_importance", *(sys.argv[1:] if argv is None else argv)])
    write_json(out / "zero_importance.json", {"command": command, "runs": rows})
    keys = ["task0_before", "task0_after", *(f"reset {g}" for g in GROUPS)]
    lines = [
        "Task 0's test accuracy (%) after task 1, and after resetting one group of the trunk's weights to W*",
        f"(mean over seeds {args.seeds}; share of the trunk's weights in each group in brackets).",
        "",
        "| taylor_of | lam | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for form in forms:
        for lam in sorted({r["lam"] for r in rows}):
            group = [r for r in rows if r["taylor_of"] == form and r["lam"] == lam]
            cells = []
            for key in keys:
                cell = f"{np.mean([r[key] for r in group]):.2f}"
                if key.startswith("reset"):
                    cell += f" ({np.mean([r['share ' + key[6:]] for r in group]):.1f}%)"
                cells.append(cell)
            lines.append(f"| {form} | {lam:g} | " + " | ".join(cells) + " |")
    (out / "zero_importance.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
