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

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from avalanche.benchmarks import dataset_benchmark
from avalanche.benchmarks.utils import _make_taskaware_classification_dataset
from torch.utils.data import Dataset
from torchvision.transforms import RandomHorizontalFlip

from benchmarks.builders import _exactly, stratified_split, stratified_take
from benchmarks.errors import DatasetNotFoundError
from benchmarks.image_files import (
    _LETTERS,
    _SOURCES,
    BENCHMARK_NAMES,
    DOCS,
    ImageFiles,
    InMemoryImages,
    _check_name,
    _ensure_present,
    _load,
    clear_cache,
    missing_data,
)

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

FIVE_DATASETS = ("MNIST", "notMNIST", "SVHN", "STL-10", "CIFAR-10")  # the paper's task order
CALTECH_TASK_SIZES = (30, 25, 25, 22)  # supplementary Sec. 6; sums to 102 = 101 + BACKGROUND_Google
CALTECH_BACKGROUND = "BACKGROUND_Google"
CALTECH_TEST_FRACTION = 0.3  # the paper's 7:3 split of every class
CALTECH_SPLIT_SEED = 0  # the 70/30 split is the same for every run seed (a fixed test set)
CIFAR100_TASKS, CIFAR100_CLASSES_PER_TASK = 20, 5
SHORTFALLS = ("repeat", "cap", "error")
SPLITS = ("validation", "test")

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

_CLASS_NAMES = {
    "MNIST": tuple(str(d) for d in range(10)),
    "notMNIST": _LETTERS,
    "SVHN": tuple(str(d) for d in range(10)),
    "STL-10": tuple("airplane bird car cat deer dog horse monkey ship truck".split()),
    "CIFAR-10": tuple("airplane automobile bird cat deer dog frog horse ship truck".split()),
}


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
