"""The image data sets on disk: where each lives under the data root, and readers of their formats.

Each reader returns ``uint8`` images ``(N, C, H, W)`` and ``int64`` labels ``(N,)`` (IDX for MNIST,
pickles for CIFAR, .mat for SVHN, binaries for STL-10, PNG folders for notMNIST); a missing data set
raises :class:`~benchmarks.errors.DatasetNotFoundError` naming the folder and the files expected
(docs/datasets.md). :class:`InMemoryImages` and :class:`ImageFiles` are the datasets handed to
Avalanche. :mod:`benchmarks.image_data` builds the benchmarks from them.
"""

from __future__ import annotations

import functools
import gzip
import logging
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.transforms.functional import pil_to_tensor

from benchmarks.errors import DatasetCorruptError, DatasetNotFoundError

log = logging.getLogger(__name__)

BENCHMARK_NAMES = ("five_datasets", "split_cifar100", "split_caltech101")
DOCS = "docs/datasets.md"
_LETTERS = tuple("ABCDEFGHIJ")


@dataclass(frozen=True)
class _Source:
    """One data set on disk: ``<data_root>/<folder>/<entry>`` for each expected entry.

    Entries ending in ``/`` are folders that must hold at least one file or folder.
    """

    title: str
    folder: str
    expected: tuple[str, ...]
    anchor: str  # section of docs/datasets.md
    download: Callable[[Path], None] | None = None
    gz_ok: bool = False  # a file may also be present gzip-compressed as "<name>.gz"

    def missing(self, data_root: Path) -> list[str]:
        """The expected entries that are absent (all of them if the folder is absent)."""
        folder = data_root / self.folder
        absent = []
        for entry in self.expected:
            path = folder / entry.rstrip("/")
            if entry.endswith("/"):
                ok = path.is_dir() and any(path.iterdir())
            else:
                ok = path.is_file() or (self.gz_ok and path.with_name(path.name + ".gz").is_file())
            if not ok:
                absent.append(entry)
        return absent


def _tv_download(
    dataset: str, splits: Sequence[dict[str, Any]] = ({},), subfolder: str | None = None
) -> Callable[[Path], None]:
    """A function downloading ``dataset`` with torchvision (its class of that name) into the root."""

    def download(data_root: Path) -> None:
        import torchvision.datasets as tvd

        root = data_root / subfolder if subfolder else data_root
        for split_kwargs in splits:
            getattr(tvd, dataset)(str(root), download=True, **split_kwargs)

    return download


_SOURCES: dict[str, _Source] = {
    "MNIST": _Source(
        "MNIST",
        "MNIST/raw",
        (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ),
        "mnist",
        _tv_download("MNIST", splits=({"train": True}, {"train": False})),
        gz_ok=True,
    ),
    "notMNIST_large": _Source(
        "notMNIST (training images)", "notMNIST_large", tuple(f"{c}/" for c in _LETTERS), "notmnist"
    ),
    "notMNIST_small": _Source(
        "notMNIST (test images)", "notMNIST_small", tuple(f"{c}/" for c in _LETTERS), "notmnist"
    ),
    "SVHN": _Source(
        "SVHN",
        "SVHN",
        ("train_32x32.mat", "test_32x32.mat"),
        "svhn",
        _tv_download("SVHN", subfolder="SVHN", splits=({"split": "train"}, {"split": "test"})),
    ),
    "STL-10": _Source(
        "STL-10",
        "stl10_binary",
        ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"),
        "stl-10",
        _tv_download("STL10", splits=({"split": "train"}, {"split": "test"})),
    ),
    "CIFAR-10": _Source(
        "CIFAR-10",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",),
        "cifar-10-and-cifar-100",
        _tv_download("CIFAR10", splits=({"train": True}, {"train": False})),
    ),
    "CIFAR-100": _Source(
        "CIFAR-100",
        "cifar-100-python",
        ("train", "test"),
        "cifar-10-and-cifar-100",
        _tv_download("CIFAR100", splits=({"train": True}, {"train": False})),
    ),
    "Caltech-101": _Source(
        "Caltech-101",
        "caltech101/101_ObjectCategories",
        ("<category>/ for each category, holding its .jpg images",),
        "caltech-101",
        _tv_download("Caltech101"),
    ),
}


_NEEDS = {
    "five_datasets": ("MNIST", "notMNIST_large", "notMNIST_small", "SVHN", "STL-10", "CIFAR-10"),
    "split_cifar100": ("CIFAR-100",),
    "split_caltech101": ("Caltech-101",),
}


def _caltech_missing(source: _Source, data_root: Path) -> list[str]:
    folder = data_root / source.folder
    if folder.is_dir() and any(p.is_dir() for p in folder.iterdir()):
        return []
    return list(source.expected)


def _absent(key: str, data_root: Path) -> list[str]:
    source = _SOURCES[key]
    if key == "Caltech-101":
        return _caltech_missing(source, data_root)
    return source.missing(data_root)


def missing_data(name: str, data_root: str | Path) -> list[str]:
    """Describe every data set of benchmark ``name`` that is missing under ``data_root``.

    Args:
        name: one of :data:`BENCHMARK_NAMES`.
        data_root: the folder that should hold the data sets.

    Returns:
        One human-readable line per missing data set (folder, files expected, where the docs
        explain how to get it); an empty list when everything is in place. Nothing is downloaded.
    """
    _check_name(name)
    root = Path(data_root).expanduser()
    return [_describe(key, root, _absent(key, root), None) for key in _NEEDS[name] if _absent(key, root)]


def _describe(key: str, root: Path, absent: list[str], download_error: str | None) -> str:
    source = _SOURCES[key]
    folder = root / source.folder
    files = ", ".join(source.expected)
    gz = " (each may also be gzip-compressed as <name>.gz)" if source.gz_ok else ""
    line = f"- {source.title}: expected folder {folder} with {files}{gz}; missing: {', '.join(absent)}."
    if source.download is None:
        line += " It cannot be downloaded automatically."
    elif download_error is not None:
        line += f" Download failed: {download_error}."
    return line + f" How to get it: {DOCS}, section '{source.anchor}'."


def _ensure_present(name: str, data_root: Path, download: bool) -> None:
    """Download what is missing (where possible and allowed); raise listing what is still missing."""
    problems, cause = [], None
    for key in _NEEDS[name]:
        absent = _absent(key, data_root)
        if not absent:
            continue
        source = _SOURCES[key]
        error = None
        if download and source.download is not None:
            log.info("%s not found under %s: downloading it with torchvision", source.title, data_root)
            try:
                source.download(data_root)
            except Exception as err:  # reported below: DatasetNotFoundError, chained to it
                error, cause = f"{type(err).__name__}: {err}", cause or err
            absent = _absent(key, data_root)
            if not absent:
                continue
        problems.append(_describe(key, data_root, absent, error))
    if problems:
        hint = "" if download else " (download=False: nothing was downloaded)"
        raise DatasetNotFoundError(
            f"Benchmark {name!r} needs data that is not under the data root {data_root}{hint}:\n"
            + "\n".join(problems)
            + f"\nPut the files there (or pass the folder that holds them as --data-root); {DOCS} "
            "explains how to obtain and lay out each data set."
        ) from cause


@dataclass(frozen=True)
class _Images:
    """Decoded images of one split of a data set."""

    images: Tensor  # (N, C, H, W) uint8, C = 1 (grey) or 3 (RGB)
    targets: np.ndarray  # (N,) int64, class ids from 0


def _read_bytes(path: Path) -> bytes:
    if path.is_file():
        return path.read_bytes()
    with gzip.open(path.with_name(path.name + ".gz"), "rb") as f:
        return f.read()


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (MNIST's format; ``path`` or ``path.gz``) of unsigned bytes.

    Returns:
        The array with the shape stored in the header, e.g. ``(N, 28, 28)`` or ``(N,)``, uint8.
    """
    data = _read_bytes(path)
    fix = "Delete it (and its .gz) and fetch the data set again; see docs/datasets.md."
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetCorruptError(f"{path} is not an idx file of unsigned bytes (bad magic number). {fix}")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise DatasetCorruptError(
            f"{path}: header says shape {dims} but the file holds {len(data) - offset} bytes "
            f"(truncated?). {fix}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _load_mnist(root: Path) -> tuple[_Images, _Images]:
    folder = root / _SOURCES["MNIST"].folder
    splits = []
    for prefix in ("train", "t10k"):
        images = read_idx(folder / f"{prefix}-images-idx3-ubyte")
        labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte")
        splits.append(_Images(torch.from_numpy(images.copy())[:, None], labels.astype(np.int64)))
    return splits[0], splits[1]


def _unpickle(path: Path) -> dict:
    with path.open("rb") as f:
        entry = pickle.load(f, encoding="bytes")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in entry.items()}


def _read_cifar(paths: Sequence[Path], label_key: str) -> _Images:
    data, labels = [], []
    for path in paths:
        entry = _unpickle(path)
        if "data" not in entry or label_key not in entry:
            raise ValueError(f"{path} is not a CIFAR python batch (no 'data'/'{label_key}' entry)")
        data.append(np.asarray(entry["data"], dtype=np.uint8))
        labels.extend(entry[label_key])
    images = np.concatenate(data).reshape(-1, 3, 32, 32)
    return _Images(torch.from_numpy(images), np.asarray(labels, dtype=np.int64))


def _load_cifar10(root: Path) -> tuple[_Images, _Images]:
    folder = root / _SOURCES["CIFAR-10"].folder
    train = _read_cifar([folder / f"data_batch_{i}" for i in range(1, 6)], "labels")
    return train, _read_cifar([folder / "test_batch"], "labels")


def _load_cifar100(root: Path) -> tuple[_Images, _Images]:
    folder = root / _SOURCES["CIFAR-100"].folder
    return _read_cifar([folder / "train"], "fine_labels"), _read_cifar([folder / "test"], "fine_labels")


def _load_svhn(root: Path) -> tuple[_Images, _Images]:
    import scipy.io

    splits = []
    for split in ("train", "test"):
        mat = scipy.io.loadmat(str(root / _SOURCES["SVHN"].folder / f"{split}_32x32.mat"))
        images = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1)))  # (32,32,3,N) -> NCHW
        labels = mat["y"].astype(np.int64).reshape(-1)
        labels[labels == 10] = 0  # SVHN stores the digit 0 as class 10
        splits.append(_Images(torch.from_numpy(images), labels))
    return splits[0], splits[1]


def _load_stl10(root: Path) -> tuple[_Images, _Images]:
    folder = root / _SOURCES["STL-10"].folder
    splits = []
    for split in ("train", "test"):
        raw = np.fromfile(folder / f"{split}_X.bin", dtype=np.uint8)
        if raw.size % (3 * 96 * 96):
            raise ValueError(f"{folder / f'{split}_X.bin'} does not hold whole 3x96x96 images")
        # Stored column-major per channel: (N, C, W, H) -> (N, C, H, W).
        images = np.ascontiguousarray(raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2))
        labels = np.fromfile(folder / f"{split}_y.bin", dtype=np.uint8).astype(np.int64) - 1
        if len(labels) != len(images):
            raise ValueError(f"{folder}: {len(images)} images but {len(labels)} labels in {split}")
        splits.append(_Images(torch.from_numpy(images), labels))
    return splits[0], splits[1]


def _decode_letters(folder: Path) -> _Images:
    """Decode a notMNIST folder (``A/ .. J/`` of 28x28 grey PNGs), skipping unreadable files."""
    listing = ImageFolder(str(folder), loader=str)  # only the file list; decoding is done below
    if tuple(listing.classes) != _LETTERS:
        raise ValueError(f"{folder} should hold exactly the folders A..J, found {listing.classes}")
    start = time.perf_counter()
    images = np.empty((len(listing.samples), 28, 28), dtype=np.uint8)
    labels = np.empty(len(listing.samples), dtype=np.int64)
    kept, skipped = 0, []
    for path, label in listing.samples:
        try:
            with Image.open(path) as img:
                img = img.convert("L")
                if img.size != (28, 28):
                    img = img.resize((28, 28), Image.Resampling.BILINEAR)
                images[kept] = np.asarray(img)
        except (OSError, SyntaxError, ValueError):  # zero-byte or truncated PNGs ship with notMNIST
            skipped.append(path)
            continue
        labels[kept] = label
        kept += 1
    if skipped:
        log.warning(
            "%s: skipped %d unreadable image file(s) of %d (first: %s)",
            folder,
            len(skipped),
            len(listing.samples),
            skipped[0],
        )
    log.info("decoded %d notMNIST images from %s in %.1f s", kept, folder, time.perf_counter() - start)
    return _Images(torch.from_numpy(images[:kept, None].copy()), labels[:kept].copy())


def _load_notmnist(root: Path) -> tuple[_Images, _Images]:
    return _decode_letters(root / "notMNIST_large"), _decode_letters(root / "notMNIST_small")


def _resize_uint8(images: Tensor, size: int, chunk: int = 1024) -> Tensor:
    """Resize ``(N, C, H, W)`` uint8 images to ``(N, C, size, size)``: bilinear with antialiasing."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        block = images[start : start + chunk].float()
        block = F.interpolate(block, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = block.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _stamp(data_root: Path, keys: Sequence[str]) -> tuple:
    """Modification times of the folders and files a loader reads (the cache key)."""
    stamp = []
    for key in keys:
        folder = data_root / _SOURCES[key].folder
        for path in (folder, *sorted(folder.iterdir())):
            stat = path.stat()
            stamp.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(stamp)


@functools.lru_cache(maxsize=8)
def _load_cached(title: str, data_root: str, image_size: int, stamp: tuple) -> tuple[_Images, _Images]:
    del stamp  # only part of the cache key
    loader, _ = _LOADERS[title]
    start = time.perf_counter()
    train, test = loader(Path(data_root))
    splits = tuple(_Images(_resize_uint8(s.images, image_size), s.targets) for s in (train, test))
    log.info(
        "loaded %s (%d train, %d test images) in %.1f s",
        title,
        len(train.targets),
        len(test.targets),
        time.perf_counter() - start,
    )
    return splits


def _load(title: str, data_root: Path, image_size: int) -> tuple[_Images, _Images]:
    return _load_cached(title, str(data_root), image_size, _stamp(data_root, _LOADERS[title][1]))


def clear_cache() -> None:
    """Forget the decoded data sets kept in memory by earlier :func:`build` calls."""
    _load_cached.cache_clear()


class InMemoryImages(Dataset):
    """Some of a uint8 image tensor, converted to float one item at a time.

    Item ``i`` is ``(x, y)``: ``x = images[indices[i]] / 255`` as a ``(3, H, W)`` float in
    ``[0, 1]`` (a grey image is repeated to 3 channels), ``y = targets[i]``.

    Args:
        images: ``(M, C, H, W)`` uint8, ``C`` 1 or 3; shared, not copied.
        indices: ``(N,)`` rows of ``images`` in this dataset (a row may repeat).
        targets: ``N`` class ids.
    """

    def __init__(self, images: Tensor, indices: np.ndarray, targets: Sequence[int]):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            shape = tuple(images.shape)
            raise ValueError(f"images must be uint8 (M, 1 or 3, H, W), got {images.dtype} {shape}")
        if len(indices) != len(targets):
            raise ValueError(f"{len(indices)} indices but {len(targets)} targets")
        self.images = images
        self.indices = np.asarray(indices, dtype=np.int64)
        self.targets = [int(t) for t in targets]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x = self.images[int(self.indices[i])].float().div_(255.0)  # (C, H, W)
        if x.shape[0] == 1:
            x = x.repeat(3, 1, 1)
        return x, self.targets[i]


class ImageFiles(Dataset):
    """Images decoded from files on each access (Caltech-101: too large to keep decoded).

    Item ``i`` is ``(x, y)``: the RGB image at ``paths[i]`` resized (bilinear, antialiased, aspect
    ratio not kept, as the paper's "[224, 224, 3]") to ``(3, image_size, image_size)``, float in
    ``[0, 1]``; ``y = targets[i]``.
    """

    def __init__(self, paths: Sequence[str], targets: Sequence[int], image_size: int):
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        self.paths = [str(p) for p in paths]
        self.targets = [int(t) for t in targets]
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        with Image.open(self.paths[i]) as img:
            img = img.convert("RGB").resize((self.image_size,) * 2, Image.Resampling.BILINEAR)
            x = pil_to_tensor(img).float().div_(255.0)  # (3, S, S)
        return x, self.targets[i]


_LOADERS: dict[str, tuple[Callable[[Path], tuple[_Images, _Images]], tuple[str, ...]]] = {
    "MNIST": (_load_mnist, ("MNIST",)),
    "notMNIST": (_load_notmnist, ("notMNIST_large", "notMNIST_small")),
    "SVHN": (_load_svhn, ("SVHN",)),
    "STL-10": (_load_stl10, ("STL-10",)),
    "CIFAR-10": (_load_cifar10, ("CIFAR-10",)),
    "CIFAR-100": (_load_cifar100, ("CIFAR-100",)),
}


def _check_name(name: str) -> None:
    if name not in BENCHMARK_NAMES:
        raise ValueError(f"unknown image benchmark {name!r}; choose one of {', '.join(BENCHMARK_NAMES)}")
