"""Image domains for the VAE sequence: CelebA, anime faces, and two real offline domains.

Every dataset here yields image tensors ``(3, S, S)`` in ``[0, 1]`` (no labels: the VAE and its
importance are label-free). Domains, with the files each expects under ``--data-root`` (``ROOT``):

``celeba``
    torchvision's layout: ``ROOT/celeba/img_align_celeba/*.jpg`` and
    ``ROOT/celeba/list_eval_partition.txt`` (``<file> <0|1|2>`` per line: train/valid/test). Only
    those two are read (the VAE needs no attributes), so the md5 checks of torchvision's ``CelebA``
    on the five annotation files are not required; with ``download=True`` and files missing,
    torchvision's ``CelebA(ROOT, download=True)`` is asked to fetch them (Google Drive, via gdown).
    Images are centre-cropped to ``140/178`` of their shorter side (140 px on the 178x218 aligned
    images, the usual face crop) and resized to ``S``.
``anime``
    An ``ImageFolder``: ``ROOT/anime/<any subfolder>/*.{jpg,png,...}``, e.g. the Kaggle "Anime Face
    Dataset" unpacked as ``ROOT/anime/images/*.jpg`` or the 96x96 "anime-faces" set as
    ``ROOT/anime/faces/*.jpg``. There is no official split: a seeded permutation holds out
    ``ANIME_TEST_FRACTION`` of the files as the test set. torchvision cannot download it.
    Images are resized (shorter side) to ``S`` and centre-cropped to ``S x S``.
``fmnist``
    Fashion-MNIST idx files ``{train,t10k}-images-idx3-ubyte[.gz]`` read directly, from
    ``ROOT/FashionMNIST/raw/`` (torchvision's layout) or else from the Debian package
    ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``). 28x28 grey, resized to ``S``
    and repeated to 3 channels.
``digits``
    scikit-learn's bundled ``load_digits`` (1797 images, 8x8, values 0..16, no download), scaled to
    ``[0, 1]``, resized to ``S``, repeated to 3 channels; a seeded permutation holds out
    ``DIGITS_TEST_FRACTION`` as the test set.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import Dataset, Subset

from benchmarks.errors import DatasetCorruptError

log = logging.getLogger(__name__)

DOMAINS = ("celeba", "anime", "fmnist", "digits")
#: Centre crop of the aligned CelebA faces: 140 of the 178 px width.
CELEBA_CROP_FRACTION = 140 / 178
CELEBA_FILES = ("img_align_celeba/", "list_eval_partition.txt")
ANIME_TEST_FRACTION = 0.1
DIGITS_TEST_FRACTION = 0.2
FMNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
SPLITS = ("train", "test")


class DatasetNotFoundError(FileNotFoundError):
    """A domain's files are not where they are expected; the message says what to put where."""


@dataclass
class Domain:
    """A domain's train and test sets; each item is an image tensor ``(3, S, S)`` in ``[0, 1]``."""

    name: str
    train: Dataset
    test: Dataset
    source: str = ""  # where the files were read from


def load_domain(
    name: str,
    root: str | os.PathLike,
    image_size: int,
    *,
    seed: int = 0,
    max_train: int | None = None,
    max_test: int | None = None,
    download: bool = False,
) -> Domain:
    """Load a domain's train and test images.

    Args:
        name: one of :data:`DOMAINS`.
        root: the data root (``--data-root``).
        image_size: side ``S`` of the returned square images.
        seed: seed of the held-out split (anime, digits) and of the subsets.
        max_train, max_test: keep at most this many images (a seeded random subset).
        download: let torchvision try to download what it can (CelebA only).

    Returns:
        A :class:`Domain`.

    Raises:
        ValueError: unknown domain or bad sizes.
        DatasetNotFoundError: the domain's files are missing (the message names them).
    """
    if name not in DOMAINS:
        raise ValueError(f"unknown domain {name!r}; choose from {list(DOMAINS)}")
    if not isinstance(image_size, int) or image_size < 4:
        raise ValueError(f"image_size must be an int >= 4, got {image_size!r}")
    for label, value in (("max_train", max_train), ("max_test", max_test)):
        if value is not None and (not isinstance(value, int) or value < 2):
            raise ValueError(f"{label} must be an int >= 2 or None, got {value!r}")
    root = Path(root)
    if name == "celeba":
        train, test = _celeba(root, image_size, download)
        source = str(root / "celeba")
    elif name == "anime":
        train, test = _anime(root, image_size, seed)
        source = str(root / "anime")
    elif name == "fmnist":
        (train, source), (test, _) = (_fmnist(root, split, image_size) for split in SPLITS)
    else:
        train, test = _digits(image_size, seed)
        source = "sklearn.datasets.load_digits"
    return Domain(name, _subset(train, max_train, seed), _subset(test, max_test, seed + 1), source)


def _subset(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    n = len(dataset)  # type: ignore[arg-type]
    if limit is None or limit >= n:
        return dataset
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit]
    return Subset(dataset, sorted(order.tolist()))


def _split_indices(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = max(1, round(n * test_fraction))
    return sorted(order[n_test:]), sorted(order[:n_test])


class ImageFiles(Dataset):
    """Images read from files, cropped and resized to ``(3, S, S)`` tensors in ``[0, 1]``.

    Args:
        paths: image files.
        image_size: ``S``.
        crop_fraction: centre square crop of this fraction of the shorter side before resizing
            (1.0: the largest centred square).
    """

    def __init__(self, paths: Sequence[Path], image_size: int, crop_fraction: float = 1.0) -> None:
        self.paths = list(paths)
        self.image_size = image_size
        self.crop_fraction = crop_fraction

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        with Image.open(self.paths[index]) as image:
            image = image.convert("RGB")
            width, height = image.size
            side = max(1, round(min(width, height) * self.crop_fraction))
            left, top = (width - side) // 2, (height - side) // 2
            image = image.crop((left, top, left + side, top + side))
            image = image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
            array = np.asarray(image, dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)  # (3, S, S)


def _celeba(root: Path, image_size: int, download: bool) -> tuple[Dataset, Dataset]:
    folder = root / "celeba"
    images, partition = folder / "img_align_celeba", folder / "list_eval_partition.txt"
    if download and not (images.is_dir() and partition.is_file()):
        from torchvision.datasets import CelebA

        log.info("asking torchvision to download CelebA into %s", folder)
        try:
            CelebA(str(root), split="all", target_type=[], download=True)
        except Exception as err:  # network, gdown quota, md5: report and fall through to the check
            log.warning("torchvision could not download CelebA: %s", err)
    if not images.is_dir() or not partition.is_file():
        raise DatasetNotFoundError(
            f"CelebA not found under {folder}: expected the folder {images}/ (the aligned JPEGs "
            f"000001.jpg ... 202599.jpg from img_align_celeba.zip) and the file {partition} "
            "(lines '<file> <0|1|2>'), i.e. torchvision's CelebA layout. Download them from "
            "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (or pass --download to let "
            "torchvision try Google Drive), or point --data-root at the folder that holds celeba/."
        )
    splits: dict[str, list[Path]] = {"train": [], "test": []}
    with open(partition) as handle:
        for line_number, line in enumerate(handle, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise ValueError(
                    f"{partition}:{line_number}: expected '<file> <0|1|2>', got {line.strip()!r}"
                )
            if fields[1] == "0":
                splits["train"].append(images / fields[0])
            elif fields[1] == "2":
                splits["test"].append(images / fields[0])
    for split, paths in splits.items():
        if not paths:
            raise DatasetNotFoundError(f"{partition} lists no {split} image (partition 0/2)")
        missing = [p for p in paths[:: max(1, len(paths) // 50)] if not p.is_file()]
        if missing:
            raise DatasetNotFoundError(
                f"{partition} lists images missing from {images}/, e.g. {missing[0].name}: "
                "unpack img_align_celeba.zip completely"
            )
    return (
        ImageFiles(splits["train"], image_size, CELEBA_CROP_FRACTION),
        ImageFiles(splits["test"], image_size, CELEBA_CROP_FRACTION),
    )


def _anime(root: Path, image_size: int, seed: int) -> tuple[Dataset, Dataset]:
    folder = root / "anime"
    paths = (
        sorted(
            p for p in folder.glob("*/*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if folder.is_dir()
        else []
    )
    if len(paths) < 2:
        raise DatasetNotFoundError(
            f"anime faces not found: expected image files in a subfolder of {folder}, i.e. "
            f"{folder}/<subfolder>/*.jpg|png (torchvision ImageFolder layout), e.g. the Kaggle "
            f"'Anime Face Dataset' unpacked as {folder}/images/. torchvision cannot download it; "
            f"found {len(paths)} image(s)."
        )
    train_idx, test_idx = _split_indices(len(paths), ANIME_TEST_FRACTION, seed)
    return (
        ImageFiles([paths[i] for i in train_idx], image_size),
        ImageFiles([paths[i] for i in test_idx], image_size),
    )


class GreyImages(Dataset):
    """In-memory grey images ``(N, S, S)`` uint8, served as ``(3, S, S)`` float in ``[0, 1]``."""

    def __init__(self, images: Tensor) -> None:
        if images.dim() != 3 or images.dtype != torch.uint8:
            raise ValueError(
                f"expected (N, S, S) uint8 images, got {tuple(images.shape)} {images.dtype}"
            )
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index].float().div(255.0).unsqueeze(0).expand(3, -1, -1)


def _resize_grey(images: Tensor, image_size: int) -> Tensor:
    """``(N, h, w)`` floats in [0, 1] -> ``(N, S, S)`` uint8 (bilinear; antialiased to shrink)."""
    out = []
    for chunk in images.split(4096):
        resized = F.interpolate(
            chunk.unsqueeze(1),
            size=(image_size, image_size),
            mode="bilinear",
            align_corners=False,
            antialias=image_size < chunk.shape[-1],
        )
        out.append(resized.squeeze(1).clamp(0, 1).mul(255).round().to(torch.uint8))
    return torch.cat(out)


def read_idx_images(path: str | os.PathLike) -> Tensor:
    """Read an idx3-ubyte image file (MNIST format), gzipped or not: ``(N, rows, cols)`` uint8.

    Raises:
        DatasetCorruptError: (a ``ValueError``) the file is truncated, empty, a broken gzip or not
            an idx3-ubyte file; the message names it and says to delete or replace it.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    fix = "Delete or replace the file with a good copy (see generative/data.py for its source)."
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (EOFError, gzip.BadGzipFile) as err:
        raise DatasetCorruptError(f"{path}: unreadable gzip file ({err}). {fix}") from err
    if len(data) < 16:
        raise DatasetCorruptError(f"{path}: too short for an idx3-ubyte file ({len(data)} bytes). {fix}")
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != 2051:
        raise DatasetCorruptError(
            f"{path}: not an idx3-ubyte image file (magic {magic}, expected 2051). {fix}"
        )
    if len(data) != 16 + n * rows * cols:
        raise DatasetCorruptError(
            f"{path}: expected {16 + n * rows * cols} bytes for {n} images, got {len(data)} "
            f"(truncated?). {fix}"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows, cols)
    return torch.from_numpy(array.copy())


def _fmnist(root: Path, split: str, image_size: int) -> tuple[Dataset, str]:
    name = FMNIST_FILES[split]
    candidates = [
        root / "FashionMNIST" / "raw" / name,
        root / "FashionMNIST" / "raw" / (name + ".gz"),
        FMNIST_DEBIAN_DIR / (name + ".gz"),
        FMNIST_DEBIAN_DIR / name,
    ]
    for path in candidates:
        if path.is_file():
            images = read_idx_images(path).float().div_(255.0)
            return GreyImages(_resize_grey(images, image_size)), str(path.parent)
    raise DatasetNotFoundError(
        f"Fashion-MNIST {split} images not found: expected {name} (or {name}.gz) in "
        f"{root / 'FashionMNIST' / 'raw'}/ or {FMNIST_DEBIAN_DIR}/ (Debian package "
        "dataset-fashion-mnist: apt-get install dataset-fashion-mnist)"
    )


def _digits(image_size: int, seed: int) -> tuple[Dataset, Dataset]:
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images).float().div_(16.0)  # (1797, 8, 8) in [0, 1]
    train_idx, test_idx = _split_indices(images.shape[0], DIGITS_TEST_FRACTION, seed)
    resized = _resize_grey(images, image_size)
    return GreyImages(resized[train_idx]), GreyImages(resized[test_idx])


def stack_images(dataset: Dataset, limit: int | None = None) -> Tensor:
    """The first ``limit`` images of ``dataset`` as one ``(N, 3, S, S)`` tensor."""
    n = len(dataset)  # type: ignore[arg-type]
    n = n if limit is None else min(n, limit)
    if n == 0:
        raise ValueError("the dataset is empty")
    return torch.stack([dataset[i] for i in range(n)])
