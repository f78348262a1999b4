"""Build a benchmark's task-incremental streams from its arrays: split, permuted, rotated and image streams.

Also the seeded validation split carved from the training data and the per-task sub-sampling
(``train_limit``, ``eval_limit``); :mod:`benchmarks.streams` picks the builder of each benchmark.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor

from benchmarks.info import (
    _EVAL_LIMIT_KEY,
    _PERMUTATION_KEY,
    _TRAIN_LIMIT_KEY,
    _VALIDATION_KEY,
    BenchmarkInfo,
)
from benchmarks.tensor_data import FlatImageDataset, _Arrays

log = logging.getLogger(__name__)


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


def _build_permuted(info: BenchmarkInfo, *, seed: int, permute_first: bool = False, **options: Any) -> Any:
    """Task ``t`` = all classes under pixel permutation ``pi_t`` (``pi_0`` = identity: default)."""
    if not isinstance(permute_first, bool):
        raise ValueError(f"permute_first must be True or False, got {permute_first!r}")

    def permutation(task: int, n_pixels: int) -> Tensor | None:
        if task == 0 and not permute_first:
            return None
        perm = _random_state(seed, _PERMUTATION_KEY, task).permutation(n_pixels)
        return torch.from_numpy(perm).to(torch.int64)  # (D,)

    return _build_remapped(info, pixel_map=permutation, seed=seed, **options)


ROTATION_STEP = 18.0
"""Degrees between consecutive tasks of a rotated benchmark: task ``t`` is turned by ``18 t``."""


def rotation_map(side: int, degrees: float) -> Tensor:
    """``(side**2,)`` pixel map of a ``side x side`` image turned ``degrees`` counter-clockwise.

    Nearest neighbour about the image centre, corners that come from outside blank (index
    ``side**2``): what ``torchvision.transforms.functional.rotate`` does with its defaults, and so
    Avalanche's ``RotatedMNIST``.
    """
    angle = math.radians(degrees)
    centre = (side - 1) / 2
    grid = torch.arange(side, dtype=torch.float64) - centre
    dy, dx = torch.meshgrid(grid, grid, indexing="ij")  # (side, side) each, output pixel offsets
    source_x = torch.round(math.cos(angle) * dx - math.sin(angle) * dy + centre).long()
    source_y = torch.round(math.sin(angle) * dx + math.cos(angle) * dy + centre).long()
    inside = (source_x >= 0) & (source_x < side) & (source_y >= 0) & (source_y < side)
    return torch.where(inside, source_y * side + source_x, side * side).flatten()


def _build_rotated(info: BenchmarkInfo, **options: Any) -> Any:
    """Task ``t`` = all classes turned by ``ROTATION_STEP * t`` degrees (task 0 upright)."""

    def rotation(task: int, n_pixels: int) -> Tensor | None:
        side = math.isqrt(n_pixels)
        return rotation_map(side, ROTATION_STEP * task) if task else None

    return _build_remapped(info, pixel_map=rotation, **options)


def _build_remapped(
    info: BenchmarkInfo,
    *,
    pixel_map: Callable[[int, int], Tensor | None],
    load: Callable[..., _Arrays],
    split: str,
    seed: int,
    data_root: Path,
    validation_fraction: float,
    train_limit: int | None = None,
    eval_limit: int | None = None,
    **load_options: Any,
) -> Any:
    """Task ``t`` = all classes, every image under ``pixel_map(t, D)`` (None: as stored)."""
    _check_limits(info, train_limit, eval_limit)
    arrays = load(data_root, **load_options)
    n_pixels = arrays.train_x.shape[1]
    train_rows, val_rows = _validation_split(arrays.train_y, validation_fraction, seed)
    eval_x, eval_y, eval_rows = _eval_part(arrays, split, val_rows)
    # Every task shows the same images (the same sub-sample, if limited), each task remapped.
    train_rows = _limit(train_rows, arrays.train_y, train_limit, _random_state(seed, _TRAIN_LIMIT_KEY))
    eval_rows = _limit(eval_rows, eval_y, eval_limit, _random_state(seed, _EVAL_LIMIT_KEY))
    train_sets, eval_sets = [], []
    for task in range(info.n_tasks):
        remap = pixel_map(task, n_pixels)
        train_sets.append(
            FlatImageDataset(
                arrays.train_x,
                arrays.train_y[train_rows],
                train_rows,
                scale=arrays.scale,
                permutation=remap,
            )
        )
        eval_sets.append(
            FlatImageDataset(eval_x, eval_y[eval_rows], eval_rows, scale=arrays.scale, permutation=remap)
        )
    return _task_incremental(train_sets, eval_sets, info)


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
        kept, _ = train_test_split(rows.numpy(), train_size=limit, stratify=labels, random_state=rng)
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
