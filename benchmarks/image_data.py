"""Image benchmarks of the paper's CNN experiments (Sec. 4.2.1 and supplementary, Sec. 6).

Three task-incremental Avalanche benchmarks, built by :func:`build`:

* ``five_datasets``: MNIST, notMNIST, SVHN, STL-10, CIFAR-10 in that order, one task of 10 classes
  each, every image a ``(3, 32, 32)`` float in ``[0, 1]`` (grey images repeated to 3 channels,
  STL-10's 96x96 resized with antialiasing, not cropped), each task cut to the same number of
  training images (``images_per_task``; the paper used 50,000).
* ``split_cifar100``: CIFAR-100 in 20 tasks of 5 classes (seeded class order).
* ``split_caltech101``: Caltech-101 in 4 tasks of 30, 25, 25 and 22 classes (seeded class order),
  a fixed 70/30 split per class, ``(3, 224, 224)`` images in ``[0, 1]`` read lazily from disk,
  random horizontal flips for training only.

Every experience carries task label ``t`` (its index) and class ids ``0 .. n_t - 1``. Training
always uses the training data minus a validation part carved from it (stratified per class, seeded);
``split="validation"`` makes ``test_stream`` that validation part, ``split="test"`` the real test
set. Where each data set lives under the data root, how it is read and what "test" means for
Caltech-101 is in ``docs/datasets.md``.

Files are read in their standard formats directly (MNIST idx, CIFAR python pickles, SVHN ``.mat``,
STL-10 binaries, notMNIST and Caltech-101 image folders) rather than through torchvision's dataset
classes, because those check the md5 of every file and refuse anything else (their only use here
is to download what is missing). Decoded images stay ``uint8`` in memory and become floats one
item at a time; the decoded arrays are cached per process (see :func:`clear_cache`).
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
from avalanche.benchmarks import dataset_benchmark
from avalanche.benchmarks.utils import _make_taskaware_classification_dataset
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.transforms import RandomHorizontalFlip
from torchvision.transforms.functional import pil_to_tensor

from avalanche_spp.errors import DatasetCorruptError, DatasetNotFoundError

log = logging.getLogger(__name__)

__all__ = [
    "BENCHMARK_NAMES",
    "CALTECH_TASK_SIZES",
    "FIVE_DATASETS",
    "DatasetNotFoundError",
    "ImageFiles",
    "InMemoryImages",
    "build",
    "clear_cache",
    "missing_data",
    "stratified_split",
    "stratified_take",
]

BENCHMARK_NAMES = ("five_datasets", "split_cifar100", "split_caltech101")
FIVE_DATASETS = ("MNIST", "notMNIST", "SVHN", "STL-10", "CIFAR-10")  # the paper's task order
CALTECH_TASK_SIZES = (30, 25, 25, 22)  # supplementary Sec. 6; sums to 102 = 101 + BACKGROUND_Google
CALTECH_BACKGROUND = "BACKGROUND_Google"
CALTECH_TEST_FRACTION = 0.3  # the paper's 7:3 split of every class
CALTECH_SPLIT_SEED = 0  # the 70/30 split is the same for every run seed (a fixed test set)
CIFAR100_TASKS, CIFAR100_CLASSES_PER_TASK = 20, 5
SHORTFALLS = ("repeat", "cap", "error")
SPLITS = ("validation", "test")
DOCS = "docs/datasets.md"

# Keyword options of build(), per benchmark, with their defaults (None given means the default).
_OPTIONS: dict[str, dict[str, Any]] = {
    "five_datasets": {
        "images_per_task": 50_000,  # training images per task after the validation carve (paper)
        "train_limit": None,  # alias of images_per_task (the registry's generic name)
        "image_size": 32,
        "shortfall": "repeat",  # what a data set with fewer training images than asked does
        "download": True,
        "n_tasks": None,  # the first n tasks only (None: all)
    },
    "split_cifar100": {"train_limit": None, "image_size": 32, "download": True, "n_tasks": None},
    "split_caltech101": {
        "train_limit": None,
        "image_size": 224,
        "include_background": True,  # keep BACKGROUND_Google: 102 classes = 30 + 25 + 25 + 22
        "download": True,
        "n_tasks": None,
    },
}
_TASKS = {  # tasks of the full sequence
    "five_datasets": len(FIVE_DATASETS),
    "split_cifar100": CIFAR100_TASKS,
    "split_caltech101": len(CALTECH_TASK_SIZES),
}

# Seed streams: np.random.default_rng([seed, purpose, task]) keeps the draws independent.
_CLASS_ORDER, _VALIDATION, _LIMIT = 1, 2, 3

_LETTERS = tuple("ABCDEFGHIJ")
_CLASS_NAMES = {
    "MNIST": tuple(str(d) for d in range(10)),
    "notMNIST": _LETTERS,
    "SVHN": tuple(str(d) for d in range(10)),
    "STL-10": tuple("airplane bird car cat deer dog horse monkey ship truck".split()),
    "CIFAR-10": tuple("airplane automobile bird cat deer dog frog horse ship truck".split()),
}


# --------------------------------------------------------------------------------------------
# Where each data set lives under the data root
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Readers of the standard file formats: each returns uint8 images (N, C, H, W), int64 labels (N,)
# --------------------------------------------------------------------------------------------


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


_LOADERS: dict[str, tuple[Callable[[Path], tuple[_Images, _Images]], tuple[str, ...]]] = {
    "MNIST": (_load_mnist, ("MNIST",)),
    "notMNIST": (_load_notmnist, ("notMNIST_large", "notMNIST_small")),
    "SVHN": (_load_svhn, ("SVHN",)),
    "STL-10": (_load_stl10, ("STL-10",)),
    "CIFAR-10": (_load_cifar10, ("CIFAR-10",)),
    "CIFAR-100": (_load_cifar100, ("CIFAR-100",)),
}


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


# --------------------------------------------------------------------------------------------
# Datasets handed to Avalanche
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Seeded, stratified selections
# --------------------------------------------------------------------------------------------


def _carve_count(n: int, fraction: float) -> int:
    if fraction <= 0 or n < 2:
        return 0
    return min(max(int(np.floor(fraction * n + 0.5)), 1), n - 1)


def stratified_split(
    indices: np.ndarray, labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (kept, carved), carving ``fraction`` of every class.

    Each class with ``n >= 2`` members gives ``round(fraction * n)`` of them, at least 1 and at
    most ``n - 1``, chosen at random by ``rng``; a class with one member stays in ``kept``.

    Args:
        indices: ``(N,)`` ints, the pool to split.
        labels: class of every index: ``labels[indices]`` are the classes of the pool.
        fraction: in ``[0, 1)``.
        rng: numpy generator (seeded by the caller).

    Returns:
        ``(kept, carved)``, sorted, disjoint, together equal to ``indices``.
    """
    indices = np.asarray(indices, dtype=np.int64)
    kept, carved = [], []
    pool_labels = labels[indices]
    for c in np.unique(pool_labels):
        members = rng.permutation(indices[pool_labels == c])
        n = _carve_count(len(members), fraction)
        carved.append(members[:n])
        kept.append(members[n:])
    empty = np.empty(0, dtype=np.int64)
    return np.sort(np.concatenate(kept or [empty])), np.sort(np.concatenate(carved or [empty]))


def stratified_take(indices: np.ndarray, labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Choose ``min(k, N)`` of ``indices`` keeping the class proportions (largest remainders).

    Returns:
        The chosen indices, sorted.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if k >= len(indices):
        return np.sort(indices)
    pool_labels = labels[indices]
    classes, counts = np.unique(pool_labels, return_counts=True)
    exact = k * counts / counts.sum()
    quota = np.floor(exact).astype(np.int64)
    by_remainder = np.argsort(-(exact - quota), kind="stable")
    quota[by_remainder[: k - quota.sum()]] += 1
    chosen = [rng.permutation(indices[pool_labels == c])[:q] for c, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(chosen))


def _exactly(
    indices: np.ndarray, labels: np.ndarray, k: int, shortfall: str, rng: np.random.Generator, what: str
) -> np.ndarray:
    """``k`` training images from ``indices``; with fewer available, apply the ``shortfall`` policy."""
    n = len(indices)
    if k <= n:
        return stratified_take(indices, labels, k, rng)
    if shortfall == "error":
        raise ValueError(
            f"{what}: {n} training images after the validation carve, {k} asked for; lower "
            "images_per_task or pass shortfall='repeat' (resample) or 'cap' (use what there is)"
        )
    if shortfall == "cap":
        log.warning("%s: %d training images asked for, %d available: using %d", what, k, n, n)
        return np.sort(indices)
    copies, rest = divmod(k, n)
    log.warning(
        "%s: %d training images asked for, %d available: repeating them (%.2f times on average)",
        what,
        k,
        n,
        k / n,
    )
    return np.sort(np.concatenate([indices] * copies + [stratified_take(indices, labels, rest, rng)]))


# --------------------------------------------------------------------------------------------
# The benchmarks
# --------------------------------------------------------------------------------------------


def _rng(seed: int, purpose: int, task: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, purpose, task])


def _with_task(dataset: Dataset, task: int, train_transform: Callable | None = None) -> Any:
    # Transforms go into the dataset's own "train" group (with nothing in "eval"): passing them to
    # dataset_benchmark would apply the train transform to the test stream too (avalanche 0.6.0).
    groups = None if train_transform is None else {"train": (train_transform, None), "eval": (None, None)}
    return _make_taskaware_classification_dataset(
        dataset, task_labels=task, targets=dataset.targets, transform_groups=groups
    )


def _benchmark(train_sets: list, eval_sets: list, task_classes: list[tuple[str, ...]]) -> Any:
    benchmark = dataset_benchmark(train_sets, eval_sets)
    benchmark.task_classes = task_classes  # original class names of each task, in head order
    return benchmark


def _five_datasets(
    root: Path,
    seed: int,
    split: str,
    fraction: float,
    *,
    images_per_task: int,
    image_size: int,
    shortfall: str,
    n_tasks: int,
) -> Any:
    train_sets, eval_sets = [], []
    for task, title in enumerate(FIVE_DATASETS[:n_tasks]):
        train, test = _load(title, root, image_size)
        rng = _rng(seed, _VALIDATION, task)
        kept, carved = stratified_split(np.arange(len(train.targets)), train.targets, fraction, rng)
        chosen = _exactly(kept, train.targets, images_per_task, shortfall, _rng(seed, _LIMIT, task), title)
        train_sets.append(_with_task(InMemoryImages(train.images, chosen, train.targets[chosen]), task))
        if split == "validation":
            evaluation = InMemoryImages(train.images, carved, train.targets[carved])
        else:
            evaluation = InMemoryImages(test.images, np.arange(len(test.targets)), test.targets)
        eval_sets.append(_with_task(evaluation, task))
    return _benchmark(train_sets, eval_sets, [_CLASS_NAMES[t] for t in FIVE_DATASETS[:n_tasks]])


def _class_tasks(
    seed: int,
    sizes: Sequence[int],
    train_pool: np.ndarray,
    train_labels: np.ndarray,
    eval_pool: np.ndarray,
    eval_labels: np.ndarray,
    train_limit: int | None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per task: (classes, train indices, their targets, eval indices, their targets).

    Classes are dealt to tasks in a seeded random order; targets are positions in that task's
    class list (class ids from 0 in each task).
    """
    order = _rng(seed, _CLASS_ORDER).permutation(sum(sizes))
    tasks, start = [], 0
    for task, size in enumerate(sizes):
        classes = order[start : start + size]
        start += size
        lookup = np.full(sum(sizes), -1, dtype=np.int64)
        lookup[classes] = np.arange(size)
        train_idx = train_pool[np.isin(train_labels[train_pool], classes)]
        if train_limit is not None:
            train_idx = stratified_take(train_idx, train_labels, train_limit, _rng(seed, _LIMIT, task))
        eval_idx = eval_pool[np.isin(eval_labels[eval_pool], classes)]
        tasks.append(
            (classes, train_idx, lookup[train_labels[train_idx]], eval_idx, lookup[eval_labels[eval_idx]])
        )
    return tasks


def _split_cifar100(
    root: Path,
    seed: int,
    split: str,
    fraction: float,
    *,
    train_limit: int | None,
    image_size: int,
    n_tasks: int,
) -> Any:
    train, test = _load("CIFAR-100", root, image_size)
    if set(np.unique(train.targets)) != set(range(100)):
        raise ValueError(f"{root / _SOURCES['CIFAR-100'].folder}/train should hold the 100 classes 0..99")
    kept, carved = stratified_split(
        np.arange(len(train.targets)), train.targets, fraction, _rng(seed, _VALIDATION)
    )
    source = train if split == "validation" else test
    pool = carved if split == "validation" else np.arange(len(test.targets))
    sizes = (CIFAR100_CLASSES_PER_TASK,) * CIFAR100_TASKS
    train_sets, eval_sets, names = [], [], []
    for task, (classes, tr, tr_y, ev, ev_y) in enumerate(
        _class_tasks(seed, sizes, kept, train.targets, pool, source.targets, train_limit)[:n_tasks]
    ):
        train_sets.append(_with_task(InMemoryImages(train.images, tr, tr_y), task))
        eval_sets.append(_with_task(InMemoryImages(source.images, ev, ev_y), task))
        names.append(tuple(str(c) for c in classes))
    return _benchmark(train_sets, eval_sets, names)


def _list_caltech(folder: Path, include_background: bool) -> tuple[list[str], list[str], np.ndarray]:
    """Categories (sorted folder names), image paths and their category ids."""
    categories = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not include_background and CALTECH_BACKGROUND in categories:
        categories.remove(CALTECH_BACKGROUND)
    paths, labels = [], []
    for label, category in enumerate(categories):
        files = sorted(p for p in (folder / category).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        if not files:
            raise DatasetNotFoundError(f"{folder / category} holds no .jpg image; see {DOCS}")
        paths.extend(str(p) for p in files)
        labels.extend([label] * len(files))
    return categories, paths, np.asarray(labels, dtype=np.int64)


def _split_caltech101(
    root: Path,
    seed: int,
    split: str,
    fraction: float,
    *,
    train_limit: int | None,
    image_size: int,
    include_background: bool,
    n_tasks: int,
) -> Any:
    folder = root / _SOURCES["Caltech-101"].folder
    categories, paths, labels = _list_caltech(folder, include_background)
    sizes = CALTECH_TASK_SIZES if include_background else CALTECH_TASK_SIZES[:-1] + (21,)
    if len(categories) != sum(sizes):
        with_bg = "with" if include_background else "without"
        raise DatasetNotFoundError(
            f"{folder} holds {len(categories)} category folders ({with_bg} {CALTECH_BACKGROUND}); "
            f"split_caltech101 needs {sum(sizes)} (the 101 categories"
            f"{' + ' + CALTECH_BACKGROUND if include_background else ''}). See {DOCS}, section 'caltech-101'."
        )
    fixed = np.random.default_rng(CALTECH_SPLIT_SEED)
    rest, test = stratified_split(np.arange(len(labels)), labels, CALTECH_TEST_FRACTION, fixed)
    kept, carved = stratified_split(rest, labels, fraction, _rng(seed, _VALIDATION))
    pool = carved if split == "validation" else test
    flip = RandomHorizontalFlip(p=0.5)
    train_sets, eval_sets, names = [], [], []
    for task, (classes, tr, tr_y, ev, ev_y) in enumerate(
        _class_tasks(seed, sizes, kept, labels, pool, labels, train_limit)[:n_tasks]  # all: same order
    ):
        train_sets.append(_with_task(ImageFiles([paths[i] for i in tr], tr_y, image_size), task, flip))
        eval_sets.append(_with_task(ImageFiles([paths[i] for i in ev], ev_y, image_size), task))
        names.append(tuple(categories[c] for c in classes))
    return _benchmark(train_sets, eval_sets, names)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if name not in BENCHMARK_NAMES:
        raise ValueError(f"unknown image benchmark {name!r}; choose one of {', '.join(BENCHMARK_NAMES)}")


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def accepted_options(name: str) -> tuple[str, ...]:
    """The keyword options :func:`build` accepts for image benchmark ``name``."""
    return tuple(sorted(_OPTIONS[name]))


def _resolve_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    allowed = _OPTIONS[name]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for {name!r}; allowed: {', '.join(sorted(allowed))}"
        )
    resolved = {k: (options[k] if options.get(k) is not None else default) for k, default in allowed.items()}
    resolved["image_size"] = _positive_int("image_size", resolved["image_size"], minimum=8)
    total, n_tasks = _TASKS[name], resolved["n_tasks"]
    resolved["n_tasks"] = total if n_tasks is None else _positive_int("n_tasks", n_tasks)
    if resolved["n_tasks"] > total:
        raise ValueError(f"{name} has {total} tasks; n_tasks must be between 1 and {total}, got {n_tasks}")
    if not isinstance(resolved["download"], bool):
        raise ValueError(f"download must be True or False, got {resolved['download']!r}")
    if name == "five_datasets":
        limit, per_task = options.get("train_limit"), options.get("images_per_task")
        if limit is not None and per_task is not None and limit != per_task:
            raise ValueError(
                f"five_datasets: train_limit={limit} and images_per_task={per_task} disagree; "
                "give one (train_limit is an alias of images_per_task)"
            )
        per_task = per_task if per_task is not None else limit
        resolved["images_per_task"] = _positive_int(
            "images_per_task", per_task if per_task is not None else allowed["images_per_task"]
        )
        del resolved["train_limit"]
        if resolved["shortfall"] not in SHORTFALLS:
            choices = ", ".join(SHORTFALLS)
            raise ValueError(f"shortfall must be one of {choices}, got {resolved['shortfall']!r}")
    else:
        if resolved["train_limit"] is not None:
            resolved["train_limit"] = _positive_int("train_limit", resolved["train_limit"])
    if name == "split_caltech101" and not isinstance(resolved["include_background"], bool):
        raise ValueError(f"include_background must be True or False, got {resolved['include_background']!r}")
    return resolved


def build(
    name: str,
    *,
    data_root: str | Path,
    seed: int,
    split: str,
    validation_fraction: float,
    **options: Any,
) -> Any:
    """Build one of the paper's image benchmarks as a task-incremental Avalanche benchmark.

    Args:
        name: ``"five_datasets"``, ``"split_cifar100"`` or ``"split_caltech101"``.
        data_root: folder holding the data sets in the layout of ``docs/datasets.md``.
        seed: non-negative; fixes the class order (CIFAR-100, Caltech-101), the validation carve
            and the training subsets. Caltech-101's 70/30 split is fixed (seed 0) for every seed.
        split: ``"validation"``: ``test_stream`` holds the validation part carved from the
            training data; ``"test"``: the data set's test images (Caltech-101: the 30% part).
            Training never sees the validation part, whatever ``split`` is.
        validation_fraction: share of every class's training images carved out for validation,
            in ``[0, 1)``; must be ``> 0`` when ``split="validation"``.
        **options: per benchmark (``None`` means the default):
            ``five_datasets``: ``images_per_task`` (default 50,000 as the paper; ``train_limit``
            is an alias), ``image_size`` (32), ``shortfall`` (``"repeat"``: a data set with
            fewer training images, e.g. STL-10 with 5,000, is resampled with repetition up to
            ``images_per_task``; ``"cap"``: use what there is; ``"error"``), ``download`` (True).
            ``split_cifar100``: ``train_limit`` (None: all; else at most this many training
            images per task, stratified), ``image_size`` (32), ``download`` (True).
            ``split_caltech101``: ``train_limit`` (None), ``image_size`` (224),
            ``include_background`` (True: ``BACKGROUND_Google`` is a class, giving the paper's
            30 + 25 + 25 + 22 = 102 classes; False: 101 classes, the last task has 21),
            ``download`` (True).
            All three: ``n_tasks`` (None: all 5 / 20 / 4): only the first ``n_tasks`` tasks, the
            same as the full sequence's first ones (class order and carves do not change). Every
            data set of the benchmark must still be present.

    Returns:
        An Avalanche benchmark from ``dataset_benchmark`` (a ``ClassificationScenario``) with
        ``train_stream`` and ``test_stream`` of one experience per task; experience ``t`` has
        task label ``t`` and class ids ``0 .. n_t - 1``; items are ``(x, y, t)`` with ``x`` a
        ``(3, S, S)`` float in ``[0, 1]``. ``benchmark.task_classes[t]`` names the original
        classes of head ``t``.

    Raises:
        ValueError: an unknown name, split or option, or an out-of-range value.
        DatasetNotFoundError: a data set is missing under ``data_root`` and could not be
            downloaded; the message lists, per data set, the folder and files expected.
    """
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not 0.0 <= float(validation_fraction) < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")
    if split == "validation" and validation_fraction <= 0:
        raise ValueError(
            "split='validation' needs validation_fraction > 0 (the validation part is carved "
            "from the training data)"
        )
    resolved = _resolve_options(name, options)
    root = Path(data_root).expanduser()
    _ensure_present(name, root, resolved.pop("download"))
    builder = {
        "five_datasets": _five_datasets,
        "split_cifar100": _split_cifar100,
        "split_caltech101": _split_caltech101,
    }[name]
    benchmark = builder(root, int(seed), split, float(validation_fraction), **resolved)
    log.info(
        "built %s from %s (seed %d, split %s): %d tasks", name, root, seed, split, len(benchmark.train_stream)
    )
    return benchmark
