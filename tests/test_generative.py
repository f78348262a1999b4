"""Tests of generative/: the VAE, its SPP importance and penalty, the data, FD and the command line.

Everything runs on small generated stand-ins written in the real layouts (CelebA: torchvision's
``celeba/img_align_celeba/*.jpg`` + ``list_eval_partition.txt``; anime: an ImageFolder), with a tiny
VAE, on one CPU thread.
"""

from __future__ import annotations

import gzip
import json
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avalanche_spp.importance import bernoulli_entropy
from generative import sequence, vae_sequence
from generative.data import (
    DatasetNotFoundError,
    load_domain,
    read_idx_images,
    stack_images,
)
from generative.fid import (
    FALLBACK_LABEL,
    FIDWeightsNotFoundError,
    extract_features,
    fid_weights_path,
    frechet_distance,
    train_fallback_extractor,
)
from generative.vae import (
    ConvVAE,
    generate,
    make_anchor,
    reconstruction_error,
    task_importance,
    train_epoch,
    vae_loss,
)

# --------------------------------------------------------------------------- stand-in data


def _disc(image: np.ndarray, cx: float, cy: float, rx: float, ry: float, color) -> None:
    h, w, _ = image.shape
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    image[mask] = color


def _face(rng: np.random.Generator, width: int = 22, height: int = 27) -> np.ndarray:
    """A CelebA-like stand-in: dark background, skin-toned oval, small dark eyes and mouth."""
    image = np.empty((height, width, 3), dtype=np.float64)
    image[:] = rng.uniform(0.05, 0.3, size=3)
    cx, cy = width / 2 + rng.uniform(-1, 1), height / 2 + rng.uniform(-1, 1)
    skin = np.array([0.85, 0.65, 0.5]) * rng.uniform(0.8, 1.1)
    _disc(image, cx, cy, width * 0.32, height * 0.36, skin)
    for side in (-1, 1):
        _disc(image, cx + side * width * 0.12, cy - height * 0.06, 1.0, 0.8, (0.1, 0.08, 0.05))
    _disc(image, cx, cy + height * 0.18, width * 0.1, 0.7, (0.6, 0.2, 0.2))
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def _anime(rng: np.random.Generator, size: int = 20) -> np.ndarray:
    """An anime-like stand-in: bright background, saturated hair band, large coloured eyes."""
    image = np.empty((size, size, 3), dtype=np.float64)
    image[:] = rng.uniform(0.8, 1.0, size=3)
    hair = np.zeros(3)
    hair[rng.integers(3)] = 1.0
    image[: size // 3] = hair
    for side in (-1, 1):
        _disc(
            image,
            size / 2 + side * size * 0.2,
            size * 0.55,
            size * 0.12,
            size * 0.16,
            (0.1, 0.3, 0.9),
        )
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def write_celeba(root: Path, n_train: int = 24, n_valid: int = 4, n_test: int = 24, seed: int = 0) -> None:
    """CelebA stand-in in torchvision's layout (JPEGs + list_eval_partition.txt)."""
    folder = root / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n_train + n_valid + n_test):
        name = f"{i + 1:06d}.jpg"
        Image.fromarray(_face(rng)).save(folder / name, quality=95)
        split = 0 if i < n_train else 1 if i < n_train + n_valid else 2
        lines.append(f"{name} {split}")
    (root / "celeba" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")


def write_anime(root: Path, n: int = 48, seed: int = 1) -> None:
    """Anime-face stand-in as an ImageFolder (ROOT/anime/images/*.png)."""
    folder = root / "anime" / "images"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(_anime(rng)).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_celeba(root)
    write_anime(root)
    return root


def tiny_vae(image_size: int = 16) -> ConvVAE:
    return ConvVAE(image_size=image_size, width=4, depth=2, hidden_dim=32, latent_dim=4)


# --------------------------------------------------------------------------- data


def test_celeba_and_anime_stand_ins_load_in_the_real_layouts(data_root):
    celeba = load_domain("celeba", data_root, 16)
    anime = load_domain("anime", data_root, 16)
    assert (len(celeba.train), len(celeba.test)) == (24, 24)  # partition 1 (valid) is not used
    assert (len(anime.train), len(anime.test)) == (43, 5)  # seeded 10 % hold-out of 48
    for domain in (celeba, anime):
        x = domain.train[0]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # the centre of a face stand-in is skin (red > blue), the top of an anime one is a pure hue
    assert float(celeba.train[0][0, 8, 8]) > float(celeba.train[0][2, 8, 8]) + 0.1
    top = anime.train[0][:, 1, 8]
    assert float(top.max()) > 0.9 and float(top.min()) < 0.1
    # the anime split is a seeded partition of the files: disjoint, covering them all
    train_files = set(anime.train.paths)
    assert not train_files & set(anime.test.paths) and len(train_files) + 5 == 48
    capped = load_domain("celeba", data_root, 16, max_train=5, max_test=3)
    assert (len(capped.train), len(capped.test)) == (5, 3)


def test_missing_data_root_names_the_folder_and_files(tmp_path):
    with pytest.raises(DatasetNotFoundError) as celeba:
        load_domain("celeba", tmp_path / "nowhere", 16)
    message = str(celeba.value)
    assert str(tmp_path / "nowhere" / "celeba" / "img_align_celeba") in message
    assert "list_eval_partition.txt" in message and "--data-root" in message
    with pytest.raises(DatasetNotFoundError) as anime:
        load_domain("anime", tmp_path, 16)
    assert str(tmp_path / "anime") in str(anime.value) and "ImageFolder" in str(anime.value)
    # an incomplete CelebA: listed image files missing
    (tmp_path / "celeba" / "img_align_celeba").mkdir(parents=True)
    (tmp_path / "celeba" / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 2\n")
    with pytest.raises(DatasetNotFoundError, match="000001.jpg"):
        load_domain("celeba", tmp_path, 16)
    with pytest.raises(ValueError, match="unknown domain 'mnist'"):
        load_domain("mnist", tmp_path, 16)


def _write_idx(path: Path, images: np.ndarray) -> None:
    header = struct.pack(">IIII", 2051, *images.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + images.astype(np.uint8).tobytes())


def test_fmnist_idx_files_and_digits_load_as_rgb(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(6, 28, 28))
    _write_idx(raw / "train-images-idx3-ubyte.gz", train)
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, size=(3, 28, 28)))
    assert torch.equal(read_idx_images(raw / "train-images-idx3-ubyte.gz"), torch.from_numpy(train).byte())
    fmnist = load_domain("fmnist", tmp_path, 28)  # same size: pixels survive exactly
    assert (len(fmnist.train), len(fmnist.test)) == (6, 3) and fmnist.source == str(raw)
    x = fmnist.train[2]
    assert x.shape == (3, 28, 28)
    assert torch.allclose(x[1], torch.from_numpy(train[2]).float() / 255, atol=1 / 255)
    assert torch.equal(x[0], x[2])
    digits = load_domain("digits", tmp_path, 16)
    assert (len(digits.train), len(digits.test)) == (1438, 359)
    assert digits.train[0].shape == (3, 16, 16) and float(digits.train[0].max()) <= 1.0
    (raw / "bad").write_bytes(struct.pack(">IIII", 2049, 1, 1, 1) + b"\0")
    with pytest.raises(ValueError, match="magic 2049"):
        read_idx_images(raw / "bad")


# --------------------------------------------------------------------------- model


def test_vae_heads_are_per_task_and_the_trunk_is_shared():
    torch.manual_seed(0)
    model = tiny_vae()
    x = torch.rand(5, 3, 16, 16)
    logits, mu, logvar = model(x, 1)
    assert logits.shape == (5, 3, 16, 16) and mu.shape == logvar.shape == (5, 4)
    shared = set(model.shared_parameter_names())
    heads = [set(model.head_parameter_names(t)) for t in (0, 1)]
    assert not shared & heads[0] and not heads[0] & heads[1]
    assert shared | heads[0] | heads[1] == {n for n, _ in model.named_parameters()}
    before = model.reconstruct_logits(x, 0)
    with torch.no_grad():  # changing task 1's heads leaves task 0's output untouched
        for name, p in model.named_parameters():
            if name in heads[1]:
                p.add_(1.0)
    assert torch.equal(model.reconstruct_logits(x, 0), before)
    assert not torch.equal(model.reconstruct_logits(x, 1), before)
    with pytest.raises(ValueError, match="task must be an int in"):
        model.encode(x, 2)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*depth"):
        ConvVAE(image_size=18, depth=2)


def test_vae_loss_matches_hand_computation():
    logits = torch.tensor([[[[0.0, 2.0]]]])  # (1, 1, 1, 2)
    x = torch.tensor([[[[1.0, 0.0]]]])
    mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, np.log(2.0)]])
    loss, recon, kl = vae_loss(logits, x, mu, logvar)
    expected_recon = np.log(2.0) + np.log(1 + np.exp(2.0))  # -log sigmoid(0) - log(1 - sigmoid(2))
    expected_kl = 0.5 * (1.0 + (2.0 - np.log(2.0) - 1.0))
    assert recon.item() == pytest.approx(expected_recon, rel=1e-6)
    assert kl.item() == pytest.approx(expected_kl, rel=1e-6)
    assert loss.item() == pytest.approx(expected_recon + expected_kl, rel=1e-6)


def test_importance_is_the_pixel_entropy_taylor_term_at_the_posterior_mean():
    """One image: Omega = 1/2 W^2 g^2 (the default, second-order term) or max(0, +g W + 1/2 W^2 g^2)
    (``taylor_of="neg_entropy"``), g = dH/dW, H = pixel entropy of decode(mu)."""
    torch.manual_seed(1)
    model = tiny_vae()
    x = torch.rand(1, 3, 16, 16)
    default = task_importance(model, [x], 0)  # the default: 1/2 W^2 g^2, one clamp per batch
    omega = task_importance(model, [x], 0, taylor_of="neg_entropy")  # +g W: the change of -H
    entropy = bernoulli_entropy(model.reconstruct_logits(x, 0)).sum()
    names, params = zip(*model.named_parameters(), strict=True)
    grads = torch.autograd.grad(entropy, params, allow_unused=True)
    for name, w, g in zip(names, params, grads, strict=True):
        g = torch.zeros_like(w) if g is None else g
        curvature = (0.5 * w**2 * g**2).detach()  # ~1e-12 here: compared relatively, not by atol
        assert torch.allclose(default[name], curvature, rtol=1e-4, atol=1e-30), name
        expected = (g * w + 0.5 * w**2 * g**2).clamp_min(0).detach()
        assert torch.allclose(omega[name], expected, rtol=1e-4, atol=1e-9), name
        entropy_change = (
            task_importance(model, [x], 0, taylor_of="entropy")[name] if name == names[0] else None
        )
        if entropy_change is not None:  # the other sign: the change of H itself
            want = (-g * w + 0.5 * w**2 * g**2).clamp_min(0).detach()
            assert torch.allclose(entropy_change, want, rtol=1e-4, atol=1e-9)
    assert all(float(omega[n].abs().sum()) == 0 for n in model.head_parameter_names(1))
    assert all(float(omega[n].sum()) > 0 for n in model.shared_parameter_names() if "weight" in n)


# --------------------------------------------------------------------------- SPP reduces forgetting


def _train(model, images, task, epochs, *, anchor=None, lam=0.0, seed=0):
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(
        images, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    for epoch in range(epochs):
        train_epoch(model, loader, task, optimizer, epoch=epoch, anchor=anchor, lam=lam)


def test_spp_penalty_keeps_task1_reconstruction_better_than_plain_sgd(data_root):
    faces = stack_images(load_domain("celeba", data_root, 16).train)  # (24, 3, 16, 16)
    anime = stack_images(load_domain("anime", data_root, 16).train)
    torch.manual_seed(0)
    model = tiny_vae()
    _train(model, faces, 0, epochs=30)
    before = reconstruction_error(model, [faces], 0)
    untrained_head = reconstruction_error(model, [anime], 1)
    omega = task_importance(model, faces.split(8), 0)
    names = model.shared_parameter_names() + model.head_parameter_names(0)
    anchor = make_anchor(model, omega, names)
    assert anchor.penalty(model).item() == 0.0
    after = {}
    for lam in (0.0, 1e3):
        copy = tiny_vae()
        copy.load_state_dict(model.state_dict())
        _train(copy, anime, 1, epochs=30, anchor=anchor, lam=lam, seed=1)
        after[lam] = reconstruction_error(copy, [faces], 0)
        assert reconstruction_error(copy, [anime], 1) < 0.6 * untrained_head  # task 2 is learned
    increase_sgd, increase_spp = after[0.0] - before, after[1e3] - before
    assert increase_sgd > 0.03  # plain SGD forgets the faces (measured: 0.078)
    assert increase_spp < 0.75 * increase_sgd  # SPP forgets less (measured: 0.004; 0.036 with neg_entropy)


def test_train_epoch_refuses_bad_arguments():
    model = tiny_vae()
    optimizer = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="lam must be >= 0"):
        train_epoch(model, [torch.rand(2, 3, 16, 16)], 0, optimizer, lam=-1.0)
    with pytest.raises(ValueError, match="only supported on CUDA"):
        train_epoch(model, [torch.rand(2, 3, 16, 16)], 0, optimizer, amp=True)
    with pytest.raises(ValueError, match="no batch"):
        train_epoch(model, [], 0, optimizer)


# --------------------------------------------------------------------------- FID / FD


def test_frechet_distance_of_gaussians_with_known_statistics(monkeypatch):
    from generative import fid

    # exact statistics through the public function: patch the estimator of (mu, sigma)
    stats = {}
    monkeypatch.setattr(fid, "activation_statistics", lambda f: stats[id(f)])
    a, b = np.zeros(1), np.ones(1)
    # equal covariances: d^2 = ||mu_1 - mu_2||^2
    cov = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 3.0]])
    stats[id(a)], stats[id(b)] = (np.array([0.0, 1.0, 2.0]), cov), (np.array([3.0, -1.0, 2.0]), cov)
    assert fid.frechet_distance(a, b) == pytest.approx(9.0 + 4.0, abs=1e-6)
    # diagonal covariances: sum (sqrt s1 - sqrt s2)^2 + ||mu_1 - mu_2||^2 = (1-3)^2 + (2-4)^2 + 2
    stats[id(a)] = (np.zeros(2), np.diag([1.0, 4.0]))
    stats[id(b)] = (np.ones(2), np.diag([9.0, 16.0]))
    assert fid.frechet_distance(a, b) == pytest.approx(10.0, abs=1e-6)


def test_frechet_distance_from_features_shift_and_identity():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(500, 4)) @ rng.normal(size=(4, 4))
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(features, features + shift) == pytest.approx(5.25, abs=1e-6)
    # scaled features: covariance 4 C, d^2 = Tr(C + 4C - 2 * 2C) = Tr(C)
    trace = np.trace(np.cov(features, rowvar=False))
    assert frechet_distance(features, 2 * features - features.mean(0)) == pytest.approx(trace, rel=1e-6)
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(features[:1], features)


def test_missing_fid_weights_fail_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FIDWeightsNotFoundError) as explicit:
        fid_weights_path(tmp_path / "missing.pth")
    message = str(explicit.value)
    assert "missing.pth" in message and "pt_inception-2015-12-05-6726825d.pth" in message
    assert "--fid-fallback" in message
    with pytest.raises(FIDWeightsNotFoundError) as cached:
        fid_weights_path(None)
    assert str(tmp_path / "hub" / "checkpoints") in str(cached.value)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"x")
    assert fid_weights_path(None) == cache / "pt_inception-2015-12-05-6726825d.pth"


def test_inception_features_load_local_weights_without_network(tmp_path, monkeypatch):
    import torchvision
    from pytorch_fid import inception as pf

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    # a randomly initialised network with the FID Inception's structure, saved as its weights file
    net = torchvision.models.inception_v3(
        num_classes=1008, aux_logits=False, weights=None, init_weights=False
    )
    net.Mixed_5b, net.Mixed_5c = pf.FIDInceptionA(192, 32), pf.FIDInceptionA(256, 64)
    net.Mixed_5d = pf.FIDInceptionA(288, 64)
    net.Mixed_6b, net.Mixed_6c = pf.FIDInceptionC(768, 128), pf.FIDInceptionC(768, 160)
    net.Mixed_6d, net.Mixed_6e = pf.FIDInceptionC(768, 160), pf.FIDInceptionC(768, 192)
    net.Mixed_7b, net.Mixed_7c = pf.FIDInceptionE_1(1280), pf.FIDInceptionE_2(2048)
    path = tmp_path / "weights.pth"
    torch.save(net.state_dict(), path)
    from generative.fid import InceptionFeatures

    extractor = InceptionFeatures(path)
    assert torch.equal(extractor.net.blocks[0][0].conv.weight, net.Conv2d_1a_3x3.conv.weight)
    assert pf.load_state_dict_from_url is not None and pf.load_state_dict_from_url.__name__ != "load_local"
    features = extract_features(extractor, torch.rand(2, 3, 32, 32))
    assert features.shape == (2, 2048)


def test_fallback_fd_is_zero_on_itself_and_larger_across_domains(data_root):
    faces, anime = load_domain("celeba", data_root, 16), load_domain("anime", data_root, 16)
    net = train_fallback_extractor([faces.train, anime.train], 16, epochs=3, batch_size=16, feature_dim=4)
    f_test = extract_features(net, faces.test)
    f_train = extract_features(net, faces.train)
    a_test = extract_features(net, anime.test)
    a_train = extract_features(net, anime.train)
    assert frechet_distance(f_test, f_test) == pytest.approx(0.0, abs=1e-6)
    within = max(frechet_distance(f_train, f_test), frechet_distance(a_train, a_test))
    across = min(frechet_distance(a_train, f_test), frechet_distance(f_train, a_test))
    assert across > 5 * within


# --------------------------------------------------------------------------- command line


def _argv(data_root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--domains",
        "celeba,anime",
        "--data-root",
        str(data_root),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--lam",
        "100",
        "--device",
        "cpu",
        "--fid-fallback",
        "--quiet",
        "--image-size",
        "16",
        "--width",
        "4",
        "--hidden-dim",
        "16",
        "--latent-dim",
        "4",
        "--batch-size",
        "8",
        "--fd-samples",
        "24",
        "--importance-images",
        "8",
        "--fallback-epochs",
        "1",
        "--fallback-dim",
        "4",
        "--grid-images",
        "4",
        *extra,
    ]


def test_main_runs_end_to_end_writes_everything_and_resumes(data_root, tmp_path, caplog):
    out = tmp_path / "run"
    assert vae_sequence.main(_argv(data_root, out)) == 0
    expected = [
        "config.json",
        "metrics.json",
        "fig5_side_by_side.png",
        "real_task1.png",
        "real_task2.png",
        "samples_task1_only_task1.png",
        "samples_sgd_task1.png",
        "samples_sgd_task2.png",
        "samples_spp_lam100_task1.png",
        "samples_spp_lam100_task2.png",
        "checkpoints/task1.pt",
        "checkpoints/importance.pt",
        "checkpoints/sgd.pt",
        "checkpoints/spp_lam100.pt",
        "checkpoints/fallback_features.pt",
    ]
    for name in expected:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not list(out.rglob("*.tmp"))
    config = json.loads((out / "config.json").read_text())
    assert config["domains"] == ["celeba", "anime"] and config["lam"] == [100.0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distance_label"] == FALLBACK_LABEL and metrics["distance_key"] == "fd_fallback"
    assert set(metrics["runs"]) == {"task1_only", "sgd", "spp_lam100"}
    for run in ("task1_only", "sgd", "spp_lam100"):
        value = metrics["runs"][run]["fd_fallback_task1_samples_vs_task1_test"]
        assert np.isfinite(value) and value >= 0
    for run in ("sgd", "spp_lam100"):
        result = metrics["runs"][run]
        assert np.isfinite(result["fd_fallback_task2_samples_vs_task2_test"])
        assert result["recon_mse_task1_increase"] == pytest.approx(
            result["recon_mse_task1_after_task2"] - result["recon_mse_task1_before_task2"]
        )
    assert metrics["training"]["task1"]["images"] == 2 * 24 and metrics["training"]["task1"]["epochs"] == 2
    assert metrics["training"]["spp_lam100"]["images_per_second"] > 0
    assert metrics["training"]["spp_lam100"]["history"][0]["penalty"] > 0  # the penalty was on
    assert metrics["training"]["sgd"]["history"][0]["penalty"] == 0
    assert metrics["importance"]["images"] == 8

    # an existing run directory is refused without --resume/--force, with the reason
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert vae_sequence.main(_argv(data_root, out)) == 2
    assert "already holds results" in caplog.text and "--resume" in caplog.text

    # --resume reuses every checkpoint (no training) and reproduces the metrics
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()}
    assert vae_sequence.main(_argv(data_root, out, "--resume")) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()} == mtimes
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["runs"] == metrics["runs"]

    # a resume with different options is refused
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert vae_sequence.main(_argv(data_root, out, "--resume", "--seed", "3")) == 2
    assert "seed=0 -> 3" in caplog.text


def test_resume_after_a_killed_task2_repeats_the_uninterrupted_run(data_root, tmp_path, monkeypatch):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert vae_sequence.main(_argv(data_root, full)) == 0
    real_train_epoch = sequence.train_epoch

    def killed_in_spp_epoch_2(*args, **kwargs):
        if kwargs["description"].startswith("spp_lam100 epoch 2/"):
            raise KeyboardInterrupt
        return real_train_epoch(*args, **kwargs)

    monkeypatch.setattr(sequence, "train_epoch", killed_in_spp_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        vae_sequence.main(_argv(data_root, killed))
    monkeypatch.undo()
    partial = torch.load(killed / "checkpoints" / "spp_lam100.pt", weights_only=False)
    assert len(partial["history"]) == 1 and not (killed / "metrics.json").exists()
    trained: list[str] = []  # what the resumed call trains: only the SPP run's second epoch

    def counting(*args, **kwargs):
        trained.append(kwargs["description"])
        return real_train_epoch(*args, **kwargs)

    monkeypatch.setattr(sequence, "train_epoch", counting)
    assert vae_sequence.main(_argv(data_root, killed, "--resume")) == 0
    monkeypatch.undo()
    assert trained == ["spp_lam100 epoch 2/2"]
    a = torch.load(full / "checkpoints" / "spp_lam100.pt", weights_only=False)
    b = torch.load(killed / "checkpoints" / "spp_lam100.pt", weights_only=False)
    assert len(b["history"]) == 2
    assert all(torch.allclose(a["model"][k], b["model"][k], atol=1e-6) for k in a["model"])
    metrics = [json.loads((run / "metrics.json").read_text())["runs"] for run in (full, killed)]
    assert metrics[0]["spp_lam100"]["recon_mse_task1_after_task2"] == pytest.approx(
        metrics[1]["spp_lam100"]["recon_mse_task1_after_task2"], rel=1e-5
    )


def test_command_line_refuses_bad_options_with_the_allowed_values(data_root, tmp_path, capsys):
    for extra, message in (
        (["--lam", "-1"], "lam must be one or more values > 0"),
        (["--lam", "0"], "lam must be one or more values > 0"),
        (["--lam", "10,1e1"], "lam values must be distinct"),
        (["--amp"], "--amp (bf16 autocast) needs --device cuda"),
        (["--domains", "celeba,mnist"], "unknown domain 'mnist'; choose from"),
        (["--fisher", "full"], "fisher must be one of ['per_sample', 'batch']"),
        (["--image-size", "18"], "divisible by 2**depth"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            vae_sequence.main(_argv(data_root, tmp_path / "x", *extra))
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_missing_data_and_weights_through_the_command_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    argv = _argv(tmp_path / "empty", tmp_path / "run")
    with caplog.at_level(logging.ERROR):
        assert vae_sequence.main(argv) == 2
    assert "CelebA not found" in caplog.text and "list_eval_partition.txt" in caplog.text
    caplog.clear()
    no_fallback = [a for a in argv if a != "--fid-fallback"]
    with caplog.at_level(logging.ERROR):
        assert vae_sequence.main(no_fallback) == 2  # before any data is read or anything trained
    assert "Inception FID weights not found" in caplog.text and str(tmp_path / "hub") in caplog.text
    assert not (tmp_path / "run").exists()


def test_generate_uses_the_same_latents_for_every_model(monkeypatch):
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(tiny_vae())
    latents: list[torch.Tensor] = []
    real_decode = ConvVAE.decode

    def recording_decode(self, z, task):
        latents.append(z.detach().clone())
        return real_decode(self, z, task)

    monkeypatch.setattr(ConvVAE, "decode", recording_decode)
    a = generate(models[0], 5, 0, seed=3, batch_size=2)
    z_a = torch.cat(latents)
    latents.clear()
    b = generate(models[1], 5, 0, seed=3)
    z_b = torch.cat(latents)
    assert a.shape == b.shape == (5, 3, 16, 16)
    assert torch.equal(z_a, z_b) and z_a.shape == (5, 4)  # the same codes, whatever model and batch size
    assert not torch.allclose(a, b)  # the panels differ only by the decoder
    latents.clear()
    torch.testing.assert_close(generate(models[0], 5, 0, seed=3), a)
    latents.clear()
    generate(models[0], 5, 0, seed=4)
    assert not torch.equal(torch.cat(latents), z_a)  # the seed chooses the codes
    assert float(a.min()) >= 0 and float(a.max()) <= 1


def test_command_line_spp_forgets_less_than_sgd_with_one_run_per_lambda(data_root, tmp_path):
    """Through main(): two strengths give two SPP runs; the strong one keeps task 1 better than SGD."""
    out = tmp_path / "run"
    argv = _argv(data_root, out, "--lam", "1e-9,100", "--lr", "3e-3")
    argv[argv.index("--epochs") + 1] = "20"
    config = vae_sequence.parse_args(argv)
    assert config.runs == ("task1_only", "sgd", "spp_lam1e-09", "spp_lam100")
    assert vae_sequence.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    runs, training = metrics["runs"], metrics["training"]
    assert set(runs) == set(config.runs)
    increase = {run: runs[run]["recon_mse_task1_increase"] for run in config.runs[1:]}
    # measured (seed 0): sgd 0.089, lam 1e-9 0.086, lam 100 0.033 (0.057 with neg_entropy)
    assert increase["sgd"] > 0.04  # plain SGD forgets the faces
    assert increase["spp_lam100"] < 0.75 * increase["sgd"]
    assert increase["spp_lam1e-09"] == pytest.approx(increase["sgd"], rel=0.1)  # a vanishing lam is SGD
    for run in config.runs[2:]:
        assert len(training[run]["history"]) == 20 and (out / "checkpoints" / f"{run}.pt").is_file()
    penalty = {run: training[run]["history"][0]["penalty"] for run in config.runs[1:]}
    assert penalty["sgd"] == 0 and penalty["spp_lam1e-09"] > 0 and penalty["spp_lam100"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(data_root, tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert vae_sequence.main(_argv(data_root, tmp_path / "run", "--device", "cuda")) == 2
    assert "torch.cuda.is_available() is False" in caplog.text
