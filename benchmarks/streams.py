"""Registry of task-incremental Avalanche benchmarks by name.

Every benchmark is *task-incremental with task labels*: experience ``t`` of both streams carries
task label ``t``, the class order is fixed, and class ids restart from zero in each experience, so
a multi-head model has one head of width ``classes_per_task[t]`` per task and a single shared head
of width ``max(classes_per_task)`` is the "single-head" variant (the paper's ``sgd``).

Each benchmark carves a validation part out of its *training* data (stratified by class, seeded,
``validation_fraction`` of it). Training always uses the rest. ``split="validation"`` makes the
returned ``test_stream`` the validation part (for tuning strength hyper-parameters);
``split="test"`` makes it the real test set. Usage::

    from benchmarks.streams import make_benchmark, benchmark_info

    info = benchmark_info("split_fmnist")  # static: tasks, widths, input shape, model family
    bench = make_benchmark("split_fmnist", split="validation", seed=0)
    for experience in bench.train_stream:  # experience.task_label == experience.current_experience
        ...

Registered benchmarks (see :func:`available_benchmarks`):

- ``split_digits`` / ``permuted_digits``: scikit-learn's bundled 8x8 digits (1797 images), flattened
  to 64 floats in [0, 1]; a fixed stratified 30 % test split (seed 0, the same for every ``seed``).
  Needs no file and no network.
- ``split_fmnist`` / ``permuted_fmnist``: torchvision ``FashionMNIST`` under ``data_root``,
  flattened to 784 floats in [0, 1]. Missing files are imported from Debian's
  ``dataset-fashion-mnist`` package, else downloaded.
- ``split_mnist`` / ``permuted_mnist``: torchvision ``MNIST`` under ``data_root``, downloaded where
  a network exists; otherwise :class:`DatasetNotFoundError` says which files to put where.
- ``five_datasets``, ``split_cifar100``, ``split_caltech101``: the paper's image experiments, built
  by :func:`benchmarks.image_data.build` (imported only when one of them is built).

Split benchmarks use the class order 0, 1, ..., 9: task ``t`` holds the original classes ``2t`` and
``2t + 1`` relabelled 0 and 1. Permuted benchmarks give task ``t`` all ten classes with one fixed
pixel permutation; by default task 0 is the *unpermuted* data (the convention of van de Ven's
continual-learning code; Avalanche's ``PermutedMNIST`` permutes every task: ``permute_first=True``).
The permutation of task ``t`` depends only on ``(seed, t)``, so a shorter sequence is a prefix of a
longer one. Images are stored once as ``uint8`` and converted (and permuted) per sample, so ten
permuted Fashion-MNIST tasks share one 47 MB array instead of 1.7 GB of float copies.

``data_root`` defaults to :func:`default_data_root` (``~/.avalanche/data``, Avalanche's own default
dataset location, so data that Avalanche's classic benchmarks downloaded is found).
"""

from __future__ import annotations

import gzip
import importlib
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import Dataset

# One error class for every data set of the package (image_data raises it too): a
# FileNotFoundError whose message names the folder, the files expected and how to obtain them.
from avalanche_spp.errors import DatasetCorruptError, DatasetNotFoundError

__all__ = [
    "BenchmarkInfo",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "FlatImageDataset",
    "available_benchmarks",
    "benchmark_info",
    "check_benchmark_options",
    "default_data_root",
    "make_benchmark",
]

log = logging.getLogger(__name__)

SPLITS = ("test", "validation")
MODEL_FAMILIES = ("mlp", "vgg9", "resnet18")
# Smallest square image side each CNN takes: VGG-9 pools three times by 2; ResNet-18 halves the
# image five times, so below 32 its last stage would be less than one pixel wide.
MIN_IMAGE_SIZE = {"vgg9": 8, "resnet18": 32}

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

# Keys that make the seeded random streams of one benchmark independent of each other.
_VALIDATION_KEY, _TRAIN_LIMIT_KEY, _EVAL_LIMIT_KEY, _PERMUTATION_KEY = range(4)


@dataclass(frozen=True)
class BenchmarkInfo:
    """What a benchmark is, known without loading any data.

    Attributes:
        name: registry name.
        n_tasks: number of experiences (tasks) T.
        classes_per_task: number of classes of each task, length ``n_tasks``; labels of task ``t``
            are ``0 .. classes_per_task[t] - 1``.
        input_shape: shape of one input sample, e.g. ``(784,)`` or ``(3, 32, 32)``.
        model_family: the paper's network for it: ``"mlp"``, ``"vgg9"`` or ``"resnet18"``.
        needs_data_root: whether the data is read from files under ``data_root``.
        description: one line for listings and reports.
    """

    name: str
    n_tasks: int
    classes_per_task: tuple[int, ...]
    input_shape: tuple[int, ...]
    model_family: str
    needs_data_root: bool
    description: str

    def __post_init__(self) -> None:
        if self.n_tasks < 1 or len(self.classes_per_task) != self.n_tasks:
            raise ValueError(
                f"{self.name}: classes_per_task has {len(self.classes_per_task)} entries, "
                f"n_tasks is {self.n_tasks}; they must agree and be >= 1"
            )
        if self.model_family not in MODEL_FAMILIES:
            raise ValueError(
                f"model_family must be one of {MODEL_FAMILIES}, got {self.model_family!r}"
            )

    @property
    def max_classes_per_task(self) -> int:
        """Width of a single shared head: ``max(classes_per_task)``."""
        return max(self.classes_per_task)


class FlatImageDataset(Dataset):
    """Rows of a shared ``uint8`` image array, scaled to floats and optionally pixel-permuted.

    Several datasets (tasks, splits) share one ``images`` array; each holds only its row indices,
    its targets and its permutation.

    Args:
        images: ``(N, D)`` integer tensor, shared, never copied.
        targets: ``(M,)`` int64 labels of the selected rows, as the model should see them.
        rows: ``(M,)`` int64 indices into ``images``.
        scale: factor from stored integers to floats (``1 / 255`` gives [0, 1]).
        permutation: ``(D,)`` pixel permutation applied to every sample, or None.

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
        self.images = images
        self.targets: list[int] = targets.tolist()  # a list: Avalanche reads it element by element
        self.targets_task_labels: Sequence[int] | None = None  # set by the benchmark builder
        self.rows = rows
        self.scale = scale
        self.permutation = permutation

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x = self.images[self.rows[index]]  # (D,) uint8
        if self.permutation is not None:
            x = x[self.permutation]
        return x.to(torch.float32) * self.scale, self.targets[index]


@dataclass(frozen=True)
class _Arrays:
    """A labelled data set held as flat integer images: ``train_x (N, D)``, ``train_y (N,)``, ..."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    scale: float


@dataclass(frozen=True)
class _Spec:
    info: BenchmarkInfo
    build: Callable[..., Any]
    options: tuple[str, ...] | None  # keyword options its builder accepts; None: any, passed on
    n_tasks: str  # "prefix": 1..T, the first tasks; "any": any count >= 1; "fixed": T only


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def default_data_root() -> Path:
    """Where file-based benchmarks look when no ``data_root`` is given: ``~/.avalanche/data``."""
    return Path.home() / ".avalanche" / "data"


def available_benchmarks() -> list[str]:
    """Names accepted by :func:`make_benchmark`, in registry order."""
    return list(_REGISTRY)


def benchmark_info(
    name: str, *, n_tasks: int | None = None, image_size: int | None = None
) -> BenchmarkInfo:
    """Static description of benchmark ``name`` (no data is loaded).

    Args:
        name: a name from :func:`available_benchmarks`.
        n_tasks: the task count a :func:`make_benchmark` call will use, if not the default; the
            returned info then describes that shorter (or, for permuted ones, longer) sequence.
        image_size: image benchmarks only: the side ``S`` of the square images a
            :func:`make_benchmark` call with the option ``image_size=S`` gives; ``input_shape`` is
            then ``(3, S, S)``. ``None``: the paper's size.

    Raises:
        ValueError: unknown name (the message lists the known ones), an unsupported ``n_tasks``, an
            ``image_size`` for an MLP benchmark or below :data:`MIN_IMAGE_SIZE` of its network.
    """
    spec = _spec(name)
    return _with_image_size(_resize(spec, n_tasks), image_size)


def check_benchmark_options(name: str, *, n_tasks: int | None = None, **options: Any) -> BenchmarkInfo:
    """Check a benchmark's name, task count and options without loading any data.

    Command lines call it while parsing, so that a bad ``--n-tasks`` or ``--train-limit`` is refused
    before any training starts. :func:`make_benchmark` makes the same checks.

    Returns:
        :func:`benchmark_info` for ``n_tasks`` (and ``image_size``, if given).

    Raises:
        ValueError: unknown name, unsupported ``n_tasks``, an option the benchmark does not accept,
            or a ``train_limit`` / ``eval_limit`` that is not an int of at least one sample per class.
    """
    spec = _spec(name)
    info = _with_image_size(_resize(spec, n_tasks), options.get("image_size"))
    if spec.options is not None:
        unknown = sorted(set(options) - set(spec.options))
        if unknown:
            raise ValueError(
                f"{name} does not accept option(s) {unknown}; its options are {sorted(spec.options)}"
            )
        _check_limits(info, options.get("train_limit"), options.get("eval_limit"))
    else:  # an image benchmark: its builder's own options (importing it loads no data)
        from benchmarks import image_data

        allowed = image_data.accepted_options(name)
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(f"{name} does not accept option(s) {unknown}; its options are {list(allowed)}")
    return info


def make_benchmark(
    name: str,
    *,
    split: str = "test",
    seed: int = 0,
    data_root: str | os.PathLike[str] | None = None,
    validation_fraction: float = 0.1,
    n_tasks: int | None = None,
    **options: Any,
) -> Any:
    """Build benchmark ``name`` as an Avalanche benchmark with ``train_stream`` and ``test_stream``.

    Args:
        name: a name from :func:`available_benchmarks`.
        split: ``"test"`` (``test_stream`` is the real test set) or ``"validation"``
            (``test_stream`` is the validation part carved from the training data).
        seed: non-negative int; fixes the validation split, the pixel permutations and any
            sub-sampling. The class order does not depend on it.
        data_root: folder of the data files, default :func:`default_data_root`; not read by the
            embedded digits benchmarks (``benchmark_info(name).needs_data_root`` is False).
        validation_fraction: share of each class's training data held out for validation, in
            (0, 1). Training always uses the remaining ``1 - validation_fraction``.
        n_tasks: number of tasks, default ``benchmark_info(name).n_tasks``. Split benchmarks take
            their first ``n_tasks`` tasks, and so do the image benchmarks (the same tasks, with
            the same seeded class order, as the full sequence's first ones); permuted ones take
            any count >= 1.
        **options: per benchmark. MLP benchmarks: ``train_limit`` (at most this many training
            samples per task, stratified, seeded) and ``eval_limit`` (the same for each task of
            ``test_stream``; permuted benchmarks draw one sub-sample that every task shows under
            its own permutation); permuted ones also ``permute_first`` (default False: task 0 is
            unpermuted); MNIST / Fashion-MNIST also ``download`` (default True). Image benchmarks
            pass every option to :func:`benchmarks.image_data.build`; their ``image_size`` is
            checked first as :func:`benchmark_info` does.

    Returns:
        An Avalanche ``ClassificationScenario`` from ``dataset_benchmark`` (image benchmarks: what
        ``image_data.build`` returns) whose experience ``t`` has task label ``t`` and labels
        ``0 .. classes_per_task[t] - 1``. MLP benchmarks yield ``(x, y, t)`` with ``x`` a flat
        float32 tensor in [0, 1].

    Raises:
        ValueError: unknown name, bad ``split`` / ``seed`` / ``validation_fraction`` / ``n_tasks``,
            a ``data_root`` that is not a path, or an option the benchmark does not accept.
        DatasetNotFoundError: the data files are missing and could not be obtained (or
            ``data_root`` is a file, not a folder).
        DatasetCorruptError: a data file is present but truncated or not in its format.
    """
    spec = _spec(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    if (
        isinstance(validation_fraction, bool)
        or not isinstance(validation_fraction, (int, float))
        or not 0.0 < validation_fraction < 1.0
    ):
        raise ValueError(
            "validation_fraction must be a number strictly between 0 and 1, "
            f"got {validation_fraction!r}"
        )
    info = _with_image_size(_resize(spec, n_tasks), options.get("image_size"))
    if data_root is not None and not isinstance(data_root, (str, os.PathLike)):
        raise ValueError(f"data_root must be a folder path (str or Path) or None, got {data_root!r}")
    root = default_data_root() if data_root is None else Path(data_root).expanduser()
    if info.needs_data_root and root.exists() and not root.is_dir():
        raise DatasetNotFoundError(
            f"data_root {root} is a file, not a folder: pass the folder that holds the data sets "
            "(see docs/datasets.md)"
        )
    unknown = sorted(set(options) - set(spec.options)) if spec.options is not None else []
    if unknown:
        raise ValueError(
            f"{name} does not accept option(s) {unknown}; its options are {sorted(spec.options)}"
        )
    return spec.build(
        info,
        split=split,
        seed=seed,
        data_root=root,
        validation_fraction=float(validation_fraction),
        **options,
    )


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def _build_split(
    info: BenchmarkInfo,
    *,
    load: Callable[..., _Arrays],
    split: str,
    seed: int,
    data_root: Path,
    validation_fraction: float,
    train_limit: int | None = None,
    eval_limit: int | None = None,
    **load_options: Any,
) -> Any:
    """Task ``t`` = the t-th block of classes (``2t, 2t + 1``), relabelled from 0."""
    _check_limits(info, train_limit, eval_limit)
    arrays = load(data_root, **load_options)
    train_rows, val_rows = _validation_split(arrays.train_y, validation_fraction, seed)
    eval_x, eval_y, eval_rows = _eval_part(arrays, split, val_rows)
    train_sets, eval_sets = [], []
    first_class = 0
    for task, width in enumerate(info.classes_per_task):
        classes = torch.arange(first_class, first_class + width)
        first_class += width
        for rows, x, y, limit, key, out in (
            (train_rows, arrays.train_x, arrays.train_y, train_limit, _TRAIN_LIMIT_KEY, train_sets),
            (eval_rows, eval_x, eval_y, eval_limit, _EVAL_LIMIT_KEY, eval_sets),
        ):
            task_rows = rows[torch.isin(y[rows], classes)]
            task_rows = _limit(task_rows, y, limit, _random_state(seed, key, task))
            local_y = y[task_rows] - classes[0]  # (M,) in 0 .. width - 1
            out.append(FlatImageDataset(x, local_y, task_rows, scale=arrays.scale))
    return _task_incremental(train_sets, eval_sets, info)


def _build_permuted(
    info: BenchmarkInfo,
    *,
    load: Callable[..., _Arrays],
    split: str,
    seed: int,
    data_root: Path,
    validation_fraction: float,
    train_limit: int | None = None,
    eval_limit: int | None = None,
    permute_first: bool = False,
    **load_options: Any,
) -> Any:
    """Task ``t`` = all classes under pixel permutation ``pi_t`` (``pi_0`` = identity: default)."""
    _check_limits(info, train_limit, eval_limit)
    if not isinstance(permute_first, bool):
        raise ValueError(f"permute_first must be True or False, got {permute_first!r}")
    arrays = load(data_root, **load_options)
    n_pixels = arrays.train_x.shape[1]
    train_rows, val_rows = _validation_split(arrays.train_y, validation_fraction, seed)
    eval_x, eval_y, eval_rows = _eval_part(arrays, split, val_rows)
    # Every task shows the same images (the same sub-sample, if limited), each task permuted.
    train_rows = _limit(
        train_rows, arrays.train_y, train_limit, _random_state(seed, _TRAIN_LIMIT_KEY)
    )
    eval_rows = _limit(eval_rows, eval_y, eval_limit, _random_state(seed, _EVAL_LIMIT_KEY))
    train_sets, eval_sets = [], []
    for task in range(info.n_tasks):
        permutation = None
        if task > 0 or permute_first:
            perm = _random_state(seed, _PERMUTATION_KEY, task).permutation(n_pixels)
            permutation = torch.from_numpy(perm).to(torch.int64)  # (D,)
        train_sets.append(
            FlatImageDataset(
                arrays.train_x,
                arrays.train_y[train_rows],
                train_rows,
                scale=arrays.scale,
                permutation=permutation,
            )
        )
        eval_sets.append(
            FlatImageDataset(
                eval_x, eval_y[eval_rows], eval_rows, scale=arrays.scale, permutation=permutation
            )
        )
    return _task_incremental(train_sets, eval_sets, info)


def _build_image(
    info: BenchmarkInfo,
    *,
    split: str,
    seed: int,
    data_root: Path,
    validation_fraction: float,
    **options: Any,
) -> Any:
    """Delegate to :func:`benchmarks.image_data.build`, imported only now."""
    image_data = importlib.import_module("benchmarks.image_data")
    if info.n_tasks != _REGISTRY[info.name].info.n_tasks:
        options["n_tasks"] = info.n_tasks  # the first n_tasks tasks
    return image_data.build(
        info.name,
        data_root=data_root,
        seed=seed,
        split=split,
        validation_fraction=validation_fraction,
        **options,
    )


def _task_incremental(
    train_sets: list[FlatImageDataset], eval_sets: list[FlatImageDataset], info: BenchmarkInfo
) -> Any:
    """One experience per dataset, in order, task label = position (``dataset_benchmark``).

    ``dataset_benchmark`` rather than ``nc_benchmark(one_dataset_per_exp=True)``: the labels are
    already 0-based per task, and ``nc_benchmark`` walks every sample through Avalanche's lazy
    sequences, several times slower on permuted_fmnist.
    """
    from avalanche.benchmarks import dataset_benchmark  # Avalanche is heavy: import when building
    from avalanche.benchmarks.utils.flat_data import ConstantSequence

    for task, (train, test) in enumerate(zip(train_sets, eval_sets, strict=True)):
        train.targets_task_labels = ConstantSequence(task, len(train))
        test.targets_task_labels = ConstantSequence(task, len(test))
    bench = dataset_benchmark(train_sets, eval_sets)
    log.info(
        "%s: %d tasks, %d training and %d evaluation samples",
        info.name,
        info.n_tasks,
        sum(len(d) for d in train_sets),
        sum(len(d) for d in eval_sets),
    )
    return bench


# --------------------------------------------------------------------------------------------
# Splits and sub-sampling
# --------------------------------------------------------------------------------------------


def _random_state(seed: int, *keys: int) -> np.random.RandomState:
    """An independent, reproducible random stream for ``(seed, *keys)``."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(1)[0]
    return np.random.RandomState(int(state))


def _validation_split(targets: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Stratified split of the training rows into ``(train_rows, validation_rows)``, both sorted."""
    n_samples = int(targets.shape[0])
    n_classes = int(torch.unique(targets).numel())
    n_val = math.ceil(fraction * n_samples)  # sklearn rounds the held-out part up
    if n_val < n_classes or n_samples - n_val < n_classes:
        raise ValueError(
            f"validation_fraction={fraction} leaves {n_val} of {n_samples} training samples for "
            f"validation; both parts need at least one sample of each of the {n_classes} classes"
        )
    rows = np.arange(n_samples)
    train_rows, val_rows = train_test_split(
        rows,
        test_size=n_val,
        stratify=targets.numpy(),
        random_state=_random_state(seed, _VALIDATION_KEY),
    )
    return torch.from_numpy(np.sort(train_rows)), torch.from_numpy(np.sort(val_rows))


def _eval_part(arrays: _Arrays, split: str, val_rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(images, targets, rows)`` of what ``test_stream`` shows for ``split``."""
    if split == "validation":
        return arrays.train_x, arrays.train_y, val_rows
    return arrays.test_x, arrays.test_y, torch.arange(arrays.test_y.shape[0])


def _limit(rows: Tensor, targets: Tensor, limit: int | None, rng: np.random.RandomState) -> Tensor:
    """At most ``limit`` of ``rows``, stratified by ``targets[rows]``, sorted."""
    if limit is None or limit >= rows.shape[0]:
        return rows
    labels = targets[rows].numpy()
    if rows.shape[0] - limit < np.unique(labels).size:
        # Dropping fewer samples than there are classes: stratifying is moot (and sklearn
        # refuses it), so drop a seeded random few.
        kept = rng.choice(rows.numpy(), size=limit, replace=False)
    else:
        kept, _ = train_test_split(
            rows.numpy(), train_size=limit, stratify=labels, random_state=rng
        )
    return torch.from_numpy(np.sort(kept))


def _check_limits(info: BenchmarkInfo, train_limit: int | None, eval_limit: int | None) -> None:
    for option, value in (("train_limit", train_limit), ("eval_limit", eval_limit)):
        if value is None:
            continue
        too_small = isinstance(value, int) and value < info.max_classes_per_task
        if isinstance(value, bool) or not isinstance(value, int) or too_small:
            raise ValueError(
                f"{option} must be None or an int >= {info.max_classes_per_task} (one sample per "
                f"class of a task of {info.name}), got {value!r}"
            )


# --------------------------------------------------------------------------------------------
# Loaders: flat uint8 images and int64 labels
# --------------------------------------------------------------------------------------------


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
                f"images but {split}-labels-idx1-ubyte {labels} labels. "
                + _refetch_hint(class_name, raw)
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
        partial = target.with_name(f"{name}.partial")
        try:
            with gzip.open(source, "rb") as src, open(partial, "wb") as dst:
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


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def _spec(name: str) -> _Spec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown benchmark {name!r}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def _resize(spec: _Spec, n_tasks: int | None) -> BenchmarkInfo:
    """``spec.info`` for ``n_tasks`` tasks, after checking the count is allowed."""
    info = spec.info
    if n_tasks is None or n_tasks == info.n_tasks:
        return info
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks < 1:
        raise ValueError(f"n_tasks must be None or an int >= 1, got {n_tasks!r}")
    if spec.n_tasks == "fixed":
        raise ValueError(f"{info.name} always has {info.n_tasks} tasks; leave n_tasks at None")
    if spec.n_tasks == "any":
        widths = (info.classes_per_task[0],) * n_tasks
    elif n_tasks <= info.n_tasks:  # "prefix": the first n_tasks tasks
        widths = info.classes_per_task[:n_tasks]
    else:
        raise ValueError(
            f"{info.name} has {info.n_tasks} tasks; n_tasks must be between 1 and {info.n_tasks}"
        )
    return replace(info, n_tasks=n_tasks, classes_per_task=widths)


def _with_image_size(info: BenchmarkInfo, image_size: Any) -> BenchmarkInfo:
    """``info`` with ``input_shape`` ``(C, S, S)`` for ``image_size`` S, after checking S fits the network."""
    if image_size is None:
        return info
    if info.model_family == "mlp":
        image_benchmarks = [n for n, s in _REGISTRY.items() if s.info.model_family != "mlp"]
        raise ValueError(
            f"image_size applies to the image benchmarks {image_benchmarks} only; {info.name} is an "
            f"MLP benchmark with inputs of fixed shape {info.input_shape}"
        )
    minimum = MIN_IMAGE_SIZE[info.model_family]
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer (pixels per side), got {image_size!r}")
    if image_size < minimum:
        raise ValueError(
            f"image_size {image_size} is too small for {info.name} (network {info.model_family}): "
            f"the minimum is {minimum} (paper size {info.input_shape[-1]})"
        )
    return replace(info, input_shape=(info.input_shape[0], image_size, image_size))


def _mlp_spec(
    name: str, *, load: Callable[..., _Arrays], kind: str, n_tasks: int, n_pixels: int, about: str
) -> _Spec:
    permuted = kind == "permuted"
    options = ("train_limit", "eval_limit")
    if permuted:
        options += ("permute_first",)
    if load is not _load_digits:
        options += ("download",)
    builder = _build_permuted if permuted else _build_split

    def build(info: BenchmarkInfo, **kwargs: Any) -> Any:
        return builder(info, load=load, **kwargs)

    per_task = 10 if permuted else 2
    info = BenchmarkInfo(
        name=name,
        n_tasks=n_tasks,
        classes_per_task=(per_task,) * n_tasks,
        input_shape=(n_pixels,),
        model_family="mlp",
        needs_data_root=load is not _load_digits,
        description=about,
    )
    return _Spec(info=info, build=build, options=options, n_tasks="any" if permuted else "prefix")


def _image_spec(
    name: str, *, widths: Sequence[int], shape: tuple[int, ...], family: str, about: str
) -> _Spec:
    info = BenchmarkInfo(
        name=name,
        n_tasks=len(widths),
        classes_per_task=tuple(widths),
        input_shape=shape,
        model_family=family,
        needs_data_root=True,
        description=about,
    )
    return _Spec(info=info, build=_build_image, options=None, n_tasks="prefix")


_SPECS = (
    _mlp_spec(
        "split_digits",
        load=_load_digits,
        kind="split",
        n_tasks=5,
        n_pixels=64,
        about="scikit-learn 8x8 digits, 5 tasks of 2 classes (embedded, no files)",
    ),
    _mlp_spec(
        "permuted_digits",
        load=_load_digits,
        kind="permuted",
        n_tasks=5,
        n_pixels=64,
        about="scikit-learn 8x8 digits, 5 pixel permutations of 10 classes (embedded, no files)",
    ),
    _mlp_spec(
        "split_fmnist",
        load=_load_fashion_mnist,
        kind="split",
        n_tasks=5,
        n_pixels=784,
        about="Fashion-MNIST, 5 tasks of 2 classes",
    ),
    _mlp_spec(
        "permuted_fmnist",
        load=_load_fashion_mnist,
        kind="permuted",
        n_tasks=10,
        n_pixels=784,
        about="Fashion-MNIST, 10 pixel permutations of 10 classes",
    ),
    _mlp_spec(
        "split_mnist",
        load=_load_mnist,
        kind="split",
        n_tasks=5,
        n_pixels=784,
        about="MNIST, 5 tasks of 2 classes (the paper's Table 2)",
    ),
    _mlp_spec(
        "permuted_mnist",
        load=_load_mnist,
        kind="permuted",
        n_tasks=10,
        n_pixels=784,
        about="MNIST, 10 pixel permutations of 10 classes (the paper's Table 3)",
    ),
    _image_spec(
        "five_datasets",
        widths=(10,) * 5,
        shape=(3, 32, 32),
        family="vgg9",
        about="MNIST, notMNIST, SVHN, STL-10, CIFAR-10 at 3x32x32, 10 classes each (VGG-9)",
    ),
    _image_spec(
        "split_cifar100",
        widths=(5,) * 20,
        shape=(3, 32, 32),
        family="vgg9",
        about="CIFAR-100, 20 tasks of 5 classes (VGG-9)",
    ),
    _image_spec(
        "split_caltech101",
        widths=(30, 25, 25, 22),
        shape=(3, 224, 224),
        family="resnet18",
        about="Caltech-101, 4 tasks of 30/25/25/22 classes at 3x224x224 (ResNet-18)",
    ),
)
_REGISTRY: dict[str, _Spec] = {spec.info.name: spec for spec in _SPECS}
