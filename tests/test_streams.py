"""Tests of benchmarks.streams: registry, splits, seeds, permutations, rotations, offline data."""

from __future__ import annotations

import gzip
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms.functional as TF
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader

from benchmarks import tensor_data
from benchmarks.builders import rotation_map
from benchmarks.info import BenchmarkInfo
from benchmarks.streams import DatasetNotFoundError, available_benchmarks, benchmark_info, make_benchmark
from benchmarks.tensor_data import MNIST_FILES

ALL_NAMES = {
    "split_digits",
    "permuted_digits",
    "split_fmnist",
    "permuted_fmnist",
    "split_mnist",
    "permuted_mnist",
    "rotated_fmnist",
    "rotated_mnist",
    "five_datasets",
    "split_cifar100",
    "split_caltech101",
}
N_DIGITS = 1797
N_DIGITS_TEST = math.ceil(0.3 * N_DIGITS)  # 540: sklearn rounds the held-out part up
N_DIGITS_TRAIN = N_DIGITS - N_DIGITS_TEST  # 1257
N_DIGITS_VAL = math.ceil(0.1 * N_DIGITS_TRAIN)  # 126


def stream_arrays(stream) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per experience: inputs (N, D), labels (N,), task labels (N,), in dataset order."""
    out = []
    for experience in stream:
        dataset = experience.dataset
        loader = DataLoader(dataset, batch_size=len(dataset), collate_fn=dataset.collate_fn)
        x, y, t = next(iter(loader))
        out.append((x, y, t))
    return out


def digit_keys(x: torch.Tensor) -> list[bytes]:
    """Exact identity of digits samples: pixels back to their integers 0..16."""
    return [row.tobytes() for row in (x * 16).round().to(torch.uint8).numpy()]


@pytest.fixture(scope="module")
def digits_original() -> dict[bytes, int]:
    digits = load_digits()
    return {row.astype(np.uint8).tobytes(): int(y) for row, y in zip(digits.data, digits.target, strict=True)}


@pytest.fixture(scope="module")
def split_digits_test():
    return make_benchmark("split_digits", split="test", seed=0)


@pytest.fixture(scope="module")
def split_digits_val():
    return make_benchmark("split_digits", split="validation", seed=0)


# ------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------


def test_registry_lists_every_benchmark_with_consistent_info():
    assert set(available_benchmarks()) == ALL_NAMES
    for name in available_benchmarks():
        info = benchmark_info(name)
        assert isinstance(info, BenchmarkInfo) and info.name == name
        assert len(info.classes_per_task) == info.n_tasks
    assert benchmark_info("split_digits").classes_per_task == (2,) * 5
    assert benchmark_info("split_digits").input_shape == (64,)
    assert not benchmark_info("split_digits").needs_data_root
    assert benchmark_info("permuted_fmnist").classes_per_task == (10,) * 10
    assert benchmark_info("split_mnist").input_shape == (784,)
    assert benchmark_info("split_mnist").needs_data_root
    five = benchmark_info("five_datasets")
    assert (five.classes_per_task, five.input_shape, five.model_family) == (
        (10,) * 5,
        (3, 32, 32),
        "vgg9",
    )
    cifar = benchmark_info("split_cifar100")
    assert (cifar.n_tasks, cifar.classes_per_task[0], cifar.model_family) == (20, 5, "vgg9")
    caltech = benchmark_info("split_caltech101")
    assert caltech.classes_per_task == (30, 25, 25, 22)
    assert caltech.input_shape == (3, 224, 224) and caltech.model_family == "resnet18"
    assert caltech.max_classes_per_task == 30


def test_image_size_resizes_the_input_shape_of_image_benchmarks_only():
    assert benchmark_info("five_datasets", image_size=16).input_shape == (3, 16, 16)
    caltech = benchmark_info("split_caltech101", n_tasks=2, image_size=32)
    assert (caltech.input_shape, caltech.classes_per_task) == ((3, 32, 32), (30, 25))
    assert benchmark_info("split_cifar100", image_size=None).input_shape == (3, 32, 32)
    with pytest.raises(ValueError, match="split_digits is an MLP benchmark"):
        benchmark_info("split_digits", image_size=8)
    with pytest.raises(ValueError, match="positive integer"):
        benchmark_info("split_cifar100", image_size=0)
    with pytest.raises(ValueError, match="the minimum is 8"):
        benchmark_info("split_cifar100", image_size=7)
    with pytest.raises(ValueError, match="the minimum is 32"):
        benchmark_info("split_caltech101", image_size=31)


def test_image_code_is_imported_only_when_an_image_benchmark_is_built(monkeypatch):
    # A None entry in sys.modules makes any import of that module raise ImportError.
    monkeypatch.setitem(sys.modules, "benchmarks.image_data", None)
    monkeypatch.setitem(sys.modules, "benchmarks.cnn", None)
    infos = [benchmark_info(name) for name in available_benchmarks()]
    assert {info.model_family for info in infos} == {"mlp", "vgg9", "resnet18"}
    assert len(make_benchmark("split_digits", n_tasks=1).train_stream) == 1
    with pytest.raises(ImportError):
        make_benchmark("five_datasets")


def test_image_benchmarks_are_built_by_image_data_build(monkeypatch, tmp_path):
    calls = []

    def build(name, **kwargs):
        calls.append((name, kwargs))
        return "built"

    monkeypatch.setitem(sys.modules, "benchmarks.image_data", SimpleNamespace(build=build))
    result = make_benchmark(
        "split_cifar100",
        split="validation",
        seed=3,
        data_root=tmp_path,
        validation_fraction=0.2,
        train_limit=7,
    )
    assert result == "built"
    assert calls == [
        (
            "split_cifar100",
            dict(
                data_root=tmp_path,
                seed=3,
                split="validation",
                validation_fraction=0.2,
                train_limit=7,
            ),
        )
    ]
    make_benchmark("split_cifar100", data_root=tmp_path, n_tasks=4, image_size=16)
    assert calls[1][1]["n_tasks"] == 4 and calls[1][1]["image_size"] == 16  # the first 4 tasks
    with pytest.raises(ValueError, match="between 1 and 20"):
        make_benchmark("split_cifar100", n_tasks=21)
    with pytest.raises(ValueError, match=r"split_caltech101 \(network resnet18\): the minimum is 32"):
        make_benchmark("split_caltech101", image_size=16)
    assert len(calls) == 2
    from benchmarks import errors

    assert DatasetNotFoundError is errors.DatasetNotFoundError  # one class for all data sets


def test_unknown_name_error_lists_the_names():
    with pytest.raises(ValueError, match="unknown benchmark 'split_foo'") as err:
        make_benchmark("split_foo")
    assert all(name in str(err.value) for name in ALL_NAMES)
    with pytest.raises(ValueError, match="split_digits"):
        benchmark_info("nope")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(split="train"), "split must be one of"),
        (dict(seed=-1), "seed must be"),
        (dict(seed=1.5), "seed must be"),
        (dict(validation_fraction=0.0), "validation_fraction"),
        (dict(validation_fraction=1.0), "validation_fraction"),
        (dict(validation_fraction=True), "validation_fraction"),
        (dict(validation_fraction=0.001), "at least one sample of each"),
        (dict(n_tasks=6), "between 1 and 5"),
        (dict(n_tasks=0), "n_tasks must be"),
        (dict(train_limit=1), "train_limit must be"),
        (dict(eval_limit=2.5), "eval_limit must be"),
        (dict(batch_size=3), r"does not accept option\(s\) \['batch_size'\]"),
        (dict(download=False), r"does not accept option\(s\) \['download'\]"),
        (dict(permute_first=True), "does not accept"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_benchmark("split_digits", **kwargs)


def test_permuted_only_options_are_checked():
    with pytest.raises(ValueError, match="permute_first must be True or False"):
        make_benchmark("permuted_digits", permute_first="yes")
    assert benchmark_info("permuted_digits", n_tasks=7).classes_per_task == (10,) * 7


# ------------------------------------------------------------------------------------------
# split_digits
# ------------------------------------------------------------------------------------------


def test_split_digits_is_task_incremental_with_labels_from_zero(split_digits_test, digits_original):
    assert len(split_digits_test.train_stream) == 5
    assert len(split_digits_test.test_stream) == 5
    for stream in (split_digits_test.train_stream, split_digits_test.test_stream):
        for task, (experience, (x, y, t)) in enumerate(zip(stream, stream_arrays(stream), strict=True)):
            assert experience.task_label == task
            assert sorted(experience.classes_in_this_experience) == [0, 1]
            assert set(t.tolist()) == {task}
            assert set(y.tolist()) == {0, 1}
            assert x.dtype == torch.float32 and x.shape[1] == 64
            assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
            # Every sample is a real digit of class 2t + y.
            original = [digits_original[key] for key in digit_keys(x)]
            assert original == (2 * task + y).tolist()


def test_validation_is_carved_from_training_data(split_digits_test, split_digits_val):
    train = stream_arrays(split_digits_test.train_stream)
    train_in_val_mode = stream_arrays(split_digits_val.train_stream)
    val = stream_arrays(split_digits_val.test_stream)
    test = stream_arrays(split_digits_test.test_stream)
    sizes = [sum(len(y) for _, y, _ in part) for part in (train, val, test)]
    assert sizes == [N_DIGITS_TRAIN - N_DIGITS_VAL, N_DIGITS_VAL, N_DIGITS_TEST]
    for task in range(5):
        train_keys = set(digit_keys(train[task][0]))
        assert digit_keys(train_in_val_mode[task][0]) == digit_keys(train[task][0])
        val_keys = set(digit_keys(val[task][0]))
        test_keys = set(digit_keys(test[task][0]))
        assert len(train_keys) == len(train[task][0])  # no sample twice
        assert not train_keys & val_keys and not train_keys & test_keys and not val_keys & test_keys
        # Stratified: each class holds about 10 % of its training samples out.
        for label in (0, 1):
            n_val = int((val[task][1] == label).sum())
            n_all = n_val + int((train[task][1] == label).sum())
            assert abs(n_val - 0.1 * n_all) <= 1.5


def test_same_seed_same_data_different_seed_other_validation_same_test():
    def keys(bench):
        return [
            [digit_keys(x), y.tolist()]
            for stream in (bench.train_stream, bench.test_stream)
            for x, y, _ in stream_arrays(stream)
        ]

    first = keys(make_benchmark("split_digits", seed=5))
    again = keys(make_benchmark("split_digits", seed=5))
    other = keys(make_benchmark("split_digits", seed=6))
    assert first == again
    train_first, train_other = first[:5], other[:5]
    assert all(set(a[0]) != set(b[0]) for a, b in zip(train_first, train_other, strict=True))
    assert first[5:] == other[5:]  # the test split is fixed, whatever the seed
    val5 = keys(make_benchmark("split_digits", seed=5, split="validation"))[5:]
    val6 = keys(make_benchmark("split_digits", seed=6, split="validation"))[5:]
    assert val5 != val6


def test_train_and_eval_limits_cut_each_task_stratified():
    bench = make_benchmark("split_digits", train_limit=50, eval_limit=20, n_tasks=3)
    assert len(bench.train_stream) == 3 and len(bench.test_stream) == 3
    for _, y, _ in stream_arrays(bench.train_stream):
        assert len(y) == 50 and abs(int(y.sum()) - 25) <= 1
    for _, y, _ in stream_arrays(bench.test_stream):
        assert len(y) == 20 and int(y.sum()) == 10
    # A limit just below a task's size (nothing to stratify) still cuts exactly.
    sizes = [len(e.dataset) for e in make_benchmark("split_digits").train_stream]
    near = make_benchmark("split_digits", train_limit=max(sizes) - 1)
    assert [len(e.dataset) for e in near.train_stream] == [min(n, max(sizes) - 1) for n in sizes]
    a = [digit_keys(x) for x, _, _ in stream_arrays(bench.train_stream)]
    again = make_benchmark("split_digits", train_limit=50, n_tasks=3)
    assert a == [digit_keys(x) for x, _, _ in stream_arrays(again.train_stream)]


# ------------------------------------------------------------------------------------------
# permuted_digits
# ------------------------------------------------------------------------------------------


def test_permuted_digits_permutations_differ_and_keep_pixels(digits_original):
    bench = make_benchmark("permuted_digits", n_tasks=4, eval_limit=200)
    experiences = stream_arrays(bench.test_stream)
    assert [e.task_label for e in bench.test_stream] == [0, 1, 2, 3]
    assert [sorted(e.classes_in_this_experience) for e in bench.train_stream] == [list(range(10))] * 4
    x0, y0, _ = experiences[0]
    # Task 0 is the unpermuted data: real digits with their own labels.
    assert [digits_original[k] for k in digit_keys(x0)] == y0.tolist()
    columns0 = sorted(map(tuple, x0.T.tolist()))
    for task, (x, y, t) in enumerate(experiences[1:], start=1):
        assert set(t.tolist()) == {task}
        assert torch.equal(y, y0)  # the same samples in the same order, ...
        assert torch.equal(x.sort(dim=1).values, x0.sort(dim=1).values)  # ... pixels moved, ...
        assert sorted(map(tuple, x.T.tolist())) == columns0  # ... by one permutation of columns
        assert not torch.equal(x, x0)
        for other in experiences[1:task]:
            assert not torch.equal(x, other[0])
    # A shorter sequence is a prefix of a longer one; permute_first permutes task 0 too.
    short = stream_arrays(make_benchmark("permuted_digits", n_tasks=2, eval_limit=200).test_stream)
    assert torch.equal(short[1][0], experiences[1][0])
    first = stream_arrays(
        make_benchmark("permuted_digits", n_tasks=1, eval_limit=200, permute_first=True).test_stream
    )
    assert not torch.equal(first[0][0], x0)
    assert torch.equal(first[0][0].sort(dim=1).values, x0.sort(dim=1).values)


# ------------------------------------------------------------------------------------------
# Fashion-MNIST and MNIST files
# ------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not all((tensor_data.DEBIAN_FASHION_MNIST_DIR / f"{n}.gz").is_file() for n in MNIST_FILES),
    reason="Debian's dataset-fashion-mnist package is not installed",
)
def test_split_fmnist_imports_debian_files(tmp_path):
    bench = make_benchmark("split_fmnist", data_root=tmp_path, train_limit=40, eval_limit=30)
    raw = tmp_path / "FashionMNIST" / "raw"
    sizes = {name: (raw / name).stat().st_size for name in MNIST_FILES}
    assert sizes == {
        "train-images-idx3-ubyte": 16 + 60000 * 784,
        "train-labels-idx1-ubyte": 8 + 60000,
        "t10k-images-idx3-ubyte": 16 + 10000 * 784,
        "t10k-labels-idx1-ubyte": 8 + 10000,
    }
    with gzip.open(tensor_data.DEBIAN_FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz") as f:
        assert (raw / "t10k-labels-idx1-ubyte").read_bytes() == f.read()
    train = stream_arrays(bench.train_stream)
    test = stream_arrays(bench.test_stream)
    assert [len(y) for _, y, _ in train] == [40] * 5
    assert [len(y) for _, y, _ in test] == [30] * 5
    for task, (x, y, t) in enumerate(train):
        assert x.shape == (40, 784) and x.dtype == torch.float32
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) > 0.5
        assert set(y.tolist()) == {0, 1} and set(t.tolist()) == {task}
    # Once imported, the files are reused as they are.
    mtime = (raw / "train-images-idx3-ubyte").stat().st_mtime_ns
    make_benchmark("permuted_fmnist", data_root=tmp_path, n_tasks=2, train_limit=20, eval_limit=20)
    assert (raw / "train-images-idx3-ubyte").stat().st_mtime_ns == mtime


def test_fmnist_without_files_or_debian_package_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(tensor_data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    with pytest.raises(DatasetNotFoundError) as err:
        make_benchmark("split_fmnist", data_root=tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert all(name in message for name in MNIST_FILES)


def test_mnist_missing_without_network_gives_one_clear_error(tmp_path, monkeypatch):
    attempts = []

    def failing_download(self):
        attempts.append(self.root)
        raise RuntimeError(
            "Error downloading train-images-idx3-ubyte.gz:\n"
            "Tried https://ossci-datasets.s3.amazonaws.com/mnist/, got:\n"
            "<urlopen error [Errno -2] Name or service not known>"
        )

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", failing_download)
    with pytest.raises(DatasetNotFoundError) as err:
        make_benchmark("split_mnist", data_root=tmp_path)
    assert len(attempts) == 1
    assert isinstance(err.value, FileNotFoundError)
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert all(name in message for name in MNIST_FILES)
    assert "download failed: Error downloading train-images-idx3-ubyte.gz" in message
    assert err.value.__cause__ is None and err.value.__suppress_context__

    with pytest.raises(DatasetNotFoundError, match="download=False"):
        make_benchmark("permuted_mnist", data_root=tmp_path, download=False)
    assert len(attempts) == 1  # download=False never tries the network


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX format as in the MNIST files: magic (0, 0, 8 = uint8, ndim), big-endian sizes, data."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist_files(root: Path, train_x, train_y, test_x, test_y) -> None:
    """The four MNIST files, in IDX format, under ``root/MNIST/raw``."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte", train_x)
    write_idx(raw / "train-labels-idx1-ubyte", train_y)
    write_idx(raw / "t10k-images-idx3-ubyte", test_x)
    write_idx(raw / "t10k-labels-idx1-ubyte", test_y)


def test_mnist_reads_files_in_the_expected_folder(tmp_path):
    rng = np.random.default_rng(0)
    train_y = np.repeat(np.arange(10), 20)  # 200 training images, 20 per class
    test_y = np.repeat(np.arange(10), 3)
    train_x = rng.integers(0, 256, size=(200, 28, 28))
    train_x[:, 0, 0] = train_y * 20  # a pixel that names the class, to check the labels
    write_mnist_files(tmp_path, train_x, train_y, rng.integers(0, 256, size=(30, 28, 28)), test_y)

    bench = make_benchmark("split_mnist", data_root=tmp_path, download=False)
    train = stream_arrays(bench.train_stream)
    assert [len(y) for _, y, _ in train] == [2 * 18] * 5  # 2 of each class held out
    for task, (x, y, _) in enumerate(train):
        assert x.shape[1] == 784
        assert torch.allclose(x[:, 0] * 255, ((2 * task + y) * 20).float())
    assert [len(y) for _, y, _ in stream_arrays(bench.test_stream)] == [6] * 5
    permuted = make_benchmark("permuted_mnist", data_root=tmp_path, download=False, n_tasks=2)
    assert [len(e.dataset) for e in permuted.train_stream] == [180, 180]


@pytest.mark.parametrize("side", [8, 28, 9])
@pytest.mark.parametrize("degrees", [0.0, 18.0, 45.0, 90.0, 162.0, -30.0, 257.5])
def test_rotation_map_is_torchvision_rotate(side, degrees):
    image = torch.randint(1, 256, (1, side, side), dtype=torch.uint8)
    expected = TF.rotate(image, degrees)  # nearest neighbour, fill 0: Avalanche's RotatedMNIST
    padded = torch.cat((image.flatten(), torch.zeros(1, dtype=torch.uint8)))
    assert torch.equal(padded[rotation_map(side, degrees)], expected.flatten())


def test_rotated_mnist_turns_task_t_by_18_t_degrees_and_keeps_the_labels(tmp_path):
    rng = np.random.default_rng(1)  # pixels 1..255: no blank pixel of their own
    train_x, test_x = rng.integers(1, 256, size=(200, 28, 28)), rng.integers(1, 256, size=(30, 28, 28))
    write_mnist_files(tmp_path, train_x, np.repeat(np.arange(10), 20), test_x, np.repeat(np.arange(10), 3))
    bench = make_benchmark("rotated_mnist", data_root=tmp_path, download=False, n_tasks=4)
    train = stream_arrays(bench.train_stream)
    upright, labels, _ = train[0]
    assert upright.min() > 0  # task 0 as stored: no blank corner
    for task, (x, y, t) in enumerate(train):
        assert torch.equal(y, labels) and torch.all(t == task)
        turned = TF.rotate(upright.view(-1, 1, 28, 28), 18.0 * task)
        assert torch.equal(x, turned.view(-1, 784))
        assert (x == 0).any(dim=1).all() == (task > 0)
    test = stream_arrays(bench.test_stream)
    assert torch.equal(test[3][0], TF.rotate(test[0][0].view(-1, 1, 28, 28), 54.0).view(-1, 784))


def test_rotated_benchmarks_refuse_what_they_do_not_have(tmp_path):
    with pytest.raises(ValueError, match="permute_first"):
        make_benchmark("rotated_mnist", data_root=tmp_path, download=False, permute_first=True)
    with pytest.raises(ValueError, match="n_tasks"):
        benchmark_info("rotated_fmnist", n_tasks=11)  # 18 degrees apart: at most ten tasks


def test_a_pixel_map_outside_the_image_is_refused():
    images = torch.zeros(3, 4, dtype=torch.uint8)
    rows, targets = torch.arange(3), torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"pixel indices 0 \.\. 4 \(4: blank\)"):
        tensor_data.FlatImageDataset(images, targets, rows, scale=1.0, permutation=torch.tensor([0, 1, 2, 5]))
    negative = torch.tensor([-1, 1, 2, 3])
    with pytest.raises(ValueError, match="pixel indices"):
        tensor_data.FlatImageDataset(images, targets, rows, scale=1.0, permutation=negative)
