"""The VAE sequence of the paper's Sec. 4.2.4 (Fig. 5) as a library: task 1, then task 2 with SGD and SPP.

Runs on two domains ``A, B`` (CelebA then anime faces in the paper)::

    (1) task1_only:   train on A                                   (Fig. 5 left)
    (2) sgd:          (1), then train on B with lam = 0            (Fig. 5 middle: forgets A)
    (3) spp_lam<L>:   (1), then train on B with the SPP penalty    (Fig. 5 right: keeps A)
                      lam * sum_k Omega_k (W_k - W*_k)**2, one run per lam value

Runs (2) and (3) start from the same task-1 checkpoint, so they differ only by the penalty.
``Omega`` is the label-free SPP importance of the task-1 model (decoder pixel entropy,
:func:`generative.vae.task_importance`); the penalty covers the shared trunk and task 1's latent
head. For every run: samples of task 1's latent head against real task-1 test images (FID, or the
fallback FD), samples of task 2 against real task-2 test images, task-1 reconstruction error before
and after task 2, training images/second and wall times.

A script calls :func:`run_sequence` with a :class:`SequenceConfig`; the command line
``python -m generative.vae_sequence`` (:mod:`generative.vae_sequence`) builds one from its options.

Run directory: ``config.json`` (the options), ``metrics.json``, sample grids
``samples_<run>_task<k>.png``, real grids ``real_task<k>.png``, ``fig5_side_by_side.png`` and
``checkpoints/`` (saved after every epoch of every task; a resumed run continues a killed one).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import statistics
import time
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from generative.config import (
    RESULT_FILES,
    RESUME_FREE_OPTIONS,
    SequenceConfig,
    UsageError,
    _write_json,
    atomic_save,
    data_loader,
    spp_run_name,
)
from generative.data import Domain, load_domain
from generative.evaluation import evaluate
from generative.fid import fid_weights_path
from generative.vae import (
    ConvVAE,
    SPPAnchor,
    make_anchor,
    task_importance,
    train_epoch,
)

log = logging.getLogger("generative.sequence")


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
        log.info("%s: resumed after epoch %d/%d (%s)", name, len(history), config.epochs, checkpoint)
    for epoch in range(len(history), config.epochs):
        epoch_seed = config.seed * 1_000_003 + zlib.crc32(name.encode()) % 100_000 * 1000 + epoch
        torch.manual_seed(epoch_seed)
        stats = train_epoch(
            model,
            data_loader(dataset, config, shuffle=True, seed=epoch_seed),
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
    images = data_loader(domain.train, config, shuffle=False)
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
    phases = {"task1": train_phase("task1", task1_model, domains[0].train, 0, config, ckpt / "task1.pt")}
    omega, importance_info = compute_importance(task1_model, domains[0], config, ckpt / "importance.pt")
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
