"""benchmarks.cnn_digits: the toy CNN stream's command writes every seed and the medians."""

from __future__ import annotations

import json

import pytest

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
