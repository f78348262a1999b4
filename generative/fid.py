"""Fréchet distances between image sets: pytorch-fid's Inception FID, offline, or a fallback.

The Fréchet distance between Gaussians fitted to two sets of features ``f`` (Heusel et al. 2017)::

    d^2 = ||mu_1 - mu_2||^2 + Tr(C_1 + C_2 - 2 (C_1 C_2)^(1/2))

is computed by pytorch-fid's ``calculate_frechet_distance``. Two feature extractors:

* **Inception FID**: pytorch-fid's ``InceptionV3`` (2048-d pool3 features, the TF-FID weights
  ``pt_inception-2015-12-05-6726825d.pth``). Nothing is downloaded: the weights come from
  ``--fid-weights PATH`` or from pytorch-fid's own cache, ``torch.hub.get_dir()/checkpoints/``
  (where its ``load_state_dict_from_url`` would have put them). The file is checked *before* the
  network is built, and the loader is pointed at that file, so a missing file fails at once with
  :class:`FIDWeightsNotFoundError` instead of a download attempt.
* **Fallback features** (no download): a small CNN trained, with a fixed seed, on the real training
  images of both domains with two objectives: (i) which domain an image comes from, so that samples
  drifting towards the other domain move far; (ii) autoencoding through the feature layer, so the
  features keep the image content (shape, texture, blur), not only the one bit the domain head
  needs. Labels within a domain are not used because CelebA and anime faces have none to share. Its
  64-d penultimate features give an FD that ranks models trained and measured in the same run; it is
  **not** comparable to Inception FID or to other runs, and every report says so
  (:data:`FALLBACK_LABEL`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm import tqdm

log = logging.getLogger(__name__)

FID_LABEL = "FID (pytorch-fid InceptionV3 pool3, 2048-d)"
FALLBACK_LABEL = "FD (fallback features, not comparable to Inception FID)"
FALLBACK_FEATURE_DIM = 64


class FIDWeightsNotFoundError(FileNotFoundError):
    """The Inception FID weights are not on disk; the message says where to put them."""


def activation_statistics(features: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ``features (N, D)``: ``mu (D,)``, ``sigma (D, D)`` in float64."""
    array = features.detach().cpu().double().numpy() if isinstance(features, Tensor) else features
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got shape {array.shape}")
    return array.mean(axis=0), np.cov(array, rowvar=False).reshape(array.shape[1], array.shape[1])


def frechet_distance(features_a: np.ndarray | Tensor, features_b: np.ndarray | Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(N_a, D)`` and ``(N_b, D)``.

    The math is pytorch-fid's ``calculate_frechet_distance``; its notices (``print`` and SciPy
    deprecation warnings) are routed to the log.
    """
    from pytorch_fid.fid_score import calculate_frechet_distance

    mu_a, sigma_a = activation_statistics(features_a)
    mu_b, sigma_b = activation_statistics(features_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature dimensions differ: {mu_a.shape[0]} vs {mu_b.shape[0]}")
    n_min = min(len(features_a), len(features_b))
    if n_min <= mu_a.shape[0]:
        log.warning(
            "Frechet distance from %d samples of %d-d features: the covariances are singular and "
            "the distance is unreliable; use more samples than feature dimensions",
            n_min,
            mu_a.shape[0],
        )
    printed = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
        warnings.simplefilter("ignore", DeprecationWarning)
        value = float(calculate_frechet_distance(mu_a, sigma_a, mu_b, sigma_b))
    if printed.getvalue().strip():
        log.info("pytorch-fid: %s", printed.getvalue().strip())
    return value


def fid_weights_path(explicit: str | os.PathLike | None = None) -> Path:
    """Where the pytorch-fid Inception weights are: ``explicit`` or pytorch-fid's hub cache.

    Raises:
        FIDWeightsNotFoundError: the file is absent (the message names the places looked at, the
            URL to fetch it from on a machine with network, and the ``--fid-fallback`` option).
    """
    from pytorch_fid.inception import FID_WEIGHTS_URL

    filename = FID_WEIGHTS_URL.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if explicit is not None:
        path = Path(explicit)
        if path.is_file():
            return path
        where = f"--fid-weights {path} does not exist"
    elif cached.is_file():
        return cached
    else:
        where = f"no --fid-weights given and pytorch-fid's cache {cached} is absent"
    raise FIDWeightsNotFoundError(
        f"Inception FID weights not found: {where}. Download {FID_WEIGHTS_URL} on a machine with "
        f"network and pass --fid-weights PATH, or copy it to {cached}; or use --fid-fallback for "
        f"the offline '{FALLBACK_LABEL}'."
    )


class InceptionFeatures(nn.Module):
    """pytorch-fid's ``InceptionV3`` pool3 features, with its weights read from a local file.

    Args:
        weights: the ``pt_inception-2015-12-05`` state-dict file (see :func:`fid_weights_path`).

    Input ``(B, 3, H, W)`` in ``[0, 1]`` (resized to 299 inside); output ``(B, 2048)``.
    """

    def __init__(self, weights: str | os.PathLike) -> None:
        super().__init__()
        from pytorch_fid import inception as pf_inception

        path = Path(weights)
        if not path.is_file():
            raise FIDWeightsNotFoundError(f"Inception FID weights file {path} does not exist")

        def load_local(url: str, *args: object, **kwargs: object) -> dict:
            log.info("loading Inception FID weights from %s (instead of %s)", path, url)
            return torch.load(path, map_location="cpu", weights_only=True)

        # fid_inception_v3() calls load_state_dict_from_url(FID_WEIGHTS_URL): point it at the file.
        original = pf_inception.load_state_dict_from_url
        pf_inception.load_state_dict_from_url = load_local
        try:
            self.net = pf_inception.InceptionV3([pf_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
        finally:
            pf_inception.load_state_dict_from_url = original
        self.net.eval()

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)[0].flatten(1)  # (B, 2048)


class FallbackFeatureNet(nn.Module):
    """Small CNN whose penultimate layer gives the fallback FD features.

    Encoder: 3 x [conv 3x3 stride 2, ReLU] -> adaptive average pool to 4x4 -> fc -> ``feature_dim``
    (the features). Heads: a domain classifier on ``relu(features)`` and a decoder that reconstructs
    the image from the features.

    Args:
        image_size: side ``S`` of the images (any ``S >= 8``).
        num_domains: classes of the domain head.
        width: channels of the first conv.
        feature_dim: ``D``, the feature dimension.

    Shapes: images ``(B, 3, S, S)`` in ``[0, 1]`` -> features ``(B, D)``.
    """

    def __init__(
        self,
        image_size: int,
        num_domains: int = 2,
        width: int = 32,
        feature_dim: int = FALLBACK_FEATURE_DIM,
    ) -> None:
        super().__init__()
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        self.image_size = image_size
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(4 * width * 16, feature_dim),
        )
        self.domain_head = nn.Linear(feature_dim, num_domains)
        self.decoder = nn.Sequential(
            nn.Linear(feature_dim, 4 * width * 16),
            nn.ReLU(),
            nn.Unflatten(1, (4 * width, 4, 4)),
            nn.ConvTranspose2d(4 * width, 2 * width, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 3, 3, padding=1),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.encoder(images)  # (B, D)

    def heads(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(domain logits (B, num_domains), reconstruction logits (B, 3, S, S))``."""
        features = self.encoder(images)
        recon = self.decoder(features)
        recon = F.interpolate(recon, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return self.domain_head(F.relu(features)), recon


class _Labelled(Dataset):
    def __init__(self, dataset: Dataset, label: int) -> None:
        self.dataset, self.label = dataset, label

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.dataset[index], self.label


def train_fallback_extractor(
    domains: Sequence[Dataset],
    image_size: int,
    *,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    feature_dim: int = FALLBACK_FEATURE_DIM,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> FallbackFeatureNet:
    """Train :class:`FallbackFeatureNet` on real training images of every domain.

    Loss per batch: ``cross_entropy(domain) + mean-per-pixel BCE(reconstruction, image)``.

    Args:
        domains: one image dataset (items ``(3, S, S)``) per domain; its index is its label.
        image_size: ``S``.
        epochs, batch_size, lr: Adam training schedule.
        seed: seeds the initialisation and the shuffling.
        feature_dim: ``D``, the feature dimension (use fewer than the images compared).
        device: where to train.
        progress: tqdm bars.

    Returns:
        The trained network, in eval mode.
    """
    if len(domains) < 2:
        raise ValueError(
            f"need at least two domains to train the fallback features, got {len(domains)}"
        )
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FallbackFeatureNet(image_size, len(domains), feature_dim=feature_dim).to(device)
        data = ConcatDataset([_Labelled(d, i) for i, d in enumerate(domains)])
        loader = DataLoader(
            data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
        )
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        net.train()
        for epoch in range(epochs):
            totals = [0.0, 0.0, 0]
            for x, y in tqdm(
                loader,
                desc=f"fallback features {epoch + 1}/{epochs}",
                disable=not (progress and sys.stderr.isatty()),
                leave=False,
            ):
                x, y = x.to(device), y.to(device)
                domain_logits, recon = net.heads(x)
                domain_loss = F.cross_entropy(domain_logits, y)
                recon_loss = F.binary_cross_entropy_with_logits(recon, x)
                optimizer.zero_grad(set_to_none=True)
                (domain_loss + recon_loss).backward()
                optimizer.step()
                totals[0] += float(domain_loss.detach()) * x.shape[0]
                totals[1] += float(recon_loss.detach()) * x.shape[0]
                totals[2] += x.shape[0]
            log.info(
                "fallback features epoch %d: domain CE %.4f, recon BCE %.4f",
                epoch + 1,
                totals[0] / totals[2],
                totals[1] / totals[2],
            )
    return net.eval()


@torch.no_grad()
def extract_features(
    extractor: nn.Module, images: Tensor | Dataset, *, batch_size: int = 128
) -> np.ndarray:
    """Features ``(N, D)`` (float64) of images ``(N, 3, S, S)`` in ``[0, 1]`` or of a dataset."""
    device = next(extractor.parameters()).device
    was_training = extractor.training
    extractor.eval()
    try:
        out = [extractor(x.to(device)).double().cpu() for x in _batches(images, batch_size)]
    finally:
        extractor.train(was_training)
    if not out:
        raise ValueError("no image to extract features from")
    return torch.cat(out).numpy()


def _batches(images: Tensor | Dataset, batch_size: int) -> Iterator[Tensor]:
    if isinstance(images, Tensor):
        yield from images.split(batch_size)
    else:
        yield from DataLoader(images, batch_size=batch_size, shuffle=False)
