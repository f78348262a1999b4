"""Tests of benchmarks.image_data on generated stand-ins in the real file formats (tests/standins.py)."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from standins import (
    GREY_BASE,
    GREY_STEP,
    decode_index,
    write_caltech101,
    write_cifar100,
    write_five_datasets,
    write_mnist,
    write_notmnist,
)

from benchmarks import image_data
from benchmarks.builders import stratified_split, stratified_take
from benchmarks.errors import DatasetNotFoundError
from benchmarks.image_data import build
from benchmarks.image_files import missing_data

N_TRAIN, N_TEST = 20, 5  # stand-in images per class (five data sets)
CIFAR100_TRAIN, CIFAR100_TEST = 10, 3


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def five_root(tmp_path_factory) -> Path:
    return write_five_datasets(tmp_path_factory.mktemp("five"), N_TRAIN, N_TEST)


@pytest.fixture(scope="module")
def cifar100_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar100")
    write_cifar100(root, CIFAR100_TRAIN, CIFAR100_TEST)
    return root


@pytest.fixture(scope="module")
def caltech_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("caltech")
    write_caltech101(root, images_per_class=4)
    return root


def _five(root: Path, split: str = "test", seed: int = 0, **options):
    options.setdefault("images_per_task", 150)
    options.setdefault("download", False)
    return build(
        "five_datasets",
        data_root=root,
        seed=seed,
        split=split,
        validation_fraction=0.1,
        **options,
    )


def _items(dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xs, ys, ts = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(xs), torch.tensor(ys), torch.tensor(ts)


def _source(dataset):
    """The plain dataset under an Avalanche dataset (which wraps it in ``_datasets`` layers)."""
    while hasattr(dataset, "_datasets"):
        dataset = dataset._datasets[0]
    return dataset


def _grey_label(x: torch.Tensor) -> torch.Tensor:
    """Labels coded by the stand-ins' uniform grey value (read away from the dark corner)."""
    return ((x[:, 0, 16, 16] * 255 - GREY_BASE) / GREY_STEP).round().long()


# ---------------------------------------------------------------------------------------------
# five_datasets
# ---------------------------------------------------------------------------------------------


def test_five_datasets_streams_tasks_shapes_and_ranges(five_root):
    benchmark = _five(five_root)
    assert len(benchmark.train_stream) == len(benchmark.test_stream) == 5
    for t, (train, test) in enumerate(zip(benchmark.train_stream, benchmark.test_stream, strict=True)):
        assert train.task_label == test.task_label == t
        assert sorted(train.classes_in_this_experience) == list(range(10))
        assert len(train.dataset) == 150  # images_per_task, the same for every data set
        assert len(test.dataset) == 10 * N_TEST  # the real test set, whole
        x, y, tl = _items(train.dataset)
        assert x.shape == (150, 3, 32, 32) and x.dtype == torch.float32
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert set(tl.tolist()) == {t}
        assert Counter(y.tolist()) == {c: 15 for c in range(10)}  # stratified: 150 of 10 classes
    assert benchmark.task_classes[1] == tuple("ABCDEFGHIJ")


def test_five_datasets_labels_survive_every_reader(five_root):
    benchmark = _five(five_root)
    mnist, notmnist, svhn, stl, cifar = (_items(e.dataset) for e in benchmark.test_stream)
    for x, y, _ in (mnist, notmnist):  # grey images resized 28 -> 32, repeated to 3 channels
        assert torch.equal(_grey_label(x), y)
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    for x, y, _ in (svhn, cifar):  # the label is coded in pixel (0, 0, 0); SVHN's "10" is a 0
        assert torch.equal((x[:, 0, 0, 0] * 255).round().long(), y)
    assert (svhn[1] == 0).sum() == N_TEST
    x, y, _ = stl
    assert torch.equal(((x[:, 0, 16, 2] * 255 - GREY_BASE) / GREY_STEP).round().long(), y)


def test_stl10_is_resized_not_cropped_and_not_transposed(five_root):
    x, _, _ = _items(_five(five_root).test_stream[3].dataset)  # (N, 3, 32, 32)
    # The 96x96 stand-ins are red | green | blue in vertical thirds (columns 0-31, 32-63, 64-95).
    # A resize keeps the thirds at columns ~0-10, ~11-21, ~22-31; a 32x32 centre crop would be all
    # green; a row/column mix-up would make the thirds horizontal.
    green, blue = x[:, 1], x[:, 2]
    assert torch.all(green[:, :, 13:19] == 1.0) and torch.all(green[:, :, :9] == 0.0)
    assert torch.all(blue[:, :, 23:] == 1.0) and torch.all(blue[:, :, :20] == 0.0)
    assert torch.all(x[:, 0, :, 11:] < 0.05)  # red only on the left
    assert torch.all(green[:, :2, 13:19] == 1.0) and torch.all(green[:, -2:, 13:19] == 1.0)


def test_notmnist_unreadable_files_are_skipped_and_counted(tmp_path, caplog):
    bad = write_notmnist(tmp_path, n_train=3, n_test=2, corrupt=("A", "C"))
    assert len(bad) == 4
    caplog.set_level(logging.WARNING, logger="benchmarks.image_data")
    image_data.clear_cache()
    train, test = image_data._load("notMNIST", tmp_path, 32)
    assert len(train.targets) == 30 and len(test.targets) == 20  # 34 files, 4 unreadable
    assert Counter(train.targets.tolist()) == {c: 3 for c in range(10)}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("skipped 4 unreadable image file(s) of 34" in m for m in warnings), warnings


def test_validation_split_is_carved_from_training_disjoint_stratified_and_seeded(five_root):
    # CIFAR-10 (task 4) codes each image's index, so images can be told apart exactly.
    def indices(benchmark, stream):
        x, y, _ = _items(getattr(benchmark, stream)[4].dataset)
        return [decode_index(xi) for xi in x], y

    validation = _five(five_root, split="validation", images_per_task=150)
    val_idx, val_y = indices(validation, "test_stream")
    train_idx, _ = indices(validation, "train_stream")
    assert len(val_idx) == 20 and Counter(val_y.tolist()) == {c: 2 for c in range(10)}  # 10% of 20/class
    assert not set(val_idx) & set(train_idx)
    test_mode_train, _ = indices(_five(five_root, split="test"), "train_stream")
    assert test_mode_train == train_idx  # training data do not depend on split
    again, _ = indices(_five(five_root, split="validation"), "test_stream")
    other, _ = indices(_five(five_root, split="validation", seed=1), "test_stream")
    assert again == val_idx and other != val_idx


def test_shortfall_policies(five_root):
    # 20 images per class, 2 carved for validation: 180 training images per data set.
    x, _, _ = _items(_five(five_root, images_per_task=400, shortfall="repeat").train_stream[4].dataset)
    counts = Counter(decode_index(xi) for xi in x)
    assert len(x) == 400 and len(counts) == 180 and set(counts.values()) == {2, 3}  # 400 = 2*180 + 40
    assert len(_five(five_root, images_per_task=400, shortfall="cap").train_stream[4].dataset) == 180
    with pytest.raises(ValueError, match="180 training images after the validation carve, 400 asked"):
        _five(five_root, images_per_task=400, shortfall="error")


def test_train_limit_is_an_alias_of_images_per_task(five_root):
    benchmark = _five(five_root, images_per_task=None, train_limit=60)
    assert [len(e.dataset) for e in benchmark.train_stream] == [60] * 5
    with pytest.raises(ValueError, match="disagree"):
        _five(five_root, images_per_task=50, train_limit=60)


def test_mnist_gz_files_are_read(tmp_path):
    write_mnist(tmp_path, n_train=3, n_test=2, compress=True)
    image_data.clear_cache()
    train, test = image_data._load("MNIST", tmp_path, 28)
    assert train.images.shape == (30, 1, 28, 28) and test.images.shape == (20, 1, 28, 28)
    assert train.targets.tolist() == np.repeat(np.arange(10), 3).tolist()


# ---------------------------------------------------------------------------------------------
# split_cifar100
# ---------------------------------------------------------------------------------------------


def _cifar100(root: Path, seed: int = 0, split: str = "test", **options):
    options.setdefault("download", False)
    return build(
        "split_cifar100",
        data_root=root,
        seed=seed,
        split=split,
        validation_fraction=0.1,
        **options,
    )


def test_split_cifar100_tasks_remap_classes_from_zero(cifar100_root):
    benchmark = _cifar100(cifar100_root)
    assert len(benchmark.train_stream) == len(benchmark.test_stream) == 20
    seen = []
    for t, (train, test) in enumerate(zip(benchmark.train_stream, benchmark.test_stream, strict=True)):
        assert train.task_label == test.task_label == t
        assert sorted(train.classes_in_this_experience) == list(range(5))
        assert len(train.dataset) == 5 * (CIFAR100_TRAIN - 1) and len(test.dataset) == 5 * CIFAR100_TEST
        names = benchmark.task_classes[t]
        for dataset in (train.dataset, test.dataset):
            x, y, _ = _items(dataset)
            assert x.shape[1:] == (3, 32, 32)
            original = (x[:, 0, 0, 0] * 255).round().long()  # the stand-in's CIFAR-100 class
            assert original.tolist() == [int(names[k]) for k in y.tolist()]
        seen += [int(n) for n in names]
    assert sorted(seen) == list(range(100))  # every class in exactly one task
    assert _cifar100(cifar100_root, seed=1).task_classes != benchmark.task_classes
    assert _cifar100(cifar100_root).task_classes == benchmark.task_classes


def test_split_cifar100_train_limit_is_stratified(cifar100_root):
    benchmark = _cifar100(cifar100_root, train_limit=20)
    _, y, _ = _items(benchmark.train_stream[7].dataset)
    assert Counter(y.tolist()) == {c: 4 for c in range(5)}


def test_n_tasks_gives_the_first_tasks_of_the_full_sequence(cifar100_root, caltech_root):
    full, short = _cifar100(cifar100_root, seed=2), _cifar100(cifar100_root, seed=2, n_tasks=3)
    assert len(short.train_stream) == len(short.test_stream) == 3
    assert short.task_classes == full.task_classes[:3]  # the seeded class order does not change
    for stream in ("train_stream", "test_stream"):
        for task in range(3):
            x_short, y_short, t_short = _items(getattr(short, stream)[task].dataset)
            x_full, y_full, _ = _items(getattr(full, stream)[task].dataset)
            assert torch.equal(x_short, x_full) and torch.equal(y_short, y_full)
            assert set(t_short.tolist()) == {task}
    caltech = _caltech(caltech_root, n_tasks=2, image_size=16)
    assert [len(e.classes_in_this_experience) for e in caltech.train_stream] == [30, 25]
    assert caltech.test_stream[1].dataset[0][0].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="between 1 and 5, got 6"):
        _five(cifar100_root, n_tasks=6)


# ---------------------------------------------------------------------------------------------
# split_caltech101
# ---------------------------------------------------------------------------------------------


def _caltech(root: Path, seed: int = 0, split: str = "test", **options):
    options.setdefault("image_size", 32)
    options.setdefault("download", False)
    return build(
        "split_caltech101",
        data_root=root,
        seed=seed,
        split=split,
        validation_fraction=0.1,
        **options,
    )


def test_split_caltech101_tasks_sizes_and_images(caltech_root):
    benchmark = _caltech(caltech_root, image_size=224)
    assert [len(e.classes_in_this_experience) for e in benchmark.train_stream] == [30, 25, 25, 22]
    assert [e.task_label for e in benchmark.test_stream] == [0, 1, 2, 3]
    # 4 images per class: 1 for test (30%), 1 carved for validation, 2 for training.
    assert [len(e.dataset) for e in benchmark.train_stream] == [60, 50, 50, 44]
    assert [len(e.dataset) for e in benchmark.test_stream] == [30, 25, 25, 22]
    assert sum(len(n) for n in benchmark.task_classes) == 102  # 101 categories + BACKGROUND_Google
    x, y, t = benchmark.train_stream[3].dataset.eval()[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and 0 <= y < 22 and t == 3
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert x[:, :, :100].mean() < 0.2 and x[:, :, 124:].mean() > 0.8  # dark left, bright right
    assert isinstance(_source(benchmark.train_stream[0].dataset), image_data.ImageFiles)  # lazy


def test_split_caltech101_flips_training_images_only(caltech_root):
    benchmark = _caltech(caltech_root)
    torch.manual_seed(0)

    def dark_left(dataset, n=24):
        return [bool(dataset[i % len(dataset)][0][:, :, :16].mean() < 0.5) for i in range(n)]

    train = dark_left(benchmark.train_stream[0].dataset.train())
    assert any(train) and not all(train)  # flipped about half the time
    assert all(dark_left(benchmark.train_stream[0].dataset.eval()))
    assert all(dark_left(benchmark.test_stream[0].dataset))


def test_split_caltech101_test_part_fixed_validation_carved_from_the_70_percent(caltech_root):
    def paths(benchmark, stream):
        return {p for e in getattr(benchmark, stream) for p in _source(e.dataset).paths}

    test0, test1 = _caltech(caltech_root, seed=0), _caltech(caltech_root, seed=1)
    validation = _caltech(caltech_root, seed=0, split="validation")
    assert paths(test0, "test_stream") == paths(test1, "test_stream")  # the 30% part: seed-independent
    assert test0.task_classes != test1.task_classes  # class order: seeded
    val, test, train = (
        paths(validation, "test_stream"),
        paths(test0, "test_stream"),
        paths(test0, "train_stream"),
    )
    assert len(val) == len(test) == 102 and len(train) == 204
    assert not (val & test) and not (val & train) and not (test & train)
    assert paths(validation, "train_stream") == train


def test_split_caltech101_without_background(caltech_root, tmp_path):
    benchmark = _caltech(caltech_root, include_background=False)
    assert [len(e.classes_in_this_experience) for e in benchmark.train_stream] == [30, 25, 25, 21]
    assert all("BACKGROUND_Google" not in names for names in benchmark.task_classes)
    write_caltech101(tmp_path, images_per_class=1, n_categories=50)
    with pytest.raises(DatasetNotFoundError, match="holds 51 category folders.*needs 102"):
        _caltech(tmp_path)


# ---------------------------------------------------------------------------------------------
# Missing data, downloads, arguments
# ---------------------------------------------------------------------------------------------


def test_missing_data_root_names_every_folder_and_file(tmp_path):
    with pytest.raises(DatasetNotFoundError) as raised:
        _five(tmp_path / "nowhere")
    message = str(raised.value)
    assert isinstance(raised.value, FileNotFoundError)
    for expected in (
        "MNIST/raw",
        "train-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        "notMNIST_large",
        "notMNIST_small",
        "cannot be downloaded automatically",
        "SVHN",
        "test_32x32.mat",
        "stl10_binary",
        "train_X.bin",
        "cifar-10-batches-py",
        "data_batch_5",
        "docs/datasets.md",
        "download=False",
    ):
        assert expected in message, expected
    with pytest.raises(DatasetNotFoundError, match="cifar-100-python.*train, test"):
        _cifar100(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="caltech101/101_ObjectCategories"):
        _caltech(tmp_path)


def test_only_the_missing_data_sets_are_listed(tmp_path):
    write_mnist(tmp_path, n_train=2, n_test=1)
    write_notmnist(tmp_path, n_train=2, n_test=1, corrupt=())
    (tmp_path / "notMNIST_small" / "D" / "D0000.png").unlink()  # D/ is now empty
    lines = missing_data("five_datasets", tmp_path)
    assert len(lines) == 4
    assert lines[0].startswith("- notMNIST (test images)") and "missing: D/" in lines[0]
    assert not any("MNIST/raw" in line for line in lines)
    assert missing_data("split_cifar100", tmp_path)[0].startswith("- CIFAR-100")


def test_download_only_when_missing_and_failure_is_reported(cifar100_root, tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class Offline:
        def __init__(self, root, download=False, **kwargs):
            calls.append(root)
            raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", Offline)
    _cifar100(cifar100_root, download=True)  # files present: no download attempted
    assert calls == []
    with pytest.raises(DatasetNotFoundError, match="Download failed: OSError: network is unreachable"):
        _cifar100(tmp_path, download=True)
    assert calls == [str(tmp_path)]


def test_bad_arguments_are_refused(five_root):
    with pytest.raises(ValueError, match="unknown image benchmark"):
        build("split_svhn", data_root=five_root, seed=0, split="test", validation_fraction=0.1)
    with pytest.raises(ValueError, match="split must be one of validation, test"):
        _five(five_root, split="train")
    with pytest.raises(ValueError, match="needs validation_fraction > 0"):
        build("five_datasets", data_root=five_root, seed=0, split="validation", validation_fraction=0.0)
    with pytest.raises(ValueError, match="unknown option.*batch_size.*allowed: download"):
        _five(five_root, batch_size=3)
    with pytest.raises(ValueError, match="shortfall must be one of repeat, cap, error"):
        _five(five_root, shortfall="pad")
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        _five(five_root, seed=-1)
    with pytest.raises(ValueError, match="image_size must be an integer >= 8"):
        _five(five_root, image_size=4)


# ---------------------------------------------------------------------------------------------
# Selection helpers and the in-memory dataset
# ---------------------------------------------------------------------------------------------


def test_stratified_split_counts_by_hand():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 1)
    kept, carved = stratified_split(np.arange(16), labels, 0.3, np.random.default_rng(0))
    # round(0.3 * 10) = 3, round(0.3 * 5) = round(1.5) = 2, a class of one is never carved.
    assert Counter(labels[carved].tolist()) == {0: 3, 1: 2}
    assert sorted(kept.tolist() + carved.tolist()) == list(range(16))
    _, tiny = stratified_split(np.arange(16), labels, 0.01, np.random.default_rng(0))
    assert Counter(labels[tiny].tolist()) == {0: 1, 1: 1}  # at least one per class of >= 2


def test_stratified_take_largest_remainders_by_hand():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    chosen = stratified_take(np.arange(10), labels, 5, np.random.default_rng(0))
    # exact shares 3, 1.5, 0.5: floors 3, 1, 0 and the one left goes to class 1 (the first of the
    # tied remainders 0.5, 0.5).
    assert Counter(labels[chosen].tolist()) == {0: 3, 1: 2}
    assert stratified_take(np.arange(10), labels, 50, np.random.default_rng(0)).tolist() == list(range(10))


def test_in_memory_images_convert_on_the_fly():
    images = torch.arange(2 * 4, dtype=torch.uint8).reshape(2, 1, 2, 2) * 30
    dataset = image_data.InMemoryImages(images, np.array([1, 1, 0]), [5, 5, 4])
    x, y = dataset[0]
    assert x.shape == (3, 2, 2) and y == 5
    assert torch.allclose(x[2], torch.tensor([[120.0, 150.0], [180.0, 210.0]]) / 255)
    assert dataset.images.dtype == torch.uint8 and dataset.images.data_ptr() == images.data_ptr()
    with pytest.raises(ValueError, match="uint8"):
        image_data.InMemoryImages(images.float(), np.array([0]), [0])
