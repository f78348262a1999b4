"""How far each tensor's mean importance is from the mean over all of them, and what that does to the mask.

``python -m benchmarks.mask_means TASK_PT OUT_JSON`` reads the ``omega`` that ``python -m
benchmarks.run --save-tensors`` saved after a task (``tensors/<method>_seed<k>/task<t>.pt``) and
writes, per parameter tensor, its mean ``Omega`` over the global mean ``m`` and the mean of the
saturating mask ``Omega / (Omega + m)`` with ``m`` global (the library) and per tensor
(``SPPVariantPlugin(mask_mean="tensor")``). Used in docs/method.md, section 4.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from avalanche_spp.penalty import mean_importance, scaled_importance
from benchmarks.spp_variants import per_tensor_mask


def mask_means(omega: dict[str, Tensor]) -> dict[str, Any]:
    """The global mean ``m`` and, per tensor, its mean over ``m`` and its mean mask both ways."""
    count = sum(v.numel() for v in omega.values())
    if count == 0:
        raise ValueError("no importance to summarise: omega holds no scalars")
    m = mean_importance(omega.values())
    rows = {}
    for name, value in omega.items():
        value = value.double()
        rows[name] = {
            "n": value.numel(),
            "mean_over_global_mean": mean_importance([value]) / m if m > 0 else float("nan"),
            "mean_mask_global_m": float(scaled_importance(value, "saturate", m).mean()),
            "mean_mask_tensor_m": float(per_tensor_mask(value).mean()),
        }
    return {"global_mean": m, "n": count, "tensors": rows}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m benchmarks.mask_means TASK_PT OUT_JSON", file=sys.stderr)
        return 2
    source, out = Path(args[0]), Path(args[1])
    if not source.is_file():
        print(
            f"error: {source} not found: run `python -m benchmarks.run ... --save-tensors` first",
            file=sys.stderr,
        )
        return 2
    summary = {"source": str(source), **mask_means(torch.load(source, weights_only=False)["omega"])}
    out.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
