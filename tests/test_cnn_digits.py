"""benchmarks.cnn_digits: the toy CNN stream's command writes every seed and the medians."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from avalanche_spp import SPPPlugin
from benchmarks.cnn_digits import main, plugins_for


def test_cnn_digits_writes_every_seed_and_their_median(tmp_path):
    out = tmp_path / "summary.json"
    assert main(["--lams", "0", "--seeds", "0,1", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["lam"] == 0 and row["seeds"] == [0, 1] and len(row["acc"]) == len(row["bwt"]) == 2
    assert row["median_acc"] == pytest.approx(sum(row["acc"]) / 2)  # the median of two
    assert row["median_bwt"] == pytest.approx(sum(row["bwt"]) / 2)
    assert all(50 <= acc <= 100 for acc in row["acc"])  # two-class tasks: above chance once learned
    assert row["acc"][0] != row["acc"][1]  # the seed reaches the run
    table = out.with_suffix(".md").read_text()
    assert "python -m benchmarks.cnn_digits --lams 0" in table and "| 0 |" in table


def test_strength_zero_is_naive_and_any_other_the_plugin():
    from benchmarks.spp_variants import SPPVariantPlugin

    assert plugins_for(0.0)() == [] and plugins_for(0.0, "median")() == []
    (plugin,) = plugins_for(3.0)()
    assert type(plugin) is SPPPlugin and plugin.lam == 3.0
    (variant,) = plugins_for(3.0, "median")()
    assert isinstance(variant, SPPVariantPlugin) and variant.mask_mean == "median" and variant.lam == 3.0


@pytest.mark.parametrize("lams", ["-1", "nan", "x"])
def test_bad_strengths_are_refused(lams, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--lams", lams, "--out", str(tmp_path / "s.json")])
    assert "--lams" in capsys.readouterr().err


def _fake_fashion_mnist(per_class: int = 12, test_per_class: int = 3):
    """A stand-in for Fashion-MNIST: per class ``per_class`` training images whose every pixel is
    the image's own index (so an image can be traced), ``test_per_class`` test images."""
    from benchmarks.tensor_data import _Arrays

    train_y = torch.arange(10).repeat_interleave(per_class)
    test_y = torch.arange(10).repeat_interleave(test_per_class)
    index = torch.arange(len(train_y), dtype=torch.float32)[:, None].expand(-1, 784)
    return _Arrays(index.clone(), train_y, torch.zeros(len(test_y), 784), test_y, scale=1.0)


@pytest.fixture
def small_fmnist(monkeypatch):
    import benchmarks.tensor_data as tensor_data
    from benchmarks import cnn_digits

    monkeypatch.setattr(tensor_data, "_load_fashion_mnist", lambda root, download=True: _fake_fashion_mnist())
    cnn_digits.fmnist_images.cache_clear()
    yield cnn_digits
    cnn_digits.fmnist_images.cache_clear()


def _images(dataset) -> tuple[set[int], list[int]]:
    """The traced indices (pixel value) and the labels of a stream's dataset."""
    items = [dataset[k] for k in range(len(dataset))]
    return {int(x[0, 0, 0]) for x, *_ in items}, [int(y) for _, y, *_ in items]


def test_fmnist_validation_is_held_out_training_images_and_test_the_test_set(small_fmnist, monkeypatch):
    monkeypatch.setattr(small_fmnist, "FMNIST_VALIDATION", 4)
    validation = small_fmnist.fmnist_images("validation", train_limit=10)
    test = small_fmnist.fmnist_images("test", train_limit=10)
    seen_train, seen_validation = set(), set()
    for task in range(5):
        train_ids, train_labels = _images(validation.train_stream[task].dataset)
        held_ids, held_labels = _images(validation.test_stream[task].dataset)
        assert len(train_ids) == 10 and len(held_ids) == 4  # train_limit and FMNIST_VALIDATION per task
        assert sorted(train_labels) == [0] * 5 + [1] * 5 and sorted(held_labels) == [0, 0, 1, 1]  # halves
        assert {i // 12 for i in train_ids | held_ids} == {2 * task, 2 * task + 1}  # the task's classes
        seen_train |= train_ids
        seen_validation |= held_ids
        assert _images(test.train_stream[task].dataset)[0] == train_ids  # the same training images
        assert len(test.test_stream[task].dataset) == 6  # the test set's 3 + 3 images
    assert not seen_train & seen_validation  # validation images are never trained on


def test_fmnist_train_limit_that_leaves_no_validation_is_refused(small_fmnist, capsys, monkeypatch):
    monkeypatch.setattr(small_fmnist, "FMNIST_VALIDATION", 4)
    assert len(small_fmnist.fmnist_images("validation", train_limit=20).train_stream[0].dataset) == 20
    with pytest.raises(ValueError, match="use at most 20"):  # 12 per class, 2 of them held out
        small_fmnist.fmnist_images("validation", train_limit=21)
    with pytest.raises(SystemExit):
        small_fmnist.main(["--stream", "fmnist", "--train-limit", "21", "--out", "/nonexistent/s.json"])
    assert "leaves fewer than 4 validation images" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--split", "validation"], ["--train-limit", "100"]])
def test_digits_has_one_split_and_no_train_limit(flags, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--lams", "0", "--out", str(tmp_path / "s.json"), *flags])
    assert "apply to --stream fmnist only" in capsys.readouterr().err


def test_resume_keeps_the_strengths_measured_and_refuses_another_stream(tmp_path, monkeypatch, capsys):
    from benchmarks import cnn_digits

    calls = []

    def fake_measure(lam, seeds, mask_mean="all", **run):
        calls.append(lam)
        return {"lam": lam, "seeds": list(seeds), "acc": [90.0 + lam], "bwt": [-lam],
                "median_acc": 90.0 + lam, "median_bwt": -lam}  # fmt: skip

    monkeypatch.setattr(cnn_digits, "measure", fake_measure)
    out = tmp_path / "s.json"
    assert main(["--lams", "3,0", "--seeds", "0", "--out", str(out)]) == 0
    assert main(["--lams", "0,3,1", "--seeds", "0", "--out", str(out), "--resume"]) == 0
    result = json.loads(out.read_text())
    assert calls == [3.0, 0.0, 1.0]  # 0 and 3 kept, only 1 measured again
    assert [row["lam"] for row in result["rows"]] == [0.0, 1.0, 3.0] and len(result["commands"]) == 2
    table = out.with_suffix(".md").read_text()
    assert "| 1 | 91.0 |" in table and table.count("`python -m benchmarks.cnn_digits") == 2
    assert "| 1 | 91.0 | -1.0 | 91.0 / -1.0 | 91.00 / -1.00 | 2.00 |" in table  # 2 below lam 3's 93
    assert main(["--lams", "3", "--seeds", "0", "--out", str(out)]) == 0  # no --resume: starts over
    assert [row["lam"] for row in json.loads(out.read_text())["rows"]] == [3.0]
    refusals = (
        (["--seeds", "0,1"], "seeds differ"),
        (["--seeds", "0", "--optimizer", "adam"], "optimizer differ from this command's; use another --out"),
    )
    for extra, message in refusals:
        with pytest.raises(SystemExit) as refused:
            main(["--lams", "3", *extra, "--out", str(out), "--resume"])
        assert refused.value.code == 2  # parser.error, like every other option
        assert message in capsys.readouterr().err
    assert calls == [3.0, 0.0, 1.0, 3.0]  # refused before any run


def test_epochs_reach_the_run_and_are_checked(tmp_path, monkeypatch, capsys):
    from benchmarks import cnn_digits

    seen = []

    def fake_run(plugins, seed, **run):
        seen.append(run)
        return np.eye(5)

    monkeypatch.setattr(cnn_digits, "cnn_run", fake_run)
    out = tmp_path / "s.json"
    assert main(["--lams", "0", "--seeds", "0", "--epochs", "5", "--out", str(out)]) == 0
    expected = {"stream": "digits", "split": "test", "optimizer": "sgd", "epochs": 5, "train_limit": 4000}
    assert seen == [expected]
    assert json.loads(out.read_text())["epochs"] == 5
    with pytest.raises(SystemExit):
        main(["--lams", "0", "--epochs", "0", "--out", str(out)])
    assert "--epochs must be a positive number" in capsys.readouterr().err


def test_the_class_scenario_has_one_ten_way_head_no_task_labels_and_forgets_the_first_classes(tmp_path):
    from benchmarks.cnn_digits import cnn_run, digit_images

    tasks = digit_images("class")
    second = tasks.train_stream[1].dataset
    assert sorted({int(second[k][1]) for k in range(len(second))}) == [2, 3]  # the digits' own labels
    assert {int(second[k][2]) for k in range(len(second))} == {0}  # no task labels
    matrix = {scenario: cnn_run([], 0, scenario=scenario) for scenario in ("task", "class")}
    # after the last task Naive's one 10-way head answers with the last classes only: digits 0 and 1
    # are lost, while their own head (task scenario) still separates them
    assert matrix["class"][4, 0] < 0.1 < 0.6 < matrix["task"][4, 0]
    assert matrix["class"][0, 0] > 0.9  # and it had learned them
    out = tmp_path / "s.json"
    assert main(["--scenario", "class", "--lams", "0", "--seeds", "0", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["scenario"] == "class"
    assert "scenario class: one 10-way head" in out.with_suffix(".md").read_text()
    assert main(["--lams", "0", "--seeds", "0", "--out", str(out)]) == 0  # task: as before the option
    assert "scenario" not in json.loads(out.read_text())
