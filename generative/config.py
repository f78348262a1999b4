"""The options of one VAE sequence run (:class:`SequenceConfig`, saved as ``config.json``), files, loaders."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from avalanche_spp.importance import (
    DEFAULT_CLAMP,
    DEFAULT_FISHER,
    DEFAULT_LAM,
    DEFAULT_SCALE,
    DEFAULT_TAYLOR_OF,
    SCALES,
    TAYLOR_OF,
)
from generative.data import DOMAINS
from generative.fid import FALLBACK_LABEL, FID_LABEL

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


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``<path>.tmp`` then ``os.replace``: a kill never leaves a torn file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def data_loader(dataset: Dataset, config: SequenceConfig, *, shuffle: bool, seed: int = 0) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=shuffle,
        num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        pin_memory=config.device.startswith("cuda"),
    )
