"""The comparison command line runs the paper's CNN benchmarks end to end on generated stand-ins."""

from __future__ import annotations

import json

import pytest
import torch
from standins import write_cifar100, write_five_datasets

from benchmarks import run as run_cli


@pytest.mark.parametrize("name", ["five_datasets", "split_cifar100"])
def test_cli_runs_cnn_benchmark_on_standins(tmp_path, name):
    torch.set_num_threads(1)
    root = tmp_path / "data"
    if name == "five_datasets":
        write_five_datasets(root, 20, 5)
        limit, methods = "20", "sgd_f,spp"
    else:  # 20 tasks: one method keeps the test short
        write_cifar100(root, 10, 3)
        limit, methods = "5", "spp"
    out = tmp_path / "out"
    argv = [
        "--benchmark",
        name,
        "--data-root",
        str(root),
        "--methods",
        methods,
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--train-limit",
        limit,
        "--no-tune",
        "--lam",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]
    assert run_cli.main(argv) == 0
    record = json.loads((out / "runs" / "spp_seed0.json").read_text())
    n_tasks = 5 if name == "five_datasets" else 20
    assert len(record["accuracy_matrix"]) == n_tasks
    assert len(record["metrics_after_each_task"]["acc"]) == n_tasks
    assert (out / "metrics_over_tasks.png").exists()


def test_cli_missing_image_data_gives_a_clear_error(tmp_path, capsys):
    code = run_cli.main(
        [
            "--benchmark",
            "split_cifar100",
            "--data-root",
            str(tmp_path / "empty"),
            "--methods",
            "sgd_f",
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    assert code == 2
    message = capsys.readouterr().err
    assert "cifar-100" in message.lower() and str(tmp_path / "empty") in message
