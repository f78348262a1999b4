"""The paper's VAE experiment (Sec. 4.2.4, Fig. 5) as a command line: faces, then anime faces.

Runs on two domains ``A, B`` (CelebA then anime faces in the paper)::

    (1) task1_only:   train on A                                   (Fig. 5 left)
    (2) sgd:          (1), then train on B with lam = 0            (Fig. 5 middle: forgets A)
    (3) spp_lam<L>:   (1), then train on B with the SPP penalty    (Fig. 5 right: keeps A)
                      lam * sum_k Omega_k (W_k - W*_k)**2, one run per --lam value

Runs (2) and (3) start from the same task-1 checkpoint, so they differ only by the penalty.
``Omega`` is the label-free SPP importance of the task-1 model (decoder pixel entropy,
:func:`generative.vae.task_importance`); the penalty covers the shared trunk and task 1's latent
head. For every run: samples of task 1's latent head against real task-1 test images (FID, or the
fallback FD), samples of task 2 against real task-2 test images, task-1 reconstruction error before
and after task 2, training images/second and wall times.

Usage::

    python -m generative.vae_sequence --domains fmnist,digits --data-root data --out runs/vae \\
        --image-size 32 --epochs 3 --lam 1 --device cpu --fid-fallback

Run directory: ``config.json`` (the parsed options), ``metrics.json``, sample grids
``samples_<run>_task<k>.png``, real grids ``real_task<k>.png``, ``fig5_side_by_side.png`` and
``checkpoints/`` (saved after every epoch of every task; ``--resume`` continues a killed run).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from avalanche_spp.errors import DatasetCorruptError
from avalanche_spp.importance import (
    DEFAULT_CLAMP,
    DEFAULT_FISHER,
    DEFAULT_LAM,
    DEFAULT_SCALE,
    DEFAULT_TAYLOR_OF,
    SCALES,
    TAYLOR_OF,
)
from generative.data import DOMAINS, DatasetNotFoundError, Domain, load_domain, stack_images
from generative.fid import (
    FALLBACK_LABEL,
    FID_LABEL,
    FallbackFeatureNet,
    FIDWeightsNotFoundError,
    InceptionFeatures,
    extract_features,
    fid_weights_path,
    frechet_distance,
    train_fallback_extractor,
)
from generative.vae import (
    ConvVAE,
    SPPAnchor,
    generate,
    make_anchor,
    reconstruction_error,
    task_importance,
    train_epoch,
)

log = logging.getLogger("generative.vae_sequence")

FISHER_CHOICES = ("per_sample", "batch")
#: Files and folders of a run directory that mark it as holding results (--force removes them).
RESULT_FILES = ("config.json", "metrics.json", "checkpoints", "fig5_side_by_side.png")
#: Options that may change between a killed run and its --resume.
RESUME_FREE_OPTIONS = ("resume", "force", "quiet", "num_workers", "threads", "device")
SAMPLE_SEED_OFFSET = 12345


class UsageError(ValueError):
    """A run directory, resume or device problem the user must fix; the message says how."""


@dataclass(frozen=True)
class SequenceConfig:
    """Every option of one VAE sequence run (saved as ``config.json``)."""

    domains: tuple[str, str] = ("celeba", "anime")  # task 1, task 2
    data_root: str = "data"  # folder holding the domains' files (see generative/data.py)
    out: str = "runs/vae_sequence"  # run directory
    epochs: int = 10  # epochs per task
    lam: tuple[float, ...] = (DEFAULT_LAM,)  # SPP strengths, one SPP run each; the SGD run uses 0
    device: str = "cpu"  # cpu | cuda | cuda:N
    amp: bool = False  # bf16 autocast for the training forward passes (CUDA only)
    fid_weights: str | None = None  # Inception .pth (default: pytorch-fid's torch hub cache)
    fid_fallback: bool = False  # use the fallback features instead of Inception
    resume: bool = False  # continue a killed run in `out`
    force: bool = False  # overwrite the results already in `out`
    quiet: bool = False  # no progress bars, warnings only
    image_size: int = 96  # images are S x S RGB (the paper: 96)
    width: int = 32  # channels of the VAE's first conv
    depth: int = 2  # conv layers per side (the paper: 2)
    hidden_dim: int = 512  # shared fc width
    latent_dim: int = 128  # per-task latent dimension
    batch_size: int = 64
    lr: float = 1e-3  # Adam learning rate, both tasks
    seed: int = 0
    max_train: int | None = None  # cap on training images per domain (seeded subset)
    max_test: int | None = None  # cap on test images per domain
    fd_samples: int = 1000  # generated (and at most real) images per Frechet distance
    importance_images: int = 1024  # task-1 training images used for Omega
    fisher: str = DEFAULT_FISHER  # Fisher estimate of the importance (avalanche_spp.importance)
    clamp: str = DEFAULT_CLAMP  # where the importance's max(0, .) sits (avalanche_spp.importance)
    taylor_of: str = DEFAULT_TAYLOR_OF  # what its Taylor estimate measures (avalanche_spp.importance)
    scale: str = DEFAULT_SCALE  # how the importance weighs the penalty, as SPPPlugin(scale=...)
    fallback_epochs: int = 5  # training epochs of the fallback feature CNN
    fallback_dim: int = 64  # fallback feature dimension (keep below fd_samples)
    download: bool = False  # let torchvision try to download CelebA
    num_workers: int = 0  # DataLoader workers
    threads: int = 0  # torch CPU threads (0: torch's default)
    grid_images: int = 64  # images per sample grid

    def __post_init__(self) -> None:
        if len(self.domains) != 2 or self.domains[0] == self.domains[1]:
            raise ValueError(f"domains must be two different names, got {self.domains!r}")
        for name in self.domains:
            if name not in DOMAINS:
                raise ValueError(f"unknown domain {name!r}; choose from {list(DOMAINS)}")
        if not self.lam or any(not 0 < lam < math.inf for lam in self.lam):
            raise ValueError(
                "lam must be one or more values > 0 (finite SPP strengths; the SGD run always uses "
                f"0), got {self.lam}"
            )
        if len({f"{lam:g}" for lam in self.lam}) != len(self.lam):
            raise ValueError(f"lam values must be distinct, got {self.lam}")
        if self.fisher not in FISHER_CHOICES:
            raise ValueError(f"fisher must be one of {list(FISHER_CHOICES)}, got {self.fisher!r}")
        for name, allowed in (("clamp", ("experience", "batch", "sample")), ("taylor_of", TAYLOR_OF),
                              ("scale", SCALES)):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if not (self.device in ("cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        if self.amp and not self.device.startswith("cuda"):
            raise ValueError("--amp (bf16 autocast) needs --device cuda; on CPU leave it out")
        if self.fid_fallback and self.fid_weights is not None:
            raise ValueError("give either --fid-weights or --fid-fallback, not both")
        if self.resume and self.force:
            raise ValueError("give either --resume (continue) or --force (start over), not both")
        positive = (
            "epochs", "image_size", "width", "depth", "hidden_dim", "latent_dim", "batch_size",
            "fd_samples", "importance_images", "fallback_epochs", "fallback_dim", "grid_images",
        )  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.fd_samples < 2:
            raise ValueError(f"fd_samples must be >= 2 (for a covariance), got {self.fd_samples}")
        if self.num_workers < 0 or self.threads < 0:
            raise ValueError("num_workers and threads must be >= 0")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        for name in ("max_train", "max_test"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 2):
                raise ValueError(f"{name} must be an int >= 2 (images per domain) or None, got {value!r}")
        if self.image_size % 2**self.depth:
            raise ValueError(
                f"image_size ({self.image_size}) must be divisible by 2**depth ({2**self.depth})"
            )
        if self.fid_fallback and self.image_size < 8:
            raise ValueError("the fallback features need image_size >= 8")

    @property
    def distance_label(self) -> str:
        """How every report names the distance (Inception FID or the fallback FD)."""
        return FALLBACK_LABEL if self.fid_fallback else FID_LABEL

    @property
    def distance_key(self) -> str:
        """Prefix of the distance keys in ``metrics.json``: ``fid`` or ``fd_fallback``."""
        return "fd_fallback" if self.fid_fallback else "fid"

    @property
    def runs(self) -> tuple[str, ...]:
        """Run names: ``task1_only``, ``sgd`` and ``spp_lam<L>`` per SPP strength."""
        return ("task1_only", "sgd", *(spp_run_name(lam) for lam in self.lam))


def spp_run_name(lam: float) -> str:
    """Name of the SPP run (and of its checkpoint) with strength ``lam``: ``spp_lam<lam:g>``."""
    return f"spp_lam{lam:g}"


def parse_args(argv: list[str] | None = None) -> SequenceConfig:
    """Parse the command line into a :class:`SequenceConfig` (exits with code 2 on errors)."""
    d = SequenceConfig()
    parser = argparse.ArgumentParser(
        prog="python -m generative.vae_sequence",
        description="SPP on a conv VAE: task 1, then task 2 with plain SGD and with SPP; FID (or a "
        "labelled fallback FD), reconstruction errors and Fig.-5-style sample grids.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--domains", default=",".join(d.domains), help=f"task1,task2 from {', '.join(DOMAINS)}")
    add("--data-root", default=d.data_root, help="folder with the domains' files")
    add("--out", default=d.out, help="run directory")
    add("--epochs", type=int, default=d.epochs, help="epochs per task")
    add("--lam", default=",".join(f"{x:g}" for x in d.lam),
        help="SPP strength(s) > 0, comma-separated: one SPP run each")  # fmt: skip
    add("--device", default=d.device, help="cpu, cuda or cuda:N")
    add("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    fd = parser.add_mutually_exclusive_group()
    fd.add_argument(
        "--fid-weights",
        default=None,
        help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (default: its cache)",
    )
    fd.add_argument("--fid-fallback", action="store_true", help=f"use the {FALLBACK_LABEL}")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --out")
    mode.add_argument("--force", action="store_true", help="overwrite the results in --out")
    add("--quiet", action="store_true", help="no progress bars, warnings only")
    add("--image-size", type=int, default=d.image_size, help="side of the square images")
    add("--width", type=int, default=d.width, help="channels of the VAE's first conv")
    add("--depth", type=int, default=d.depth, help="conv layers per side (paper: 2)")
    add("--hidden-dim", type=int, default=d.hidden_dim, help="shared fc width")
    add("--latent-dim", type=int, default=d.latent_dim, help="per-task latent dimension")
    add("--batch-size", type=int, default=d.batch_size)
    add("--lr", type=float, default=d.lr, help="Adam learning rate")
    add("--seed", type=int, default=d.seed)
    add("--max-train", type=int, default=d.max_train, help="cap on training images per domain")
    add("--max-test", type=int, default=d.max_test, help="cap on test images per domain")
    add("--fd-samples", type=int, default=d.fd_samples, help="images per Frechet distance")
    add("--importance-images", type=int, default=d.importance_images, help="images for Omega")
    add("--fisher", default=d.fisher, help=f"one of {', '.join(FISHER_CHOICES)}")
    add("--clamp", default=d.clamp, help="experience, batch or sample (see SPPPlugin)")
    add("--taylor-of", default=d.taylor_of, help=f"one of {', '.join(TAYLOR_OF)} (see SPPPlugin)")
    add("--scale", default=d.scale, help=f"one of {', '.join(SCALES)} (see SPPPlugin)")
    add("--fallback-epochs", type=int, default=d.fallback_epochs)
    add("--fallback-dim", type=int, default=d.fallback_dim, help="fallback feature dimension")
    add("--download", action="store_true", help="let torchvision try to download CelebA")
    add("--num-workers", type=int, default=d.num_workers, help="DataLoader workers")
    add("--threads", type=int, default=d.threads, help="torch CPU threads (0: default)")
    add("--grid-images", type=int, default=d.grid_images, help="images per sample grid")
    args = vars(parser.parse_args(argv))
    args["domains"] = tuple(x.strip() for x in args["domains"].split(",") if x.strip())
    try:
        args["lam"] = tuple(float(x) for x in args["lam"].split(",") if x.strip())
        return SequenceConfig(**args)
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits


def prepare_run_dir(config: SequenceConfig) -> Path:
    """Create the run directory, or check that it may be reused.

    A directory holding results (:data:`RESULT_FILES`) is refused unless ``force`` (those files and
    the sample grids are removed) or ``resume`` (its ``config.json`` must equal ``config`` except
    for :data:`RESUME_FREE_OPTIONS`).

    Raises:
        UsageError: results present without --resume/--force, or options changed on --resume.
    """
    run_dir = Path(config.out)
    present = [name for name in RESULT_FILES if (run_dir / name).exists()]
    if present and config.force:
        log.warning("--force: removing %s and the sample grids from %s", present, run_dir)
        for name in present:
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        for png in run_dir.glob("*_task[0-9].png"):
            png.unlink()
    elif present and config.resume:
        saved_path = run_dir / "config.json"
        if saved_path.is_file():
            saved = json.loads(saved_path.read_text())
            current = json.loads(json.dumps(asdict(config)))
            changed = sorted(
                k
                for k in set(saved) | set(current)
                if k not in RESUME_FREE_OPTIONS and saved.get(k) != current.get(k)
            )
            if changed:
                raise UsageError(
                    f"--resume: options differ from {saved_path}: "
                    + ", ".join(f"{k}={saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
                    + ". Resume with the same options, or use --force or another --out."
                )
    elif present:
        raise UsageError(
            f"{run_dir} already holds results ({', '.join(present)}): pass --resume to continue "
            "that run, --force to overwrite it, or choose another --out"
        )
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    return run_dir


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``<path>.tmp`` then ``os.replace``: a kill never leaves a torn file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _device(config: SequenceConfig) -> torch.device:
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but torch.cuda.is_available() is False")
    return device


def build_model(config: SequenceConfig) -> ConvVAE:
    """The VAE of this configuration (two latent heads)."""
    return ConvVAE(
        image_size=config.image_size,
        channels=3,
        width=config.width,
        depth=config.depth,
        hidden_dim=config.hidden_dim,
        latent_dim=config.latent_dim,
        num_tasks=2,
    )


def _loader(
    dataset: Dataset, config: SequenceConfig, *, shuffle: bool, seed: int = 0
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=shuffle,
        num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        pin_memory=config.device.startswith("cuda"),
    )


def train_phase(
    name: str,
    model: ConvVAE,
    dataset: Dataset,
    task: int,
    config: SequenceConfig,
    checkpoint: Path,
    *,
    anchor: SPPAnchor | None = None,
    lam: float = 0.0,
) -> dict[str, Any]:
    """Train ``model`` on one task for ``config.epochs`` epochs, checkpointing after every epoch.

    A checkpoint already at ``checkpoint`` (a resumed run) is loaded and training continues after
    its last finished epoch. Every epoch reseeds torch and the shuffling from ``(seed, name,
    epoch)``, so a resumed run repeats the uninterrupted one.

    Returns:
        ``{"epochs", "images", "seconds", "images_per_second", "final_loss", "history"}``.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    history: list[dict[str, float]] = []
    device = next(model.parameters()).device
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = state["history"]
        log.info(
            "%s: resumed after epoch %d/%d (%s)", name, len(history), config.epochs, checkpoint
        )
    for epoch in range(len(history), config.epochs):
        epoch_seed = config.seed * 1_000_003 + zlib.crc32(name.encode()) % 100_000 * 1000 + epoch
        torch.manual_seed(epoch_seed)
        stats = train_epoch(
            model,
            _loader(dataset, config, shuffle=True, seed=epoch_seed),
            task,
            optimizer,
            epoch=epoch,
            anchor=anchor,
            lam=lam,
            amp=config.amp,
            progress=not config.quiet,
            description=f"{name} epoch {epoch + 1}/{config.epochs}",
        )
        history.append(asdict(stats) | {"images_per_second": stats.images_per_second})
        log.info(
            "%s epoch %d/%d: loss %.2f (recon %.2f, kl %.2f, penalty %.4g), %.0f images/s",
            name, epoch + 1, config.epochs, stats.loss, stats.recon, stats.kl, stats.penalty,
            stats.images_per_second,
        )  # fmt: skip
        state = {"phase": name, "model": model.state_dict(), "optimizer": optimizer.state_dict()}
        atomic_save(state | {"history": history}, checkpoint)
    images = sum(h["images"] for h in history)
    seconds = sum(h["seconds"] for h in history)
    return {
        "epochs": len(history),
        "images": images,
        "seconds": seconds,
        "images_per_second": images / seconds if seconds > 0 else None,
        "images_per_second_median_epoch": (
            statistics.median(h["images_per_second"] for h in history) if history else None
        ),
        "final_loss": history[-1]["loss"] if history else None,
        "history": history,
    }


def compute_importance(
    model: ConvVAE, domain: Domain, config: SequenceConfig, checkpoint: Path
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``Omega`` of the task-1 model on task-1 training images (cached in ``checkpoint``)."""
    device = next(model.parameters()).device
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        log.info("importance: loaded from %s", checkpoint)
        return state["omega"], state["info"]
    start = time.perf_counter()
    max_batches = -(-config.importance_images // config.batch_size)
    images = _loader(domain.train, config, shuffle=False)
    omega = task_importance(
        model, images, 0, fisher=config.fisher, clamp=config.clamp, taylor_of=config.taylor_of,
        max_batches=max_batches,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    values = torch.cat([omega[n].flatten().float().cpu() for n in model.shared_parameter_names()])
    info = {
        "images": min(len(domain.train), max_batches * config.batch_size),  # type: ignore[arg-type]
        "seconds": seconds,
        "fisher": config.fisher,
        "clamp": config.clamp,
        "taylor_of": config.taylor_of,
        "scale": config.scale,
        "entropy": "Bernoulli pixel entropy of decode_1(mu_1(x)), summed over pixels",
        "shared_params": int(values.numel()),
        "shared_nonzero_fraction": float((values > 0).float().mean()),
        "shared_mean": float(values.mean()),
        "shared_max": float(values.max()),
    }
    atomic_save({"omega": omega, "info": info}, checkpoint)
    log.info(
        "importance: %d images in %.1f s; %.1f%% of the shared Omega > 0",
        info["images"], seconds, 100 * info["shared_nonzero_fraction"],
    )  # fmt: skip
    return omega, info


def feature_extractor(
    config: SequenceConfig, domains: tuple[Domain, Domain], checkpoint: Path, device: torch.device
) -> tuple[torch.nn.Module, float]:
    """Inception from local weights, or the fallback CNN (trained once, kept at ``checkpoint``).

    Returns:
        ``(extractor, seconds)``: the network, in eval mode, and the seconds spent training it
        (0 for Inception; for a resumed run, the seconds of the original training).
    """
    if not config.fid_fallback:
        return InceptionFeatures(fid_weights_path(config.fid_weights)).to(device), 0.0
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        net = FallbackFeatureNet(config.image_size, 2, feature_dim=config.fallback_dim)
        net.load_state_dict(state["model"])
        return net.to(device).eval(), float(state["seconds"])
    start = time.perf_counter()
    net = train_fallback_extractor(
        [domains[0].train, domains[1].train],
        config.image_size,
        epochs=config.fallback_epochs,
        batch_size=config.batch_size,
        seed=config.seed + 7,
        feature_dim=config.fallback_dim,
        device=device,
        progress=not config.quiet,
    )
    seconds = time.perf_counter() - start
    atomic_save({"model": net.state_dict(), "seconds": seconds}, checkpoint)
    return net, seconds


def run_sequence(config: SequenceConfig) -> dict[str, Any]:
    """All runs of the paper's VAE experiment; writes the run directory and returns the metrics.

    Raises:
        FIDWeightsNotFoundError: Inception weights absent (checked first, before any work).
        DatasetNotFoundError: a domain's files are missing.
        UsageError: run-directory or device problems.
    """
    wall_start = time.perf_counter()
    weights = None if config.fid_fallback else fid_weights_path(config.fid_weights)  # fail fast
    device = _device(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    domains = tuple(
        load_domain(
            name,
            config.data_root,
            config.image_size,
            seed=config.seed,
            max_train=config.max_train,
            max_test=config.max_test,
            download=config.download,
        )
        for name in config.domains
    )
    run_dir = prepare_run_dir(config)
    _write_json(asdict(config), run_dir / "config.json")
    ckpt = run_dir / "checkpoints"
    for domain in domains:
        log.info("%s: %d train / %d test images", domain.name, len(domain.train), len(domain.test))
    log.info("distance: %s (%s)", config.distance_label, weights or "trained here")

    torch.manual_seed(config.seed)
    task1_model = build_model(config).to(device)
    phases = {
        "task1": train_phase("task1", task1_model, domains[0].train, 0, config, ckpt / "task1.pt")
    }
    omega, importance_info = compute_importance(
        task1_model, domains[0], config, ckpt / "importance.pt"
    )
    anchor_names = task1_model.shared_parameter_names() + task1_model.head_parameter_names(0)
    anchor = make_anchor(task1_model, omega, anchor_names, scale=config.scale)

    models = {"task1_only": task1_model}
    for run, lam in (("sgd", 0.0), *((spp_run_name(lam), lam) for lam in config.lam)):
        model = build_model(config).to(device)
        model.load_state_dict(task1_model.state_dict())  # every task-2 run starts from task 1
        phases[run] = train_phase(
            run, model, domains[1].train, 1, config, ckpt / f"{run}.pt",
            anchor=anchor if lam > 0 else None, lam=lam,
        )  # fmt: skip
        models[run] = model

    eval_start = time.perf_counter()
    metrics = evaluate(config, models, domains, ckpt, device, run_dir)
    metrics["importance"] = importance_info
    metrics["training"] = phases
    metrics["wall_seconds"] = {
        **{f"train_{run}": phase["seconds"] for run, phase in phases.items()},
        "importance": importance_info["seconds"],
        "fallback_feature_training": metrics["feature_extractor_training_seconds"],
        "evaluation_this_invocation": time.perf_counter() - eval_start,
        "total_this_invocation": time.perf_counter() - wall_start,
    }
    metrics["environment"] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    _write_json(metrics, run_dir / "metrics.json")
    log.info("metrics written to %s", run_dir / "metrics.json")
    return metrics


def evaluate(
    config: SequenceConfig,
    models: dict[str, ConvVAE],
    domains: tuple[Domain, Domain],
    ckpt: Path,
    device: torch.device,
    run_dir: Path,
) -> dict[str, Any]:
    """Fréchet distances, reconstruction errors and image grids of every run."""
    key = config.distance_key
    extractor, extractor_seconds = feature_extractor(
        config, domains, ckpt / "fallback_features.pt", device
    )
    real_test = [stack_images(d.test, config.fd_samples) for d in domains]  # (N, 3, S, S)
    real_train = [stack_images(d.train, config.fd_samples) for d in domains]
    feats_test = [extract_features(extractor, x) for x in real_test]
    feats_train = [extract_features(extractor, x) for x in real_train]
    reference = {
        f"{key}_task1_train_vs_task1_test": frechet_distance(feats_train[0], feats_test[0]),
        f"{key}_task2_train_vs_task2_test": frechet_distance(feats_train[1], feats_test[1]),
        f"{key}_task2_test_vs_task1_test": frechet_distance(feats_test[1], feats_test[0]),
    }
    test_loaders = [_loader(d.test, config, shuffle=False) for d in domains]
    recon_before = reconstruction_error(models["task1_only"], test_loaders[0], 0)
    lams = {"task1_only": None, "sgd": 0.0} | {spp_run_name(lam): lam for lam in config.lam}
    runs: dict[str, dict[str, Any]] = {}
    task1_grids: dict[str, torch.Tensor] = {}
    for run, model in models.items():
        result: dict[str, Any] = {"lam": lams[run]}
        for task in (0,) if run == "task1_only" else (0, 1):
            seed = config.seed + SAMPLE_SEED_OFFSET + task
            samples = generate(model, config.fd_samples, task, seed=seed)  # (n, 3, S, S)
            result[f"{key}_task{task + 1}_samples_vs_task{task + 1}_test"] = frechet_distance(
                extract_features(extractor, samples), feats_test[task]
            )
            grid = samples[: config.grid_images]
            _save_grid(grid, run_dir / f"samples_{run}_task{task + 1}.png")
            if task == 0:
                task1_grids[run] = grid
        result["recon_mse_task1_before_task2"] = recon_before
        if run != "task1_only":
            after = reconstruction_error(model, test_loaders[0], 0)
            result["recon_mse_task1_after_task2"] = after
            result["recon_mse_task1_increase"] = after - recon_before
            result["recon_mse_task2"] = reconstruction_error(model, test_loaders[1], 1)
        runs[run] = result
    for task, images in enumerate(real_test):
        _save_grid(images[: config.grid_images], run_dir / f"real_task{task + 1}.png")
    save_fig5(config, task1_grids, runs, run_dir / "fig5_side_by_side.png")
    first, second = config.domains
    return {
        "distance_key": key,
        "distance_label": config.distance_label,
        "domains": list(config.domains),
        "data_sources": [d.source for d in domains],
        "images": {
            d.name: {"train": len(d.train), "test": len(d.test)}  # type: ignore[arg-type]
            for d in domains
        },
        "runs_description": {
            "task1_only": f"trained on {first} only",
            "sgd": f"{first} then {second}, lam = 0 (plain fine-tuning)",
            **{spp_run_name(x): f"{first} then {second}, SPP lam = {x:g}" for x in config.lam},
        },
        "fd_images": {
            "generated": config.fd_samples,
            "real_task1_test": len(real_test[0]),
            "real_task2_test": len(real_test[1]),
        },
        "reference": reference,
        "runs": runs,
        "feature_extractor_training_seconds": extractor_seconds,
    }


def _save_grid(images: torch.Tensor, path: Path) -> None:
    from torchvision.utils import save_image

    save_image(images, path, nrow=max(1, round(len(images) ** 0.5)), padding=1)


def save_fig5(
    config: SequenceConfig,
    grids: dict[str, torch.Tensor],
    runs: dict[str, dict[str, Any]],
    path: Path,
) -> None:
    """Task-1 samples of every run side by side (the paper's Fig. 5), the same ``z`` per panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    key, (first, second) = config.distance_key, config.domains
    titles = {"task1_only": f"(1) {first} only", "sgd": f"(2) {first} -> {second}, SGD (lam=0)"}
    titles |= {spp_run_name(x): f"(3) {first} -> {second}, SPP (lam={x:g})" for x in config.lam}
    fig, axes = plt.subplots(1, len(config.runs), figsize=(4 * len(config.runs), 4.6))
    for ax, run in zip(axes, config.runs, strict=True):
        images = grids[run]
        grid = make_grid(images, nrow=max(1, round(len(images) ** 0.5)), padding=1)
        ax.imshow(grid.permute(1, 2, 0).clamp(0, 1).numpy())
        distance = runs[run][f"{key}_task1_samples_vs_task1_test"]
        recon = runs[run].get(
            "recon_mse_task1_after_task2", runs[run]["recon_mse_task1_before_task2"]
        )
        ax.set_title(
            f"{titles[run]}\n{key} {distance:.4g}, task-1 recon MSE {recon:.4f}", fontsize=9
        )
        ax.axis("off")
    suptitle = (
        f"{first} samples (task-1 latent head, same z in every panel); {config.distance_label}"
    )
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns 0, or 2 after logging a problem the message explains."""
    config = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if config.quiet else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    try:
        metrics = run_sequence(config)
    except (DatasetNotFoundError, DatasetCorruptError, FIDWeightsNotFoundError, UsageError) as err:
        log.error("%s", err)
        return 2
    for run, result in metrics["runs"].items():
        log.info("%s: %s", run, {k: round(v, 5) for k, v in result.items() if isinstance(v, float)})
    log.info("%s; results in %s", metrics["distance_label"], config.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
