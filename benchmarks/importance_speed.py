"""Time SPP's importance pass against a training epoch, on the paper's MLP, VGG-9 and ResNet-18.

    python -m benchmarks.importance_speed --out docs/results/importance_speed/cpu.json
    python -m benchmarks.importance_speed --device cuda --out docs/results/importance_speed/cuda.json

For every model, on random inputs of the model's image size (throughput does not depend on the
pixel values):
- ``train``: images per second of a training step (forward, cross-entropy, backward, SGD step with
  momentum) on one head, model in train mode, at the training batch size;
- one row per importance form (``clamp`` x ``fisher``, with ``--per-sample-backend``, ``auto`` by
  default: the ``nn.Linear`` shortcut for the per-sample Fisher where it holds): images per second
  of :func:`avalanche_spp.importance.entropy_importance`
  and ``epochs``, the cost of a pass over an experience in training epochs of the same data
  (``train images/s / importance images/s``);
- the importance batch (``--importance-batch-size``, the plugin's 256) goes through the model in
  chunks of the training batch, as ``SPPPlugin`` sends it (``--whole-batches``: in one piece);
- ``penalty_ms``: one call of ``add_spp_penalty_grad_`` over all parameters (the plugin's default
  penalty path), and, on a GPU, peak memory per importance form.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from avalanche_spp.importance import DEFAULT_TAYLOR_OF, PER_SAMPLE_BACKENDS, TAYLOR_OF, entropy_importance
from avalanche_spp.penalty import add_spp_penalty_grad_
from benchmarks.trunks import VGG9Features, _hidden_head, _linear_head, resnet18_features

# No Avalanche import here: the script also runs on machines that only have PyTorch (a GPU box).

FORMS = (
    ("experience", "per_sample"),
    ("experience", "batch"),
    ("batch", "per_sample"),
    ("batch", "batch"),
    ("sample", "per_sample"),
)
"""The importance forms timed: ``(clamp, fisher)``."""


@dataclass(frozen=True)
class ImportanceSpeedConfig:
    out: str = "docs/results/importance_speed/cpu.json"  # JSON output
    device: str = "cpu"  # torch device
    models: tuple[str, ...] = ("mlp", "vgg9", "resnet18")  # which models
    vgg_size: int = 32  # VGG-9 image side (the paper's five data sets / CIFAR-100: 32)
    resnet_size: int = 64  # ResNet-18 image side (the paper's Caltech-101: 224)
    train_batch_size: int = 64  # training mini-batch
    importance_batch_size: int = 256  # importance mini-batch (the plugin's default)
    samples: int = 512  # images per timed importance pass (per form)
    train_steps: int = 10  # timed training steps
    threads: int = 1  # torch CPU threads
    per_sample_backend: str = "auto"  # entropy_importance's per_sample_backend
    taylor_of: str = DEFAULT_TAYLOR_OF  # entropy_importance's taylor_of (the cost is the same for each)
    training_chunks: bool = True  # as SPPPlugin: importance batches go through in training-batch chunks


class _FiveHeads(nn.Module):
    """A trunk and five 2-class heads, as the benchmark models (``forward(x, task)``: one head)."""

    def __init__(self, trunk: nn.Module, head: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.features = trunk
        self.heads = nn.ModuleList(head() for _ in range(5))

    def forward(self, x: Tensor, task: int) -> Tensor:
        return self.heads[task](self.features(x))


def build(name: str, config: ImportanceSpeedConfig) -> tuple[nn.Module, tuple[int, ...]]:
    """The model (the paper's trunk, 5 heads of 2 classes) and its input shape."""
    if name == "mlp":  # the paper's 784-512-256 MLP
        trunk = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU())
        return _FiveHeads(trunk, lambda: nn.Linear(256, 2)), (784,)
    if name == "vgg9":
        shape = (3, config.vgg_size, config.vgg_size)
        trunk = VGG9Features(shape)
        return _FiveHeads(trunk, lambda: _linear_head(trunk.out_features, 2)), shape
    shape = (3, config.resnet_size, config.resnet_size)
    trunk = resnet18_features()
    return _FiveHeads(trunk, lambda: _hidden_head(trunk.out_features, 2048, 0.5, 2)), shape


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rate(run: Callable[[], None], images: int, device: str, repeats: int = 1) -> float:
    run()  # warm-up (kernels, caches, vmap tracing)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    _sync(device)
    return images * repeats / (time.perf_counter() - start)


def measure_model(name: str, config: ImportanceSpeedConfig) -> dict[str, Any]:
    device = config.device
    model, shape = build(name, config)
    model.to(device)
    forward = _head_zero
    batch = torch.randn(config.train_batch_size, *shape, device=device)
    labels = torch.randint(0, 2, (config.train_batch_size,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train_step() -> None:
        model.train()
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(forward(model, batch, 0), labels)
        loss.backward()
        optimizer.step()

    train_rate = _rate(train_step, config.train_batch_size, device, config.train_steps)
    row: dict[str, Any] = {"model": name, "input_shape": list(shape), "train_images_per_s": train_rate}
    row["parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    data = torch.randn(config.samples, *shape, device=device)
    items = [(x, 0) for x in data.split(config.importance_batch_size)]
    forms = []
    for clamp, fisher in FORMS:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

        def importance_pass(clamp: str = clamp, fisher: str = fisher) -> None:
            entropy_importance(
                model,
                items,
                forward,
                clamp=clamp,
                fisher=fisher,
                per_sample_backend=config.per_sample_backend,
                taylor_of=config.taylor_of,
                chunk_size=config.train_batch_size if config.training_chunks and fisher == "batch" else None,
            )

        rate = _rate(importance_pass, config.samples, device)
        form = {"clamp": clamp, "fisher": fisher, "images_per_s": rate, "epochs": train_rate / rate}
        if device.startswith("cuda"):
            form["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        forms.append(form)
        print(f"{name:9s} clamp={clamp:10s} fisher={fisher:10s} {rate:9.1f} img/s  "
              f"{form['epochs']:.2f} epochs", flush=True)  # fmt: skip
    row["importance"] = forms
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    anchors = [p.detach().clone() for p in params]
    omegas = [torch.rand_like(p) for p in params]
    penalty_rate = _rate(lambda: add_spp_penalty_grad_(params, anchors, omegas, 1.0), 1, device, 50)
    row["penalty_ms"] = 1000.0 / penalty_rate
    print(f"{name:9s} train {train_rate:9.1f} img/s  penalty {row['penalty_ms']:.3f} ms", flush=True)
    return row


def render(result: dict[str, Any]) -> str:
    """A markdown table of one result: images/s and cost in training epochs per importance form."""
    machine = result["machine"]
    where = machine.get("gpu", "CPU, " + str(result["config"]["threads"]) + " thread(s)")
    backend = result["config"].get("per_sample_backend", "auto")
    where += "" if backend == "auto" else f", per-sample backend {backend}"
    where += f", taylor_of {result['config'].get('taylor_of', 'neg_entropy')}"  # older runs: neg_entropy
    where += f", importance batch {result['config']['importance_batch_size']}"
    if result["config"].get("training_chunks"):  # absent in older runs: whole importance batches
        where += f" in chunks of the training batch {result['config']['train_batch_size']}"
    lines = [
        f"Command: `{result['command']}` ({where}, torch {machine['torch']}).",
        "",
        "| model | input | train img/s | clamp | fisher | importance img/s | cost (epochs) "
        "| penalty step (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["models"]:
        shape = "x".join(str(d) for d in row["input_shape"])
        for i, form in enumerate(row["importance"]):
            first = i == 0
            lines.append(
                f"| {row['model'] if first else ''} | {shape if first else ''} | "
                f"{row['train_images_per_s']:.0f} | {form['clamp']} | {form['fisher']} | "
                f"{form['images_per_s']:.0f} | {form['epochs']:.2f} | "
                f"{row['penalty_ms']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def _head_zero(model: nn.Module, x: Tensor, task: int) -> Tensor:
    return model(x, task)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.importance_speed", description=__doc__)
    defaults = ImportanceSpeedConfig()
    parser.add_argument("--out", default=defaults.out)
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--models", default=",".join(defaults.models), help="comma list of mlp,vgg9,resnet18")
    parser.add_argument("--vgg-size", type=int, default=defaults.vgg_size)
    parser.add_argument("--resnet-size", type=int, default=defaults.resnet_size)
    parser.add_argument("--samples", type=int, default=defaults.samples)
    parser.add_argument("--train-steps", type=int, default=defaults.train_steps)
    parser.add_argument("--train-batch-size", type=int, default=defaults.train_batch_size)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument(
        "--per-sample-backend", choices=PER_SAMPLE_BACKENDS, default=defaults.per_sample_backend
    )
    parser.add_argument("--taylor-of", choices=TAYLOR_OF, default=defaults.taylor_of)
    parser.add_argument("--importance-batch-size", type=int, default=defaults.importance_batch_size)
    parser.add_argument(
        "--whole-batches",
        action="store_true",
        help="send each importance batch through the model whole (the plugin chunks it by train_mb_size)",
    )
    parser.add_argument("--render", metavar="JSON", help="only write JSON's markdown table beside it")
    args = parser.parse_args(argv)
    if args.render:
        path = Path(args.render)
        path.with_suffix(".md").write_text(render(json.loads(path.read_text())))
        return 0
    models = tuple(m for m in args.models.split(",") if m)
    unknown = sorted(set(models) - {"mlp", "vgg9", "resnet18"})
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from mlp, vgg9, resnet18")
    if args.train_batch_size < 1:
        parser.error(f"--train-batch-size must be a positive int, got {args.train_batch_size}")
    if args.importance_batch_size < 1:
        parser.error(f"--importance-batch-size must be a positive int, got {args.importance_batch_size}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device on this machine")
    config = ImportanceSpeedConfig(
        out=args.out,
        device=args.device,
        models=models,
        vgg_size=args.vgg_size,
        resnet_size=args.resnet_size,
        samples=args.samples,
        train_steps=args.train_steps,
        train_batch_size=args.train_batch_size,
        threads=args.threads,
        per_sample_backend=args.per_sample_backend,
        taylor_of=args.taylor_of,
        importance_batch_size=args.importance_batch_size,
        training_chunks=not args.whole_batches,
    )
    torch.set_num_threads(config.threads)
    torch.manual_seed(0)
    Path(config.out).parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    machine = {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__}
    if config.device.startswith("cuda"):
        machine["gpu"] = torch.cuda.get_device_name(torch.device(config.device))
    command = "python -m benchmarks.importance_speed " + " ".join(argv if argv is not None else sys.argv[1:])
    for name in config.models:  # written after each model: a run cut short keeps what it measured
        rows.append(measure_model(name, config))
        result = {"command": command, "config": asdict(config), "machine": machine, "models": rows}
        Path(config.out).write_text(json.dumps(result, indent=2) + "\n")
        Path(config.out).with_suffix(".md").write_text(render(result))
    print(f"wrote {config.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
