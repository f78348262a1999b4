"""What the VAE sequence measures: Frechet distances (FID or fallback FD), reconstruction errors, grids."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from generative.config import SAMPLE_SEED_OFFSET, SequenceConfig, atomic_save, data_loader, spp_run_name
from generative.data import Domain, stack_images
from generative.fid import (
    FallbackFeatureNet,
    InceptionFeatures,
    extract_features,
    fid_weights_path,
    frechet_distance,
    train_fallback_extractor,
)
from generative.vae import ConvVAE, generate, reconstruction_error


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
    extractor, extractor_seconds = feature_extractor(config, domains, ckpt / "fallback_features.pt", device)
    real_test = [stack_images(d.test, config.fd_samples) for d in domains]  # (N, 3, S, S)
    real_train = [stack_images(d.train, config.fd_samples) for d in domains]
    feats_test = [extract_features(extractor, x) for x in real_test]
    feats_train = [extract_features(extractor, x) for x in real_train]
    reference = {
        f"{key}_task1_train_vs_task1_test": frechet_distance(feats_train[0], feats_test[0]),
        f"{key}_task2_train_vs_task2_test": frechet_distance(feats_train[1], feats_test[1]),
        f"{key}_task2_test_vs_task1_test": frechet_distance(feats_test[1], feats_test[0]),
    }
    test_loaders = [data_loader(d.test, config, shuffle=False) for d in domains]
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
        recon = runs[run].get("recon_mse_task1_after_task2", runs[run]["recon_mse_task1_before_task2"])
        ax.set_title(f"{titles[run]}\n{key} {distance:.4g}, task-1 recon MSE {recon:.4f}", fontsize=9)
        ax.axis("off")
    suptitle = f"{first} samples (task-1 latent head, same z in every panel); {config.distance_label}"
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=120)
    plt.close(fig)
