"""Time SPP's hot path: the penalty per training step, and the importance pass per experience.

    python -m benchmarks.penalty_speed --out benchmarks/results/penalty_speed.json

Measures, on the paper's MLP (784-512-256, 5 heads) and on a VGG-9-sized list of tensors:
- the penalty's gradient as ``SPPPlugin`` applies it by default: ``add_spp_penalty_grad_`` adds
  ``2 lam Omega (W - W*)`` to ``W.grad`` (three fused multi-tensor kernels, no autograd);
- the penalty forward+backward with ``spp_penalty`` (fused multi-tensor kernels, one autograd node;
  the plugin's ``penalty_via="loss"``) against a per-parameter Python loop
  ``sum((omega * (w - w_star) ** 2).sum())``;
- one plain training step (forward, cross-entropy, backward) of the MLP, for scale;
- the importance pass of the MLP on ``n`` random inputs with ``fisher="per_sample"`` and ``"batch"``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from avalanche_spp.importance import entropy_importance
from avalanche_spp.penalty import add_spp_penalty_grad_, spp_penalty
from benchmarks.records import package_versions, write_json


@dataclass(frozen=True)
class SpeedConfig:
    out: str = "benchmarks/results/penalty_speed.json"  # JSON output
    repeats: int = 200  # timed repetitions of each step
    batch_size: int = 64  # training mini-batch of the reference step
    importance_samples: int = 2048  # samples of the timed importance pass
    importance_batch_size: int = 64  # its mini-batch
    threads: int = 1  # torch CPU threads
    device: str = "cpu"


def _mlp_shapes() -> list[tuple[int, ...]]:
    shapes = [(512, 784), (512,), (256, 512), (256,)]
    return shapes + [(2, 256), (2,)] * 5


def _vgg9_shapes() -> list[tuple[int, ...]]:
    convs = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256)]
    shapes: list[tuple[int, ...]] = []
    for c_in, c_out in convs:
        shapes += [(c_out, c_in, 3, 3), (c_out,), (c_out,), (c_out,)]  # conv weight, bias, BN w, b
    shapes += [(512, 256 * 4 * 4), (512,), (512, 512), (512,)] + [(10, 512), (10,)] * 5
    return shapes


def _time(step: Callable[[], None], repeats: int, device: str) -> float:
    for _ in range(5):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1e3


def penalty_timings(shapes: Sequence[tuple[int, ...]], config: SpeedConfig) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).to(config.device).requires_grad_() for s in shapes]
    anchors = [p.detach() + 0.01 for p in params]
    omegas = [torch.rand(s, generator=gen).to(config.device) for s in shapes]

    for p in params:
        p.grad = torch.zeros_like(p)

    def gradient() -> None:
        add_spp_penalty_grad_(params, anchors, omegas, 1.0)

    def fused() -> None:
        spp_penalty(params, anchors, omegas).backward()

    def loop() -> None:
        sum((o * (p - a) ** 2).sum() for p, a, o in zip(params, anchors, omegas, strict=True)).backward()

    return {
        "n_tensors": len(shapes),
        "n_scalars": sum(p.numel() for p in params),
        "gradient_ms": _time(gradient, config.repeats, config.device),
        "fused_ms": _time(fused, config.repeats, config.device),
        "python_loop_ms": _time(loop, config.repeats, config.device),
    }


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 2))


def training_step_ms(config: SpeedConfig) -> float:
    torch.manual_seed(0)
    model = _mlp().to(config.device)
    x = torch.rand(config.batch_size, 784, device=config.device)
    y = torch.randint(0, 2, (config.batch_size,), device=config.device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return _time(step, config.repeats, config.device)


def importance_timings(config: SpeedConfig) -> dict[str, float]:
    torch.manual_seed(0)
    model = _mlp().to(config.device)
    x = torch.rand(config.importance_samples, 784, device=config.device)
    batches = x.split(config.importance_batch_size)
    result = {}
    for fisher in ("per_sample", "batch"):
        entropy_importance(model, batches[:2], fisher=fisher)  # warm-up
        start = time.perf_counter()
        entropy_importance(model, batches, fisher=fisher)
        result[f"{fisher}_s"] = time.perf_counter() - start
        result[f"{fisher}_samples_per_s"] = config.importance_samples / result[f"{fisher}_s"]
    return result


def markdown(result: dict) -> str:
    """The measured timings as a markdown table (``<out>.md``, included by docs/results.md)."""
    lines = [
        "| tensors | weights | penalty gradient (ms) | penalty autograd (ms) | Python loop (ms) |",
        "|---|---|---|---|---|",
    ]
    for label in ("penalty_mlp", "penalty_vgg9"):
        row = result[label]
        name = "paper's MLP" if label == "penalty_mlp" else "VGG-9-sized"
        lines.append(
            f"| {name}, {row['n_tensors']} | {row['n_scalars']:,} | {row['gradient_ms']:.2f} | "
            f"{row['fused_ms']:.2f} | {row['python_loop_ms']:.2f} |"
        )
    importance = result["importance_mlp"]
    lines += [
        "",
        f"One MLP training step (forward, loss, backward, SGD step; batch "
        f"{result['config']['batch_size']}): {result['mlp_training_step_ms']:.2f} ms. Importance pass on "
        f"the MLP: {importance['per_sample_samples_per_s']:,.0f} samples/s with the per-sample Fisher, "
        f"{importance['batch_samples_per_s']:,.0f} samples/s with the batch Fisher "
        f"(threads: {result['config']['threads']}).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.penalty_speed", description=__doc__)
    defaults = SpeedConfig()
    parser.add_argument("--out", default=defaults.out)
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--device", default=defaults.device)
    args = parser.parse_args(argv)
    config = SpeedConfig(out=args.out, repeats=args.repeats, threads=args.threads, device=args.device)
    torch.set_num_threads(config.threads)
    result = {
        "config": asdict(config),
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "versions": package_versions(),
        "penalty_mlp": penalty_timings(_mlp_shapes(), config),
        "penalty_vgg9": penalty_timings(_vgg9_shapes(), config),
        "mlp_training_step_ms": training_step_ms(config),
        "importance_mlp": importance_timings(config),
    }
    write_json(config.out, result)
    Path(config.out).with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    mlp = result["penalty_mlp"]
    print(
        f"MLP penalty gradient {mlp['gradient_ms']:.3f} ms, autograd {mlp['fused_ms']:.3f} ms, "
        f"loop {mlp['python_loop_ms']:.3f} ms; "
        f"training step {result['mlp_training_step_ms']:.3f} ms; "
        f"VGG-9 penalty gradient {result['penalty_vgg9']['gradient_ms']:.3f} ms, autograd "
        f"{result['penalty_vgg9']['fused_ms']:.3f} ms, loop "
        f"{result['penalty_vgg9']['python_loop_ms']:.3f} ms; importance "
        f"{result['importance_mlp']['per_sample_samples_per_s']:.0f} samples/s (per_sample), "
        f"{result['importance_mlp']['batch_samples_per_s']:.0f} samples/s (batch) -> {config.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
