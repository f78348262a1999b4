"""The comparison command line runs the paper's CNN benchmarks end to end on generated stand-ins."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from standins import write_caltech101, write_cifar100, write_five_datasets

from benchmarks import image_data
from benchmarks import run as run_cli

# (benchmark, stand-in writer, extra flags, methods, tasks, input shape the model is built for)
CASES = {
    "five_datasets": (
        lambda root: write_five_datasets(root, 20, 5),
        ["--image-size", "16", "--train-limit", "20", "--batch-size", "10"],
        ("finetune", "spp"),
        5,
        (3, 16, 16),
    ),
    "split_cifar100": (  # 3 of the 20 tasks, 2 training images per class
        lambda root: write_cifar100(root, 10, 3),
        ["--n-tasks", "3", "--train-limit", "10", "--batch-size", "5"],
        ("sgd", "sgd_f"),
        3,
        (3, 32, 32),
    ),
    "split_caltech101": (  # ResNet-18 at 32x32; batches of 10 (no batch of 1 for BN's 1x1 map);
        lambda root: write_caltech101(root, images_per_class=4),  # SPP's per-sample Fisher on 10
        ["--image-size", "32", "--train-limit", "30", "--batch-size", "10", "--spp-importance-samples", "10"],
        ("sgd_f", "spp"),
        4,
        (3, 32, 32),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_cli_runs_cnn_benchmark_on_standins(tmp_path, name):
    torch.set_num_threads(1)
    write, flags, methods, n_tasks, input_shape = CASES[name]
    root, out = tmp_path / "data", tmp_path / "out"
    write(root)
    argv = ["--benchmark", name, "--data-root", str(root), "--methods", ",".join(methods), *flags]
    argv += ["--epochs", "1", "--seeds", "1", "--no-tune", "--quiet", "--threads", "1", "--out", str(out)]
    assert run_cli.main(argv) == 0

    assert (out / "report.md").read_text().count("\n") > 5
    assert (out / "metrics_over_tasks.png").exists()
    config = json.loads((out / "config.json").read_text())
    image_size = dict(zip(flags[::2], flags[1::2], strict=True)).get("--image-size")
    assert config["image_size"] == (None if image_size is None else int(image_size))
    for method in methods:
        record = json.loads((out / "runs" / f"{method}_seed0.json").read_text())
        matrix = np.array(record["accuracy_matrix"], dtype=float)
        assert matrix.shape == (n_tasks, n_tasks) and np.isfinite(matrix).all()
        assert ((0 <= matrix) & (matrix <= 1)).all()
        assert record["config"]["n_tasks"] == n_tasks
        assert record["config"]["input_shape"] == list(input_shape)  # the model's input size
        assert record["config"]["benchmark_options"].get("image_size") == config["image_size"]
        for metric in ("acc", "bwt", "smt"):
            assert math.isfinite(record["metrics"][metric]), metric
            assert len(record["metrics_after_each_task"][metric]) == n_tasks
        assert record["metrics"]["fwt"] is None  # no joint run
        assert record["metrics"]["acc"] == pytest.approx(matrix[-1].mean())
    assert not any((out / "checkpoints").glob("*.pt"))  # finished runs leave no checkpoint


# Folders each benchmark's missing-data message must name, under the data root.
EXPECTED_FOLDERS = {
    "five_datasets": (
        "MNIST/raw",
        "notMNIST_large",
        "notMNIST_small",
        "SVHN",
        "stl10_binary",
        "cifar-10-batches-py",
    ),
    "split_cifar100": ("cifar-100-python",),
    "split_caltech101": ("caltech101/101_ObjectCategories",),
}


@pytest.mark.parametrize("name", list(EXPECTED_FOLDERS))
def test_cli_missing_image_data_gives_a_clear_error(tmp_path, capsys, monkeypatch, name):
    def offline(data_root):  # as on a machine without network: the download fails
        raise OSError("network unreachable")

    for key, source in image_data._SOURCES.items():  # never download from a test
        if source.download is not None:
            monkeypatch.setitem(image_data._SOURCES, key, replace(source, download=offline))
    empty = tmp_path / "empty"
    argv = ["--benchmark", name, "--data-root", str(empty), "--methods", "sgd_f", "--no-tune"]
    code = run_cli.main(argv + ["--image-size", "32", "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 2
    message = capsys.readouterr().err
    assert message.startswith("error: ") and "docs/datasets.md" in message
    for folder in EXPECTED_FOLDERS[name]:
        assert str(empty / folder) in message, folder
    assert "Download failed: OSError: network unreachable" in message
    if name == "five_datasets":  # notMNIST has no automatic download
        assert "cannot be downloaded automatically" in message


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--benchmark", "split_digits", "--image-size", "16"], "split_digits is an MLP benchmark"),
        (["--benchmark", "split_fmnist", "--image-size", "28"], "split_fmnist is an MLP benchmark"),
        (["--benchmark", "five_datasets", "--image-size", "0"], "must be a positive integer"),
        (["--benchmark", "split_cifar100", "--image-size", "-32"], "must be a positive integer"),
        (["--benchmark", "split_cifar100", "--image-size", "4"], "the minimum is 8"),
        (["--benchmark", "split_caltech101", "--image-size", "16"], "the minimum is 32"),
        (["--benchmark", "split_cifar100", "--n-tasks", "21"], "between 1 and 20"),
    ],
)
def test_cli_refuses_image_sizes_and_task_counts_that_do_not_fit(tmp_path, capsys, flags, expected):
    with pytest.raises(SystemExit) as exit_info:
        run_cli.main([*flags, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_image_size_is_saved_and_reloaded_with_the_config(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"benchmark": "split_caltech101", "image_size": 64}))
    config = run_cli.parse_args(["--config", str(path)])
    assert config.image_size == 64 and config.benchmark_options() == {"image_size": 64}
    assert run_cli.parse_args(["--benchmark", "split_cifar100"]).benchmark_options() == {}
