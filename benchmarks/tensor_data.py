"""The tensor data sets: scikit-learn digits, MNIST and Fashion-MNIST as flat integer images.

Loaders return :class:`_Arrays` (flat ``uint8``/int images and ``int64`` labels, train and test);
:class:`FlatImageDataset` converts (and permutes) one sample at a time, so ten permuted tasks share
one array. Fashion-MNIST is also found in the Debian package ``dataset-fashion-mnist``.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import Dataset

from benchmarks.errors import DatasetCorruptError, DatasetNotFoundError

log = logging.getLogger(__name__)


# The four decompressed IDX files torchvision's MNIST and FashionMNIST read from <root>/<Class>/raw.
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# Debian's `dataset-fashion-mnist` package: the same four files, gzipped (md5 differs from
# torchvision's list, so torchvision itself would try to download them again).
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


DIGITS_TEST_FRACTION = 0.3  # scikit-learn digits have no official test set: a fixed 30 % one


DIGITS_TEST_SEED = 0  # the same test images for every benchmark seed


DIGITS_MAX_VALUE = 16.0  # digits pixels are integers 0..16


BYTE_MAX_VALUE = 255.0  # MNIST-style pixels are integers 0..255


@dataclass(frozen=True)
class _Arrays:
    """A labelled data set held as flat integer images: ``train_x (N, D)``, ``train_y (N,)``, ..."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    scale: float


def _load_digits(data_root: Path) -> _Arrays:
    """scikit-learn's 8x8 digits: 1797 images of 64 pixels in 0..16, fixed 70/30 split."""
    del data_root  # bundled with scikit-learn
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.data.astype(np.uint8))  # (1797, 64), values 0..16
    labels = torch.from_numpy(digits.target.astype(np.int64))  # (1797,)
    train_rows, test_rows = train_test_split(
        np.arange(labels.shape[0]),
        test_size=DIGITS_TEST_FRACTION,
        stratify=digits.target,
        random_state=DIGITS_TEST_SEED,
    )
    train_rows, test_rows = np.sort(train_rows), np.sort(test_rows)
    return _Arrays(
        train_x=images[train_rows],
        train_y=labels[train_rows],
        test_x=images[test_rows],
        test_y=labels[test_rows],
        scale=1.0 / DIGITS_MAX_VALUE,
    )


def _load_mnist(data_root: Path, *, download: bool = True) -> _Arrays:
    return _load_torchvision("MNIST", data_root, download=download)


def _load_fashion_mnist(data_root: Path, *, download: bool = True) -> _Arrays:
    return _load_torchvision("FashionMNIST", data_root, download=download)


def _load_torchvision(class_name: str, data_root: Path, *, download: bool) -> _Arrays:
    """Read torchvision's ``MNIST`` / ``FashionMNIST`` from ``<data_root>/<class_name>/raw``.

    Missing files are, in this order: decompressed from Debian's package (Fashion-MNIST only),
    downloaded by torchvision (when ``download``), or reported by :class:`DatasetNotFoundError`.
    """
    if not isinstance(download, bool):
        raise ValueError(f"download must be True or False, got {download!r}")
    import torchvision

    dataset_class = getattr(torchvision.datasets, class_name)
    raw = data_root / class_name / "raw"
    if _missing(raw) and class_name == "FashionMNIST":
        _import_debian_fashion_mnist(raw)
    if _missing(raw) and download:
        log.info("%s: downloading into %s", class_name, raw)
        try:
            dataset_class(str(data_root), train=True, download=True)
        except Exception as exc:  # any failure (DNS, HTTP, md5) becomes the one clear error
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DatasetNotFoundError(
                _missing_message(class_name, raw, f"The download failed: {first_line}")
            ) from None
    if _missing(raw):
        reason = "The download left none." if download else "Downloading is off (download=False)."
        raise DatasetNotFoundError(_missing_message(class_name, raw, reason))
    _check_idx_files(class_name, raw)
    try:
        train = dataset_class(str(data_root), train=True, download=False)
        test = dataset_class(str(data_root), train=False, download=False)
    except Exception as exc:  # what the header check cannot see: one clear error, not torchvision's
        raise DatasetCorruptError(
            f"{class_name}: torchvision cannot read the files in {raw} ({type(exc).__name__}: "
            f"{exc}). {_refetch_hint(class_name, raw)}"
        ) from exc
    return _Arrays(
        train_x=train.data.reshape(train.data.shape[0], -1),  # (60000, 784) uint8
        train_y=train.targets.to(torch.int64),
        test_x=test.data.reshape(test.data.shape[0], -1),  # (10000, 784) uint8
        test_y=test.targets.to(torch.int64),
        scale=1.0 / BYTE_MAX_VALUE,
    )


def _check_idx_files(class_name: str, raw: Path) -> None:
    """Check the four IDX files' headers and sizes (cheap: 16 bytes and a ``stat`` each).

    Raises:
        DatasetCorruptError: a truncated, empty or foreign file, or images and labels of a split
            whose counts differ. The message names the file and says to delete it.
    """
    counts = {}
    for name in MNIST_FILES:
        path = raw / name
        ndim = 3 if "images" in name else 1
        with open(path, "rb") as handle:
            header = handle.read(4 + 4 * ndim)
        size = path.stat().st_size
        problem = None
        if len(header) < 4 + 4 * ndim:
            problem = f"it holds {size} bytes, too few for an IDX header"
        elif header[:4] != bytes([0, 0, 8, ndim]):
            problem = (
                f"it does not start with the IDX magic number of {ndim}-d unsigned bytes "
                f"(00 00 08 0{ndim}) but with {header[:4].hex(' ')} (not an IDX file, or still gzipped?)"
            )
        else:
            dims = [int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
            expected = 4 + 4 * ndim + math.prod(dims)
            if size != expected:
                problem = (
                    f"its header promises {expected} bytes (shape {dims}) but it holds {size} "
                    "(a truncated or interrupted copy?)"
                )
            counts[name] = dims[0]
        if problem:
            raise DatasetCorruptError(
                f"{class_name} file {path} is corrupt: {problem}. " + _refetch_hint(class_name, raw, path)
            )
    for split in ("train", "t10k"):
        images, labels = counts[f"{split}-images-idx3-ubyte"], counts[f"{split}-labels-idx1-ubyte"]
        if images != labels:
            raise DatasetCorruptError(
                f"{class_name} files in {raw} do not match: {split}-images-idx3-ubyte holds {images} "
                f"images but {split}-labels-idx1-ubyte {labels} labels. " + _refetch_hint(class_name, raw)
            )


def _refetch_hint(class_name: str, raw: Path, path: Path | None = None) -> str:
    what, it = (f"Delete {path}", "it") if path is not None else (f"Delete the files in {raw}", "them")
    source = (
        f"imports {it} again from {DEBIAN_FASHION_MNIST_DIR} (Debian's dataset-fashion-mnist) or "
        f"downloads {it}"
        if class_name == "FashionMNIST"
        else f"downloads {it} again (needs a network)"
    )
    return f"{what}: the next run {source}; or copy good, gunzipped files there."


def _missing(raw: Path) -> list[str]:
    return [name for name in MNIST_FILES if not (raw / name).is_file()]


def _import_debian_fashion_mnist(raw: Path) -> None:
    """Decompress Debian's ``dataset-fashion-mnist`` files into ``raw`` (if all four exist)."""
    sources = [DEBIAN_FASHION_MNIST_DIR / f"{name}.gz" for name in MNIST_FILES]
    if not all(source.is_file() for source in sources):
        return
    raw.mkdir(parents=True, exist_ok=True)
    for name, source in zip(MNIST_FILES, sources, strict=True):
        target = raw / name
        if target.is_file():
            continue
        # A name of this process's own: two runs started together each write their own copy, and
        # the last rename wins with a complete file (one shared name let one run truncate or move
        # the other's half-written copy, which then failed with FileNotFoundError).
        fd, partial_name = tempfile.mkstemp(prefix=f"{name}.", suffix=".partial", dir=raw)
        partial = Path(partial_name)
        try:
            with gzip.open(source, "rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
            partial.unlink(missing_ok=True)
            raise DatasetCorruptError(
                f"FashionMNIST: cannot decompress {source} ({exc}); reinstall Debian's package "
                "(`apt-get install --reinstall dataset-fashion-mnist`) or put the gunzipped files "
                f"in {raw} yourself"
            ) from exc
        partial.replace(target)  # atomic: never leaves a half-written file under the final name
    log.info("FashionMNIST: imported Debian's files from %s into %s", DEBIAN_FASHION_MNIST_DIR, raw)


def _missing_message(class_name: str, raw: Path, reason: str) -> str:
    files = ", ".join(MNIST_FILES)
    how = (
        "run once where a network exists (torchvision downloads them), or copy the four files, "
        "gunzipped, from a machine that has them"
    )
    if class_name == "FashionMNIST":
        how = (
            "install Debian's package (`apt-get install dataset-fashion-mnist`, then they are "
            f"imported from {DEBIAN_FASHION_MNIST_DIR}), " + how
        )
    return (
        f"{class_name} not found: the folder {raw} must hold the decompressed files {files} "
        f"(missing: {', '.join(_missing(raw))}). {reason} To fix it, {how}, or pass another "
        "data_root whose <data_root>/" + class_name + "/raw holds them."
    )


class FlatImageDataset(Dataset):
    """Rows of a shared ``uint8`` image array, scaled to floats and optionally pixel-permuted.

    Several datasets (tasks, splits) share one ``images`` array; each holds only its row indices,
    its targets and its permutation.

    Args:
        images: ``(N, D)`` integer tensor, shared, never copied.
        targets: ``(M,)`` int64 labels of the selected rows, as the model should see them.
        rows: ``(M,)`` int64 indices into ``images``.
        scale: factor from stored integers to floats (``1 / 255`` gives [0, 1]).
        permutation: ``(D,)`` pixel map applied to every sample, or None: output pixel ``j`` is input
            pixel ``permutation[j]``, or blank (0) where that is ``D`` (a rotation's corners).

    Item ``i`` is ``(x, y)`` with ``x = images[rows[i]][permutation] * scale``, a ``(D,)`` float32
    tensor, and ``y = int(targets[i])``.
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        rows: Tensor,
        *,
        scale: float,
        permutation: Tensor | None = None,
    ) -> None:
        if images.dim() != 2:
            raise ValueError(f"images must be (N, D), got shape {tuple(images.shape)}")
        if targets.shape != rows.shape:
            raise ValueError(f"targets {tuple(targets.shape)} and rows {tuple(rows.shape)} differ")
        if permutation is not None and permutation.shape != (images.shape[1],):
            raise ValueError(
                f"permutation must have shape ({images.shape[1]},), got {tuple(permutation.shape)}"
            )
        n_pixels = images.shape[1]
        if permutation is not None and not 0 <= int(permutation.min()) <= int(permutation.max()) <= n_pixels:
            raise ValueError(f"permutation must hold pixel indices 0 .. {n_pixels} ({n_pixels}: blank)")
        self.images = images
        self.targets: list[int] = targets.tolist()  # a list: Avalanche reads it element by element
        self.targets_task_labels: Sequence[int] | None = None  # set by the benchmark builder
        self.rows = rows
        self.scale = scale
        self.permutation = permutation
        self._blank = permutation is not None and int(permutation.max()) == images.shape[1]

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x = self.images[self.rows[index]]  # (D,) uint8
        if self._blank:
            x = torch.cat((x, x.new_zeros(1)))
        if self.permutation is not None:
            x = x[self.permutation]
        return x.to(torch.float32) * self.scale, self.targets[index]
