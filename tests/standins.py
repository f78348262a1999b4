"""Small generated stand-ins of the image data sets, in their real on-disk formats and layouts.

None of MNIST, notMNIST, SVHN, STL-10, CIFAR-10/100 or Caltech-101 is on the test machine, so the
tests write a few images per class in exactly the files the real sets ship (idx, PNG folders,
``.mat``, STL-10 binaries, CIFAR pickles, JPEG folders) under a temporary data root, and the code
under test reads them as it would read the real ones. Import from any test (pytest puts ``tests/``
on ``sys.path``, as the folder has no ``__init__.py``)::

    from standins import write_five_datasets
    write_five_datasets(tmp_path, n_train=20, n_test=5)

Pixels encode what a test needs to check after loading:

* MNIST, notMNIST: a uniform grey image of value ``GREY_BASE + GREY_STEP * label`` (a uniform image
  survives resizing), with a one-pixel dark corner so the images are not constant.
* SVHN, CIFAR-10, CIFAR-100: random noise except ``image[0, 0, 0] = label`` (SVHN: the digit, stored
  as class 10 for a 0 as the real set does) and ``image[1, 0, 0], image[2, 0, 0]`` = the image's
  index in its split (high byte, low byte), so a test can tell images apart exactly.
* STL-10: vertical thirds, red | green | blue (left to right); the red third has value
  ``GREY_BASE + GREY_STEP * label`` (a crop instead of a resize loses the outer thirds; a wrong
  row/column order turns the thirds horizontal).
* Caltech-101: dark left half, bright right half (a horizontal flip swaps them), random sizes.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

GREY_BASE, GREY_STEP = 10, 20  # uniform value of a class-c stand-in: 10 + 20 c (c < 12 fits in uint8)
LETTERS = tuple("ABCDEFGHIJ")
CALTECH_BACKGROUND = "BACKGROUND_Google"


def _labels(n_per_class: int, n_classes: int) -> np.ndarray:
    return np.repeat(np.arange(n_classes), n_per_class).astype(np.uint8)


def grey_images(labels: np.ndarray, size: int = 28) -> np.ndarray:
    """``(N, size, size)`` uint8: uniform ``GREY_BASE + GREY_STEP * label``, top-left pixel 0."""
    images = np.empty((len(labels), size, size), dtype=np.uint8)
    images[:] = (GREY_BASE + GREY_STEP * labels.astype(np.int64)).astype(np.uint8)[:, None, None]
    images[:, 0, 0] = 0
    return images


def coded_images(labels: np.ndarray, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """``(N, 3, size, size)`` uint8 noise with the label and the index coded in the first pixels."""
    images = rng.integers(0, 256, size=(len(labels), 3, size, size), dtype=np.uint8)
    index = np.arange(len(labels))
    images[:, 0, 0, 0] = labels
    images[:, 1, 0, 0] = index // 256
    images[:, 2, 0, 0] = index % 256
    return images


def decode_index(x) -> int:
    """The split index coded by :func:`coded_images` in a loaded float image ``(3, H, W)``."""
    return int(round(float(x[1, 0, 0]) * 255)) * 256 + int(round(float(x[2, 0, 0]) * 255))


def _write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_mnist(root: Path, n_train: int = 20, n_test: int = 5, compress: bool = False) -> Path:
    """``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (``.gz`` if ``compress``)."""
    folder = Path(root) / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = _labels(n, 10)
        _write_idx(folder / f"{prefix}-images-idx3-ubyte", grey_images(labels), compress)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return folder


def write_notmnist(
    root: Path, n_train: int = 20, n_test: int = 5, corrupt: Sequence[str] = ("A",)
) -> list[Path]:
    """``<root>/notMNIST_large/A..J/*.png`` (training) and ``notMNIST_small`` (test).

    Each letter folder of ``corrupt`` in ``notMNIST_large`` also gets two unreadable files, as
    the real set ships: a zero-byte PNG and a truncated one. Returns the unreadable files.
    """
    bad = []
    for folder_name, n in (("notMNIST_large", n_train), ("notMNIST_small", n_test)):
        for label, letter in enumerate(LETTERS):
            folder = Path(root) / folder_name / letter
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(grey_images(np.full(n, label))):
                Image.fromarray(image, mode="L").save(folder / f"{letter}{i:04d}.png")
            if folder_name == "notMNIST_large" and letter in corrupt:
                empty = folder / "empty.png"
                empty.write_bytes(b"")
                truncated = folder / "truncated.png"
                truncated.write_bytes((folder / f"{letter}0000.png").read_bytes()[:40])
                bad += [empty, truncated]
    return bad


def _svhn_mat(n: int, rng: np.random.Generator) -> dict:
    digits = _labels(n, 10)
    images = coded_images(digits, rng)  # (N, 3, 32, 32), image[0, 0, 0] = the digit
    stored = np.where(digits == 0, 10, digits).astype(np.uint8)  # SVHN stores a 0 as class 10
    return {"X": np.ascontiguousarray(images.transpose(2, 3, 1, 0)), "y": stored[:, None]}


def write_svhn(root: Path, n_train: int = 20, n_test: int = 5, seed: int = 0) -> Path:
    """``<root>/SVHN/{train,test}_32x32.mat``: ``X`` (32, 32, 3, N) uint8, ``y`` (N, 1) in 1..10."""
    import scipy.io

    folder = Path(root) / "SVHN"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        scipy.io.savemat(str(folder / f"{split}_32x32.mat"), _svhn_mat(n, rng))
    return folder


def stl_images(labels: np.ndarray) -> np.ndarray:
    """``(N, 3, 96, 96)`` uint8: vertical thirds red | green | blue; red value codes the label."""
    images = np.zeros((len(labels), 3, 96, 96), dtype=np.uint8)
    images[:, 0, :, :32] = (GREY_BASE + GREY_STEP * labels.astype(np.int64))[:, None, None]
    images[:, 1, :, 32:64] = 255
    images[:, 2, :, 64:] = 255
    return images


def write_stl10(root: Path, n_train: int = 20, n_test: int = 5) -> Path:
    """``<root>/stl10_binary/{train,test}_{X,y}.bin``: images column-major, labels 1..10."""
    folder = Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = _labels(n, 10)
        # The real files store each channel column by column: (N, C, H, W) -> (N, C, W, H).
        stl_images(labels).transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")
        (labels + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    return folder


def _pickle(path: Path, entry: dict) -> None:
    with path.open("wb") as f:
        pickle.dump({k.encode(): v for k, v in entry.items()}, f, protocol=2)  # bytes keys, as the real


def write_cifar10(root: Path, n_train: int = 20, n_test: int = 5, seed: int = 0) -> Path:
    """``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``.

    ``n_train`` training images per class in all, dealt over the five batches.
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = _labels(n_train, 10)
    images = coded_images(labels, rng).reshape(len(labels), -1)
    for b, part in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        _pickle(folder / f"data_batch_{b}", {"data": images[part], "labels": labels[part].tolist()})
    test_labels = _labels(n_test, 10)
    test = coded_images(test_labels, rng).reshape(len(test_labels), -1)
    _pickle(folder / "test_batch", {"data": test, "labels": test_labels.tolist()})
    _pickle(folder / "batches.meta", {"label_names": [f"class{c}" for c in range(10)]})
    return folder


def write_cifar100(root: Path, n_train: int = 10, n_test: int = 3, seed: int = 0) -> Path:
    """``<root>/cifar-100-python/{train, test, meta}`` with ``fine_labels`` and ``coarse_labels``."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = _labels(n, 100)
        images = coded_images(labels, rng).reshape(len(labels), -1)
        entry = {"data": images, "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist()}
        _pickle(folder / split, entry)
    _pickle(folder / "meta", {"fine_label_names": [f"class{c}" for c in range(100)]})
    return folder


def write_caltech101(
    root: Path, images_per_class: int = 4, n_categories: int = 101, background: bool = True, seed: int = 0
) -> Path:
    """``<root>/caltech101/101_ObjectCategories/<category>/image_0001.jpg ...``.

    ``n_categories`` category folders (``category_000`` ...) plus ``BACKGROUND_Google`` when
    ``background``; JPEGs of random sizes around the real ones' (about 300 x 200), dark left half,
    bright right half; one in four is greyscale, as some real Caltech images are.
    """
    folder = Path(root) / "caltech101" / "101_ObjectCategories"
    rng = np.random.default_rng(seed)
    names = [f"category_{i:03d}" for i in range(n_categories)] + ([CALTECH_BACKGROUND] if background else [])
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(images_per_class):
            h, w = int(rng.integers(40, 80)), int(rng.integers(40, 80))
            image = np.full((h, w, 3), 30, dtype=np.uint8)
            image[:, w // 2 :] = 220
            pil = Image.fromarray(image)
            if i % 4 == 3:
                pil = pil.convert("L")
            pil.save(folder / name / f"image_{i + 1:04d}.jpg", quality=95)
    return folder


def write_five_datasets(root: Path, n_train: int = 20, n_test: int = 5) -> Path:
    """All five data sets of ``five_datasets`` under ``root`` (``n_train``/``n_test`` per class)."""
    write_mnist(root, n_train, n_test)
    write_notmnist(root, n_train, n_test)
    write_svhn(root, n_train, n_test)
    write_stl10(root, n_train, n_test)
    write_cifar10(root, n_train, n_test)
    return Path(root)
