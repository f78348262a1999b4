"""Bad input gets clear answers: every row of ``docs/robustness.md`` is checked here.

Each test feeds one kind of bad input to a public entry point, as a new user might, and checks the
error class and a phrase of the message that says what is allowed or what to do. Command lines are
called in-process (``main([...])``) and must exit with status 2 and a one-line ``error: ...``.
"""

from __future__ import annotations

import gzip
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision
from avalanche.benchmarks import dataset_benchmark
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.training import Naive
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from avalanche_spp import SPPPlugin
from avalanche_spp.importance import DivergedError, entropy_importance
from avalanche_spp.penalty import spp_penalty
from benchmarks import run as run_cli
from benchmarks import sweep as sweep_cli
from benchmarks import tensor_data
from benchmarks.baselines import TrainConfig, build_strategy
from benchmarks.errors import DatasetCorruptError, DatasetNotFoundError
from benchmarks.experiment import run_method
from benchmarks.image_files import read_idx
from benchmarks.streams import check_benchmark_options, make_benchmark
from benchmarks.tensor_data import MNIST_FILES
from generative import config as config_module
from generative import sequence, vae_sequence

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "robustness.md"
TINY_RUN = [
    "--benchmark", "split_digits", "--methods", "sgd", "--n-tasks", "2", "--epochs", "1",
    "--hidden", "8", "--train-limit", "20", "--eval-limit", "20", "--no-tune", "--quiet",
]  # fmt: skip
TINY_SWEEP = [
    "--benchmark", "split_digits", "--lams", "0", "--n-tasks", "2", "--epochs", "1",
    "--train-limit", "20", "--eval-limit", "20", "--quiet",
]  # fmt: skip


def _exit_code(main, argv: list[str]) -> int:
    """``main(argv)``'s status, whether it returns it or exits through ``parser.error``."""
    try:
        return main(argv)
    except SystemExit as exit_info:
        return exit_info.code


def _error_line(capsys) -> str:
    """The last line on stderr, which must be the one-line ``error: ...``."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines, "nothing on stderr"
    assert "error: " in lines[-1] and "Traceback" not in "\n".join(lines)
    return lines[-1]


def _linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(4, 3)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX as in the MNIST files: magic (0, 0, 8 = uint8, ndim), big-endian sizes, data."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist_files(root: Path, class_name: str) -> Path:
    """A small, valid MNIST-format data set (200 train, 30 test images) under ``root/<class>/raw``."""
    rng = np.random.default_rng(0)
    raw = root / class_name / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, size=(200, 28, 28)))
    _write_idx(raw / "train-labels-idx1-ubyte", np.repeat(np.arange(10), 20))
    _write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, size=(30, 28, 28)))
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.repeat(np.arange(10), 3))
    return raw


def _truncate(path: Path, size: int = 5000) -> None:
    path.write_bytes(path.read_bytes()[:size])


# ------------------------------------------------------------------------------------------
# avalanche_spp.importance
# ------------------------------------------------------------------------------------------


def test_importance_refuses_a_model_that_is_not_a_module():
    with pytest.raises(ValueError, match="model must be a torch.nn.Module, got str"):
        entropy_importance("model.pt", [torch.randn(5, 4)])


def test_importance_refuses_a_single_tensor_as_batches():
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match=r"got a single tensor of shape \(10, 4\).*wrap it in a list: \[x\]"):
        entropy_importance(_linear(), x)
    omega = entropy_importance(_linear(), [x])  # the fix the message names works
    assert set(omega) == {"weight", "bias"}


@pytest.mark.parametrize("batches", [5, "x.pt", {"x": torch.randn(3, 4)}])
def test_importance_refuses_batches_that_are_not_iterable(batches):
    with pytest.raises(ValueError, match="batches must be an iterable of input batches"):
        entropy_importance(_linear(), batches)


def test_importance_refuses_labelled_pairs():
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    for batches in ([(x, y)], loader):
        with pytest.raises(ValueError, match="Labels must not be part of an item") as err:
            entropy_importance(_linear(), batches)
        assert "(x for x, *_ in loader)" in str(err.value)
    exact = {"clamp": "experience", "fisher": "per_sample"}  # batch-size free: 2 batches of 5 == 1 of 10
    unlabelled = entropy_importance(_linear(), (x for x, *_ in loader), **exact)
    torch.testing.assert_close(unlabelled["weight"], entropy_importance(_linear(), [x], **exact)["weight"])


def test_importance_refuses_zero_samples():
    for batches in ([], [torch.randn(0, 4)], DataLoader(TensorDataset(torch.randn(0, 4)), batch_size=4)):
        with pytest.raises(ValueError, match="no input sample to measure importance on"):
            entropy_importance(_linear(), batches)


def test_importance_refuses_a_diverged_model():
    nan_model = _linear()
    with torch.no_grad():
        nan_model.weight[0, 0] = float("nan")
    for model, x in ((nan_model, torch.randn(4, 4)), (_linear(), torch.full((4, 4), float("inf")))):
        with pytest.raises(DivergedError, match="NaN or Inf values.*diverged model"):
            entropy_importance(model, [x])
    assert issubclass(DivergedError, ValueError)


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf"), True, "1"])
def test_variant_plugin_refuses_bad_beta(beta):
    from benchmarks.spp_variants import SPPVariantPlugin

    with pytest.raises(ValueError, match="beta must be a positive number"):
        SPPVariantPlugin(normalize="softmax", beta=beta)


def test_penalty_refuses_arguments_that_are_not_lists_of_tensors():
    w, a, o = torch.zeros(2, requires_grad=True), torch.ones(2), torch.ones(2)
    with pytest.raises(ValueError, match="params must be a list or tuple of tensors.*got Tensor"):
        spp_penalty(w, a, o)
    with pytest.raises(ValueError, match="anchors must be a list or tuple of tensors.*got dict"):
        spp_penalty([w], {"w": a}, [o])
    with pytest.raises(ValueError, match=r"omegas must hold tensors only, got entries of type \['float'\]"):
        spp_penalty([w], [a], [1.0])
    assert spp_penalty([w], [a], [o]).item() == pytest.approx(2.0)


# ------------------------------------------------------------------------------------------
# avalanche_spp.SPPPlugin
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [-1.0, float("nan"), float("inf"), -float("inf"), "1", True, None])
def test_plugin_refuses_a_bad_strength(lam):
    with pytest.raises(ValueError, match=r"lam \(the penalty strength lambda\) must be a finite number >= 0"):
        SPPPlugin(lam=lam)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": True}, "seed must be an int"),
        ({"seed": 1.5}, "seed must be an int"),
        ({"importance_samples": 0}, "importance_samples must be a positive int or None"),
        ({"importance_batch_size": -8}, "importance_batch_size must be a positive int"),
        ({"fisher": "empirical"}, r"fisher must be one of \['per_sample', 'batch'\]"),
    ],
)
def test_plugin_refuses_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SPPPlugin(**kwargs)


def _naive(model: nn.Module, plugin: SPPPlugin) -> Naive:
    return Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=8,
        train_epochs=1,
        eval_mb_size=8,
        plugins=[plugin],
        evaluator=None,
    )


def _one_experience(n_samples: int):
    torch.manual_seed(0)
    x, y = torch.randn(20, 4), torch.arange(20) % 3
    data = _make_taskaware_tensor_classification_dataset(x[:n_samples], y[:n_samples])
    return dataset_benchmark([data], [data]).train_stream[0]


def test_plugin_refuses_an_empty_experience():
    plugin = SPPPlugin()
    with pytest.raises(ValueError, match="experience 0 has no training sample"):
        _naive(_linear(), plugin).train(_one_experience(0))  # before Avalanche's bare IndexError
    empty = SimpleNamespace(dataset=TensorDataset(torch.randn(0, 4)), current_experience=3)
    with pytest.raises(ValueError, match="experience 3 has no training sample"):
        plugin.after_training_exp(SimpleNamespace(model=_linear(), experience=empty))
    assert plugin.omega == {} and plugin.anchor == {}


def test_plugin_refuses_a_model_without_trainable_parameters():
    frozen = _linear().requires_grad_(False)
    with pytest.raises(ValueError, match="SPPPlugin: the model has no trainable parameter"):
        _naive(frozen, SPPPlugin()).train(_one_experience(20))
    assert SPPPlugin().penalty(nn.ReLU()).item() == 0.0  # no parameter at all: a zero penalty


def test_plugin_refuses_a_shrunk_parameter():
    plugin = SPPPlugin()
    plugin.update(nn.Linear(3, 4), {"weight": torch.ones(4, 3), "bias": torch.ones(4)})
    message = r"changed shape from \(4, 3\) to \(2, 3\).*only follows layers that grow"
    with pytest.raises(ValueError, match=message):
        plugin.penalty_terms(nn.Linear(3, 2))


def test_plugin_refuses_a_grown_input_dimension():
    plugin = SPPPlugin(scale="raw")  # the importance as stored, to check the padding by value
    plugin.update(nn.Linear(3, 4), {"weight": torch.ones(4, 3), "bias": torch.ones(4)})
    message = r"changed shape from \(4, 3\) to \(4, 5\): only its first \(output\) dimension may grow"
    with pytest.raises(ValueError, match=message):
        plugin.penalty_terms(nn.Linear(5, 4))
    with pytest.raises(ValueError, match=message):
        plugin.update(nn.Linear(5, 4), {"weight": torch.ones(4, 5), "bias": torch.ones(4)})
    assert plugin.omega["weight"].shape == (4, 3)  # nothing was zero-padded on the way
    grown = plugin.penalty_terms(nn.Linear(3, 6))[2][0]  # new output rows: allowed, and free
    assert grown.shape == (6, 3) and grown[4:].abs().sum() == 0 and grown[:4].min() == 1


def test_plugin_refuses_a_diverged_model_and_keeps_its_state():
    model = _linear()
    plugin = SPPPlugin()
    data = TensorDataset(torch.randn(8, 4), torch.zeros(8))
    experience = SimpleNamespace(dataset=data, current_experience=0)
    plugin.after_training_exp(SimpleNamespace(model=model, experience=experience))
    before = {n: t.clone() for n, t in plugin.omega.items()}
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    with pytest.raises(DivergedError, match="NaN or Inf"):
        plugin.after_training_exp(SimpleNamespace(model=model, experience=experience))
    assert all(torch.equal(plugin.omega[n], before[n]) for n in before)
    assert len(plugin.importance_time_s) == 1


@pytest.mark.parametrize(
    ("omega", "anchor", "message"),
    [
        (torch.tensor([float("nan")]), torch.zeros(1), "negative, NaN or Inf"),
        (torch.tensor([-1.0]), torch.zeros(1), "negative, NaN or Inf"),
        (torch.ones(2), torch.zeros(3), r"omega \(2,\) and anchor \(3,\) of 'w' differ in shape"),
        (torch.ones(1), torch.tensor([float("inf")]), "the anchor of 'w' is not finite"),
    ],
)
def test_plugin_load_state_dict_refuses_corrupt_importance(omega, anchor, message):
    with pytest.raises(ValueError, match="corrupt SPPPlugin state: .*" + message):
        SPPPlugin().load_state_dict({"lam": 1.0, "omega": {"w": omega}, "anchor": {"w": anchor}})


# ------------------------------------------------------------------------------------------
# benchmarks.baselines
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be a positive int"),
        ({"epochs": 1.5}, "epochs must be a positive int"),
        ({"batch_size": True}, "batch_size must be a positive int"),
        ({"lr": float("nan")}, "lr must be a finite number > 0"),
        ({"lr": float("inf")}, "lr must be a finite number > 0"),
        ({"momentum": float("nan")}, r"momentum must be in \[0, 1\)"),
        ({"hidden": (0,)}, "hidden must be a non-empty tuple of positive ints"),
        ({"hidden": 256}, "hidden must be a non-empty tuple of positive ints"),
        ({"device": "gpu"}, "device must be a torch device such as 'cpu'"),
        ({"device": 0}, "device must be a torch device"),
        ({"spp_fisher": "full"}, r"spp_fisher must be one of \['per_sample', 'batch'\]"),
        ({"spp_accumulate": "mean"}, r"spp_accumulate must be one of \['sum', 'max'\]"),
        ({"spp_importance_samples": 0}, "spp_importance_samples must be a positive int or None"),
        ({"spp_importance_batch_size": 0}, "spp_importance_batch_size must be a positive int"),
        ({"spp_auto_drop": 1.0}, r"spp_auto_drop must be None or a number in \[0, 1\)"),
        ({"spp_auto_drop": True}, r"spp_auto_drop must be None or a number in \[0, 1\)"),
        ({"spp_auto_monotone": "yes"}, "spp_auto_monotone must be True or False"),
    ],
)
def test_train_config_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_build_strategy_refuses_bad_arguments():
    model, config = _linear(), TrainConfig(epochs=1)
    for strength in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="spp strength must be finite and >= 0"):
            build_strategy("spp", model, config, strength=strength)
    for strength in ("10", True):
        with pytest.raises(ValueError, match="spp strength must be a number"):
            build_strategy("spp", model, config, strength=strength)
    with pytest.raises(ValueError, match="finetune has no strength to tune"):
        build_strategy("finetune", model, config, strength=1.0)
    with pytest.raises(ValueError, match="model must be a torch.nn.Module, got str"):
        build_strategy("spp", "mlp", config)
    message = r"config must be a TrainConfig \(e.g. TrainConfig\(epochs=1\)\), got dict"
    with pytest.raises(ValueError, match=message):
        build_strategy("spp", model, {"epochs": 1})
    with pytest.raises(ValueError, match="method must be one of"):
        build_strategy("SPP", model, config)


def test_stability_decay_refuses_a_checkpoint(tmp_path):
    config = TrainConfig(epochs=1, spp_auto_drop=0.02)
    with pytest.raises(ValueError, match="spp_auto_drop .* not in checkpoints: run it without checkpoint"):
        run_method("spp", benchmark="split_digits", seed=0, train=config, checkpoint=tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()


# ------------------------------------------------------------------------------------------
# benchmarks.streams (and the image readers)
# ------------------------------------------------------------------------------------------


def test_benchmark_options_are_checked_without_loading_data():
    for kwargs, message in (
        ({"n_tasks": 0}, "n_tasks must be None or an int >= 1"),
        ({"n_tasks": 6}, "n_tasks must be between 1 and 5"),
        ({"train_limit": 0}, r"train_limit must be None or an int >= 2 \(one sample per class"),
        ({"eval_limit": -3}, "eval_limit must be None or an int >= 2"),
        ({"train_limit": "100"}, "train_limit must be None or an int >= 2"),
        ({"batch_size": 8}, r"does not accept option\(s\) \['batch_size'\]"),
    ):
        with pytest.raises(ValueError, match=message):
            check_benchmark_options("split_fmnist", **kwargs)
    assert check_benchmark_options("split_fmnist", n_tasks=2, train_limit=10).n_tasks == 2


def test_make_benchmark_refuses_a_data_root_that_is_not_a_folder(tmp_path):
    with pytest.raises(ValueError, match="data_root must be a folder path"):
        make_benchmark("split_fmnist", data_root=5)
    a_file = tmp_path / "fmnist.zip"
    a_file.write_bytes(b"PK")
    message = f"data_root {re.escape(str(a_file))} is a file, not a folder"
    with pytest.raises(DatasetNotFoundError, match=message):
        make_benchmark("split_fmnist", data_root=a_file, download=False)
    make_benchmark("split_digits", data_root=a_file, n_tasks=1, train_limit=10)  # embedded: not read


def _corrupt(raw: Path, how: str) -> str:
    """Damage the files in ``raw``; returns the name of the file the error must name."""
    images = raw / "train-images-idx3-ubyte"
    if how == "truncated":
        _truncate(images)
    elif how == "empty":
        images.write_bytes(b"")
    elif how == "html":
        images.write_bytes(b"<html><body>404 Not Found</body></html>")
    elif how == "gzipped":
        images.write_bytes(gzip.compress(images.read_bytes()))
    elif how == "labels_short":
        _write_idx(raw / "train-labels-idx1-ubyte", np.repeat(np.arange(10), 10))
    return "train-labels-idx1-ubyte" if how == "labels_short" else str(images)


@pytest.mark.parametrize("class_name", ["FashionMNIST", "MNIST"])
@pytest.mark.parametrize("how", ["truncated", "empty", "html", "gzipped", "labels_short"])
def test_corrupt_mnist_files_raise_dataset_corrupt_error(tmp_path, class_name, how):
    raw = _write_mnist_files(tmp_path, class_name)
    name = "split_fmnist" if class_name == "FashionMNIST" else "split_mnist"
    make_benchmark(name, data_root=tmp_path, n_tasks=1, train_limit=10, eval_limit=4)  # intact: loads
    named = _corrupt(raw, how)
    with pytest.raises(DatasetCorruptError) as err:
        make_benchmark(name, data_root=tmp_path, n_tasks=1, download=False)
    message = str(err.value)
    assert named in message and "Delete" in message and "the next run" in message
    assert not isinstance(err.value, DatasetNotFoundError)


def test_corrupt_debian_archive_raises_dataset_corrupt_error(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    debian.mkdir()
    for name in MNIST_FILES:
        (debian / f"{name}.gz").write_bytes(gzip.compress(b"\x00" * 64)[:20])  # a cut-off download
    monkeypatch.setattr(tensor_data, "DEBIAN_FASHION_MNIST_DIR", debian)
    message = "cannot decompress .*train-images-idx3-ubyte.gz.*reinstall"
    with pytest.raises(DatasetCorruptError, match=message):
        make_benchmark("split_fmnist", data_root=tmp_path / "data", download=False)
    assert not list((tmp_path / "data").rglob("*.partial"))  # no half-written file left behind


def test_image_idx_reader_raises_dataset_corrupt_error(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    _write_idx(path, np.zeros((10, 28, 28)))
    _truncate(path, 200)
    message = r"header says shape \[10, 28, 28\].*\(truncated\?\)\. Delete it"
    with pytest.raises(DatasetCorruptError, match=message):
        read_idx(path)
    path.write_bytes(b"<html>")
    with pytest.raises(DatasetCorruptError, match="bad magic number"):
        read_idx(path)


# ------------------------------------------------------------------------------------------
# python -m benchmarks.run
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--threads", "0", "--threads must be a positive number of CPU threads"),
        ("--threads", "-2", "--threads must be a positive number of CPU threads"),
        ("--n-tasks", "0", "n_tasks must be None or an int >= 1"),
        ("--n-tasks", "-1", "n_tasks must be None or an int >= 1"),
        ("--train-limit", "0", "train_limit must be None or an int >= 2"),
        ("--eval-limit", "-5", "eval_limit must be None or an int >= 2"),
        ("--epochs", "0", "epochs must be a positive int"),
        ("--batch-size", "-1", "batch_size must be a positive int"),
        ("--seeds", "0", "--seeds must be a positive number of seeds"),
        ("--seed-list", "-1", r"seeds must be ints in \[0, 2\*\*32\)"),
        ("--spp-importance-samples", "0", "spp_importance_samples must be a positive int"),
    ],
)
def test_run_cli_refuses_non_positive_counts(tmp_path, capsys, flag, value, message):
    argv = [*TINY_RUN, "--out", str(tmp_path / "out"), flag, value]
    assert _exit_code(run_cli.main, argv) == 2
    assert re.search(message, _error_line(capsys))
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "-inf"])
def test_run_cli_refuses_bad_strengths(tmp_path, capsys, value):
    for extra in (f"--lam={value}", f"--strength=ewc={value}"):
        assert _exit_code(run_cli.main, [*TINY_RUN, "--out", str(tmp_path / "o"), extra]) == 2
        assert "must be a finite number >= 0" in _error_line(capsys)
    assert _exit_code(run_cli.main, [*TINY_RUN, "--out", str(tmp_path / "o"), f"--grid=spp=1,{value}"]) == 2
    assert "strengths must be finite numbers >= 0" in _error_line(capsys)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ('"tune": "no"', "tune must be true or false, got 'no'"),
        ('"quiet": 1', "quiet must be true or false"),
        ('"keep_optimizer_state": "yes"', "keep_optimizer_state must be true or false"),
        ('"train_limit": "10"', "train_limit must be an integer"),
        ('"epochs": 1.5', "epochs must be an integer"),
        ('"lr": "0.1"', "lr must be a number"),
        ('"hidden": 8', "hidden must be a comma-separated string or a list"),
        ('"methods": 5', "methods must be a comma-separated string or a list"),
        ('"seeds": [0, "a"]', "seeds must be a number of seeds or a non-empty list of int seeds"),
        ('"seeds": [-1]', r"seeds must be ints in \[0, 2\*\*32\)"),
        ('"out": 5', "out must be a string"),
        ('"device": "gpu"', "device must be a torch device"),
        ('"strengths": {"spp": "a"}', "the strength of spp must be a finite number >= 0"),
        ('"strengths": {"sgd": 1}', "'sgd' has no strength"),
        ('"strengths": [["spp"]]', "strengths must be an object"),
        ('"grids": {"spp": [1, "a"]}', r"grids: spp=\[1, 'a'\]"),
        ('"spp_fisher": "full"', r"spp_fisher must be one of \['per_sample', 'batch'\]"),
        ('"threads": 0', "--threads must be a positive number"),
    ],
)
def test_run_cli_refuses_config_values_of_the_wrong_type(tmp_path, monkeypatch, capsys, setting, message):
    monkeypatch.chdir(tmp_path)  # the default --out is relative: keep it out of the repository
    config = tmp_path / "config.json"
    config.write_text(f'{{"benchmark": "split_digits", "methods": "sgd", "n_tasks": 2, {setting}}}')
    assert _exit_code(run_cli.main, ["--config", str(config)]) == 2
    assert re.search(message, _error_line(capsys))
    assert not (tmp_path / "runs").exists()


def test_run_cli_refuses_bad_config_files(tmp_path, capsys):
    config = tmp_path / "config.json"
    for content, message in (
        (None, "no such file"),
        ("{'epochs': 1}", "not valid JSON"),
        ("[1, 2]", "must hold a JSON object of settings"),
        ('{"epoch": 1}', "unknown settings ['epoch']; known:"),
    ):
        if content is not None:
            config.write_text(content)
        assert _exit_code(run_cli.main, ["--config", str(config)]) == 2
        line = _error_line(capsys)
        assert f"--config {config}: " in line and message in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_run_cli_refuses_cuda_without_a_gpu(tmp_path, capsys):
    assert _exit_code(run_cli.main, [*TINY_RUN, "--out", str(tmp_path / "o"), "--device", "cuda"]) == 2
    assert "torch.cuda.is_available() is False" in _error_line(capsys)


def test_run_cli_never_overwrites_results_without_force(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "sgd_seed0.json").write_text('{"old": true}')
    assert _exit_code(run_cli.main, [*TINY_RUN, "--out", str(out)]) == 2
    message = "already holds results. Pass --resume to continue it, --force to overwrite it"
    assert message in _error_line(capsys)
    assert (out / "runs" / "sgd_seed0.json").read_text() == '{"old": true}'
    assert _exit_code(run_cli.main, [*TINY_RUN, "--out", str(out), "--force", "--resume"]) == 2
    assert "not both" in _error_line(capsys)
    assert _exit_code(run_cli.main, [*TINY_RUN, "--out", str(out), "--force"]) == 0
    assert '"old"' not in (out / "runs" / "sgd_seed0.json").read_text()
    a_file = tmp_path / "results.txt"
    a_file.write_text("x")
    assert _exit_code(run_cli.main, [*TINY_RUN, "--out", str(a_file)]) == 2
    assert "is a file; give a folder" in _error_line(capsys)


def test_run_cli_keep_optimizer_state_reaches_the_runs_and_a_folder_from_before_the_flag_resumes(tmp_path):
    import json

    out = tmp_path / "out"
    assert _exit_code(run_cli.main, [*TINY_RUN, "--out", str(out), "--keep-optimizer-state"]) == 0
    assert (
        json.loads((out / "runs" / "sgd_seed0.json").read_text())["config"]["train"]["reset_optimizer"]
        is False
    )
    assert _exit_code(run_cli.main, [*TINY_RUN, "--out", str(out), "--resume"]) == 2  # a different protocol
    saved = json.loads((out / "config.json").read_text())
    del saved["keep_optimizer_state"]  # as written before the setting existed: its default, False
    (out / "config.json").write_text(json.dumps(saved))
    assert _exit_code(run_cli.main, [*TINY_RUN, "--out", str(out), "--resume"]) == 0
    assert _exit_code(run_cli.main, [*TINY_RUN, "--out", str(out), "--resume", "--keep-optimizer-state"]) == 2


def test_run_cli_single_head_reaches_the_runs_and_a_folder_from_before_the_flag_resumes(tmp_path):
    import json

    out, tiny = tmp_path / "out", [*TINY_RUN, "--methods", "finetune"]  # finetune: one head per task
    assert _exit_code(run_cli.main, [*tiny, "--out", str(out)]) == 0
    record = json.loads((out / "runs" / "finetune_seed0.json").read_text())
    assert record["config"]["train"]["single_head"] is False
    assert _exit_code(run_cli.main, [*tiny, "--out", str(out), "--resume", "--single-head"]) == 2
    saved = json.loads((out / "config.json").read_text())
    del saved["single_head"]  # as written before the setting existed: its default, off
    (out / "config.json").write_text(json.dumps(saved))
    assert _exit_code(run_cli.main, [*tiny, "--out", str(out), "--resume"]) == 0
    shared = tmp_path / "shared"
    assert _exit_code(run_cli.main, [*tiny, "--out", str(shared), "--single-head"]) == 0
    record = json.loads((shared / "runs" / "finetune_seed0.json").read_text())
    assert record["config"]["train"]["single_head"] is True


def _offline(monkeypatch, tmp_path):
    """No Debian package and no network for torchvision's downloads."""

    def no_network(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: <urlopen error no network>")

    monkeypatch.setattr(tensor_data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", no_network)


def test_run_cli_missing_data_names_the_folder_and_files(tmp_path, monkeypatch, capsys):
    _offline(monkeypatch, tmp_path)
    data = tmp_path / "data"
    argv = [*TINY_RUN, "--benchmark", "split_fmnist", "--data-root", str(data), "--out", str(tmp_path / "o")]
    assert _exit_code(run_cli.main, argv) == 2
    line = _error_line(capsys)
    assert line.startswith("error: FashionMNIST not found: the folder ")
    assert str(data / "FashionMNIST" / "raw") in line and all(name in line for name in MNIST_FILES)


def test_run_cli_corrupt_data_is_a_clear_error(tmp_path, monkeypatch, capsys):
    _offline(monkeypatch, tmp_path)
    raw = _write_mnist_files(tmp_path / "data", "FashionMNIST")
    _truncate(raw / "train-images-idx3-ubyte")
    argv = [*TINY_RUN, "--benchmark", "split_fmnist", "--data-root", str(tmp_path / "data")]
    assert _exit_code(run_cli.main, [*argv, "--out", str(tmp_path / "o")]) == 2
    line = _error_line(capsys)
    assert f"error: FashionMNIST file {raw / 'train-images-idx3-ubyte'} is corrupt" in line
    assert f"Delete {raw / 'train-images-idx3-ubyte'}: the next run imports it again" in line


# ------------------------------------------------------------------------------------------
# python -m benchmarks.sweep
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--threads", "0", "--threads must be a positive number of CPU threads"),
        ("--n-tasks", "0", "n_tasks must be None or an int >= 1"),
        ("--train-limit", "0", "train_limit must be None or an int >= 2"),
        ("--eval-limit", "-1", "eval_limit must be None or an int >= 2"),
        ("--epochs", "0", "epochs must be a positive int"),
        ("--seeds", "0", "--seeds must be >= 1"),
        ("--lams", "1,nan", "--lams must be finite numbers >= 0"),
        ("--lams", "inf", "--lams must be finite numbers >= 0"),
        ("--lams", "-1", "--lams must be finite numbers >= 0"),
        ("--device", "gpu", "device must be a torch device"),
    ],
)
def test_sweep_cli_refuses_non_positive_counts(tmp_path, capsys, flag, value, message):
    argv = [*TINY_SWEEP, "--out", str(tmp_path / "out"), f"{flag}={value}"]
    assert _exit_code(sweep_cli.main, argv) == 2
    assert message in _error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_sweep_cli_never_overwrites_results_without_force(tmp_path, capsys):
    out = tmp_path / "sweep"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "spp_0_seed0.json").write_text('{"old": true}')
    assert _exit_code(sweep_cli.main, [*TINY_SWEEP, "--out", str(out)]) == 2
    assert "already holds results (1 files). Pass --resume to continue it, --force" in _error_line(capsys)
    assert (out / "runs" / "spp_0_seed0.json").read_text() == '{"old": true}'
    assert _exit_code(sweep_cli.main, [*TINY_SWEEP, "--out", str(out), "--force", "--resume"]) == 2
    assert "not allowed with argument" in _error_line(capsys)
    assert _exit_code(sweep_cli.main, [*TINY_SWEEP, "--out", str(out), "--force"]) == 0
    assert '"old"' not in (out / "runs" / "spp_0_seed0.json").read_text()
    assert (out / "sweep.json").exists()


# ------------------------------------------------------------------------------------------
# python -m generative.vae_sequence
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--threads", "-1", "num_workers and threads must be >= 0"),
        ("--epochs", "0", "epochs must be a positive int"),
        ("--batch-size", "0", "batch_size must be a positive int"),
        ("--max-train", "0", "max_train must be an int >= 2 (images per domain) or None"),
        ("--max-test", "1", "max_test must be an int >= 2 (images per domain) or None"),
        ("--lam", "inf", "lam must be one or more values > 0 (finite SPP strengths"),
        ("--lam", "nan", "lam must be one or more values > 0"),
        ("--lr", "inf", "lr must be a finite number > 0"),
        ("--lr", "nan", "lr must be a finite number > 0"),
    ],
)
def test_vae_cli_refuses_bad_counts_and_strengths(tmp_path, capsys, flag, value, message):
    argv = ["--domains", "digits,fmnist", "--out", str(tmp_path / "out"), "--fid-fallback", f"{flag}={value}"]
    assert _exit_code(vae_sequence.main, argv) == 2
    assert message in _error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_vae_cli_never_overwrites_results_without_force(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    config = config_module.SequenceConfig(domains=("digits", "fmnist"), out=str(out))
    with pytest.raises(config_module.UsageError, match="already holds results .*pass --resume .*--force"):
        sequence.prepare_run_dir(config)
    assert (out / "metrics.json").exists()
    forced = config_module.SequenceConfig(domains=("digits", "fmnist"), out=str(out), force=True)
    sequence.prepare_run_dir(forced)
    assert not (out / "metrics.json").exists()


def test_vae_cli_corrupt_fmnist_file_is_a_clear_error(tmp_path, caplog):
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / "train-images-idx3-ubyte", np.zeros((10, 28, 28)))
    _truncate(raw / "train-images-idx3-ubyte", 300)
    argv = [
        "--domains", "fmnist,digits", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
        "--fid-fallback", "--quiet",
    ]  # fmt: skip
    with caplog.at_level(logging.ERROR):
        assert vae_sequence.main(argv) == 2
    assert f"{raw / 'train-images-idx3-ubyte'}: expected 7856 bytes for 10 images, got 300" in caplog.text
    assert "Delete or replace the file" in caplog.text
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------
# The table itself
# ------------------------------------------------------------------------------------------


def test_every_row_of_the_table_names_a_test_that_exists():
    table = DOC.read_text(encoding="utf-8")
    named = re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)`", table)
    assert len(named) >= 30
    for path, test in named:
        source = (ROOT / path).read_text(encoding="utf-8")
        assert re.search(rf"^def {test}\(", source, re.MULTILINE), f"{path}::{test} is named in {DOC.name}"
    here = set(re.findall(r"^def (test_\w+)\(", Path(__file__).read_text(encoding="utf-8"), re.MULTILINE))
    unlisted = here - {test for path, test in named if path == "tests/test_robustness.py"}
    assert not unlisted, f"tests without a row in {DOC.name}: {sorted(unlisted)}"


def test_two_runs_importing_debian_files_at_once_both_get_complete_files(tmp_path, monkeypatch):
    # Two processes started together both find the files missing and decompress them. Interleave
    # them deterministically: while the first run copies its first file, a second run imports all
    # four. A shared temporary name let the second truncate and move the first's copy, so the first
    # then failed (FileNotFoundError) or kept a half-written file.
    debian = tmp_path / "debian"
    debian.mkdir()
    contents = {name: bytes(range(256)) * (i + 3) for i, name in enumerate(MNIST_FILES)}
    for name, data in contents.items():
        (debian / f"{name}.gz").write_bytes(gzip.compress(data))
    monkeypatch.setattr(tensor_data, "DEBIAN_FASHION_MNIST_DIR", debian)
    raw = tmp_path / "raw"
    real_copy = tensor_data.shutil.copyfileobj
    calls = []

    def copy_then_let_another_run_in(src, dst):
        calls.append(dst)
        real_copy(src, dst, 7)  # small chunks
        if len(calls) == 1:
            tensor_data._import_debian_fashion_mnist(raw)  # the other run, start to finish

    monkeypatch.setattr(tensor_data.shutil, "copyfileobj", copy_then_let_another_run_in)
    tensor_data._import_debian_fashion_mnist(raw)
    assert len(calls) == 5  # the second run wrote all four, the first wrote its first
    assert {p.name: p.read_bytes() for p in raw.iterdir()} == contents  # complete, no leftovers
