"""Tests of benchmarks.sweep's plateau: the strengths within 0.5 points of the best ACC."""

from __future__ import annotations

import pytest

from benchmarks.sweep import plateau


def _rows(pairs):
    return [{"lam": lam, "acc": acc} for lam, acc in pairs]


def test_plateau_is_the_contiguous_run_around_the_best_strength():
    rows = _rows([(0.0, 0.99), (0.1, 0.950), (1.0, 0.978), (10.0, 0.982), (100.0, 0.980), (1000.0, 0.97)])
    flat = plateau(rows)
    # lam = 0 never counts; 0.978 and 0.980 are within 0.005 of 0.982, 0.97 and 0.95 are not
    assert flat == pytest.approx(
        {"best_lam": 10.0, "best_acc": 0.982, "low": 1.0, "high": 100.0, "decades": 2.0}
    )


def test_a_diverged_strength_or_a_dip_ends_the_plateau():
    rows = _rows([(1.0, 0.981), (3.0, None), (10.0, 0.982), (30.0, 0.970), (100.0, 0.981)])
    flat = plateau(rows)
    assert (flat["low"], flat["high"], flat["decades"]) == (10.0, 10.0, 0.0)


def test_no_finished_positive_strength_gives_no_plateau():
    assert plateau(_rows([(0.0, 0.9), (1.0, None)])) is None


def test_sweep_rows_are_the_means_of_its_runs_and_name_the_plateau(tmp_path, capsys):
    import json

    import numpy as np

    from benchmarks.sweep import main

    out = tmp_path / "sweep"
    argv = ["--benchmark", "split_digits", "--lams", "0,1,3", "--seeds", "2", "--epochs", "1", "--lr", "0.1",
            "--threads", "1", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "sweep.json").read_text())
    for row in result["rows"]:
        runs = [json.loads((out / "runs" / f"spp_{row['lam']:g}_seed{s}.json").read_text()) for s in (0, 1)]
        assert row["n"] == 2
        assert row["acc"] == pytest.approx(np.mean([r["metrics"]["acc"] for r in runs]))
        assert row["bwt"] == pytest.approx(np.mean([r["metrics"]["bwt"] for r in runs]))
    assert result["plateau"] == plateau(result["rows"]) and result["plateau"]["low"] in (1.0, 3.0)
    assert "plateau (ACC within 0.5 points of the best): lambda" in capsys.readouterr().out
    assert "Plateau (mean ACC within 0.5 points" in (out / "sweep.md").read_text()


def test_taylor_of_reaches_the_runs_and_an_unknown_one_is_refused(capsys):
    from avalanche_spp.importance import DEFAULT_TAYLOR_OF
    from benchmarks.sweep import parse_args

    assert parse_args(["--taylor-of", "second_order"]).train.spp_taylor_of == "second_order"
    assert parse_args([]).train.spp_taylor_of == DEFAULT_TAYLOR_OF == "second_order"  # SPPPlugin()
    with pytest.raises(SystemExit):
        parse_args(["--taylor-of", "paper"])
    assert "invalid choice: 'paper'" in capsys.readouterr().err
