"""benchmarks.strength_by_kind: the default strength by kind of stream, from kept runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from benchmarks.baselines import TrainConfig
from benchmarks.strength_by_kind import build, is_default_form, main, render, stream_kind

DOCS_RESULTS = Path(__file__).parents[1] / "docs" / "results"
DEFAULT_TRAIN = {k: v for k, v in dataclasses.asdict(TrainConfig()).items() if k.startswith("spp_")}
CHECK_COMMAND = (
    "python -m benchmarks.spp_defaults --split test --seeds 0,1,2 --out x --streams {s} "
    "--forms default --lams 10 --threads 1"
)


def _run(root, folder, stream, lam, acc, *, seed=0, split="validation", **train):
    """A kept run record of SPP (``lam`` a number) or Naive (``lam`` None) under ``folder/runs``."""
    method, name = ("finetune", "naive__none") if lam is None else ("spp", f"default__lam{lam:g}")
    record = {
        "method": method,
        "seed": seed,
        "strength": lam,
        "metrics": {"acc": acc / 100, "bwt": -0.01},
        "config": {"split": split, "train": {**DEFAULT_TRAIN, **train}},
    }
    path = root / "spp_defaults" / folder / "runs" / f"{stream}__{name}__seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def _check_row(stream, *, forgets=True, met=(True, True, True), tuned=100.0):
    pair = {"acc": "90.00 ± 1.00", "bwt": "-1.00 ± 0.50"}
    criteria = dict(
        zip(("half_the_forgetting", "acc_not_below_naive", "within_1_of_tuned"), met, strict=True)
    )
    return {
        "stream": stream, "seeds": 3, "naive": pair, "default": pair, "tuned": pair, "tuned_lam": tuned,
        "naive_forgets": forgets, "criteria": criteria,
    }  # fmt: skip


def _check(root, folder, rows, command=CHECK_COMMAND):
    path = root / "spp_defaults" / folder / "check.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    streams = ",".join(r["stream"] for r in rows)
    path.write_text(json.dumps({"command": command.format(s=streams), "rows": rows}))


def test_a_stream_s_kind_is_its_data_and_heads_and_an_unknown_stream_is_refused():
    assert stream_kind("rotated_fmnist_sgd2_3k_e1k_keep_sh") == "rotated Fashion-MNIST, one shared head"
    assert stream_kind("split_fmnist_adam5") == "split Fashion-MNIST, a head per task"
    assert stream_kind("permuted_fmnist_sgd2_10k_e2k_keep_sh") == "permuted Fashion-MNIST, one shared head"
    assert stream_kind("split_digits_sgd5_keep") == "split digits, a head per task"
    assert stream_kind("vgg9_split_fmnist_adam2") == "split Fashion-MNIST, VGG-9 CNN, a head per task"
    with pytest.raises(ValueError, match="unknown stream 'split_cifar_sgd2'.*STREAMS"):
        stream_kind("split_cifar_sgd2")


def test_only_runs_of_the_default_form_count():
    assert is_default_form(dict(DEFAULT_TRAIN))
    older = {k: v for k, v in DEFAULT_TRAIN.items() if k not in ("spp_importance_batch_size", "spp_decay")}
    assert is_default_form(older)  # options the harness named later: their default then
    assert not is_default_form({**DEFAULT_TRAIN, "spp_taylor_of": "neg_entropy"})
    assert not is_default_form({**DEFAULT_TRAIN, "spp_mask_mean": "tensor"})
    assert not is_default_form({**DEFAULT_TRAIN, "spp_importance_batch_size": 64})
    assert not is_default_form({**DEFAULT_TRAIN, "spp_something_new": 1})  # an option it cannot judge
    assert not is_default_form({k: v for k, v in DEFAULT_TRAIN.items() if k != "spp_taylor_of"})


def test_best_strength_shortfall_and_criteria_are_read_from_the_runs(tmp_path):
    s, p = "split_fmnist_sgd2_keep", "permuted_fmnist_sgd2_3k_e1k_keep_sh"
    for lam, acc in ((1, 97.0), (10, 98.0), (100, 98.6)):
        _run(tmp_path, "grid", s, lam, acc)
    _run(tmp_path, "grid", s, None, 88.0)
    _run(tmp_path, "other", s, 100, 98.8)  # the same setting rerun in another folder: the mean, 98.7
    _run(tmp_path, "grid", s, 1000, 99.9, spp_taylor_of="neg_entropy")  # another form: left out
    _run(tmp_path, "grid", s, 1000, 99.9, seed=1)  # another seed: left out
    _run(tmp_path, "grid", s, 300, 99.9, split="test")  # the test split: left out
    for lam, acc in ((0.3, 63.0), (1, 59.0), (10, 51.5)):
        _run(tmp_path, "grid", p, lam, acc)
    _check(tmp_path, "check_a", [_check_row(s), _check_row(p, met=(True, False, False), tuned=0.3)])
    _check(tmp_path, "copy", [_check_row(s)])  # a copy of the same check: counted once
    _check(tmp_path, "seeds3", [_check_row(s, met=(False,) * 3)], CHECK_COMMAND.replace("0,1,2", "3,4,5"))
    _check(tmp_path, "lam5", [_check_row(s, met=(False,) * 3)], CHECK_COMMAND.replace("10 ", "5 "))
    summary = build(tmp_path, 10.0, "cmd")
    rows = {r["stream"]: r for r in summary["streams"]}
    assert rows[s]["best_lam"] == 100 and rows[s]["best_acc"] == pytest.approx(98.7)
    assert rows[s]["shortfall"] == pytest.approx(0.7) and rows[s]["validation_naive_acc"] == 88.0
    assert summary["largest_spread_between_copies"] == pytest.approx(0.2)
    assert rows[s]["validation_strengths"] == [1.0, 10.0, 100.0] and rows[s]["state_kept"]
    assert rows[p]["best_lam"] == 0.3 and rows[p]["shortfall"] == pytest.approx(11.5)
    kinds = {k["kind"]: k for k in summary["kinds"]}
    split = kinds["split Fashion-MNIST, a head per task"]
    assert split["default_within_1"] == 1 and split["met"] == {
        "half_the_forgetting": 1, "acc_not_below_naive": 1, "within_1_of_tuned": 1,
    }  # fmt: skip
    permuted = kinds["permuted Fashion-MNIST, one shared head"]
    assert permuted["default_within_1"] == 0 and permuted["default_shortfall_max"] == pytest.approx(11.5)
    assert permuted["met"] == {"half_the_forgetting": 1, "acc_not_below_naive": 0, "within_1_of_tuned": 0}
    assert (permuted["best_lam_min"], permuted["best_lam_max"]) == (0.3, 0.3)


def test_checks_without_forgetting_or_tuned_strength_are_not_counted_against_the_default(tmp_path):
    s, d = "split_fmnist_adam2", "split_fmnist_sgd2"
    for lam, acc in ((1, 97.0), (10, 98.0), (100, 98.6)):
        _run(tmp_path, "grid", s, lam, acc)
    _check(tmp_path, "c", [
        _check_row(s, forgets=False, met=(False,) * 3),  # Naive does not forget: no criterion applies
        _check_row(d, met=(True, True, None), tuned=None),  # untuned: within 1 of tuned is not judged
    ])  # fmt: skip
    (kind,) = build(tmp_path, 10.0, "cmd")["kinds"]
    assert kind["checked_where_naive_forgets"] == 1 and kind["checked_with_tuned"] == 0
    assert kind["met"] == {"half_the_forgetting": 1, "acc_not_below_naive": 1, "within_1_of_tuned": 0}


def test_runs_or_checks_of_one_setting_that_disagree_are_refused(tmp_path):
    s = "split_fmnist_sgd2"
    _run(tmp_path, "a", s, 10, 98.0)
    _run(tmp_path, "b", s, 10, 96.0)  # 2 points apart: not a rerun of the same setting
    with pytest.raises(ValueError, match="split_fmnist_sgd2 at 10.0 .* not runs of one setting"):
        build(tmp_path, 10.0, "cmd")
    other = tmp_path / "other"
    _run(other, "a", s, 10, 98.0)
    _check(other, "c1", [_check_row(s)])
    _check(other, "c2", [_check_row(s, met=(False,) * 3)])
    with pytest.raises(ValueError, match="check of split_fmnist_sgd2 differs"):
        build(other, 10.0, "cmd")


def test_the_cnn_s_kept_files_give_its_streams(tmp_path):
    _run(tmp_path, "grid", "split_fmnist_sgd2", 10, 98.0)
    cnn = tmp_path / "cnn_fmnist"
    cnn.mkdir()
    grid = [(0, 80.0), (3, 95.0), (10, 97.0), (30, 97.5)]
    rows = [{"lam": lam, "seeds": [0], "acc": [acc]} for lam, acc in grid]
    (cnn / "validation_sgd.json").write_text(json.dumps({"rows": rows}))
    test = [(0.0, 78.0, -20.0), (10.0, 96.9, -2.0), (30.0, 97.8, -1.0)]
    test_rows = [{"lam": lam, "seeds": [0, 1, 2], "mean_acc": a, "mean_bwt": b} for lam, a, b in test]
    (cnn / "test_sgd.json").write_text(json.dumps({"rows": test_rows}))
    rows = {r["stream"]: r for r in build(tmp_path, 10.0, "cmd")["streams"]}
    vgg = rows["vgg9_split_fmnist_sgd2"]
    assert vgg["validation_naive_acc"] == 80.0 and vgg["best_lam"] == 30 and vgg["shortfall"] == 0.5
    # test: BWT -2 is at most half of -20, 96.9 >= 78, but 96.9 is 0.9 below 97.8 (within 1)
    assert vgg["check"]["tuned_lam"] == 30 and vgg["check"]["criteria"] == {
        "half_the_forgetting": True, "acc_not_below_naive": True, "within_1_of_tuned": True,
    }  # fmt: skip
    test_rows[1]["mean_acc"] = 96.7  # 1.1 below tuned
    (cnn / "test_sgd.json").write_text(json.dumps({"rows": test_rows}))
    rows = {r["stream"]: r for r in build(tmp_path, 10.0, "cmd")["streams"]}
    assert rows["vgg9_split_fmnist_sgd2"]["check"]["criteria"]["within_1_of_tuned"] is False


def test_the_command_line_writes_the_summary_and_refuses_bad_input(tmp_path, capsys):
    _run(tmp_path, "grid", "split_fmnist_sgd2", 10, 98.0)
    assert main(["--results", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "| split Fashion-MNIST, a head per task | 1 |" in text
    kinds = (tmp_path / "out" / "kinds.md").read_text()
    assert text.startswith(kinds) and "Per stream" in text and "Per stream" not in kinds
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["default_lam"] == 10.0
    for argv, message in (
        (["--results", str(tmp_path / "nowhere")], "no such folder"),
        (["--results", str(tmp_path), "--lam", "0"], "positive strength"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--out", str(tmp_path / "o2")])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    empty = tmp_path / "empty" / "spp_defaults"
    empty.mkdir(parents=True)
    with pytest.raises(SystemExit):
        main(["--results", str(empty.parent), "--out", str(tmp_path / "o3")])
    assert "no validation run" in capsys.readouterr().err


def test_the_kept_summary_is_what_the_kept_runs_give():
    kept = json.loads((DOCS_RESULTS / "strength_by_kind" / "summary.json").read_text())
    fresh = build(DOCS_RESULTS, kept["default_lam"], kept["command"])
    assert json.loads(json.dumps(fresh)) == kept
    assert (DOCS_RESULTS / "strength_by_kind" / "summary.md").read_text() == render(fresh)
    assert (DOCS_RESULTS / "strength_by_kind" / "kinds.md").read_text() == render(fresh, per_stream=False)
