"""Tests of benchmarks.zero_importance: resetting a group of weights to the anchor, and the clamp's zeros."""

from __future__ import annotations

import pytest
import torch

from benchmarks.zero_importance import one_run


def _data(n: int = 192, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, x_test = torch.rand(n, 784, generator=g), torch.rand(n, 784, generator=g)
    y = (x[:, :392].sum(1) > x[:, 392:].sum(1)).long()  # a learnable rule, two classes
    y_test = (x_test[:, :392].sum(1) > x_test[:, 392:].sum(1)).long()
    return x, y, x_test, y_test, torch.randperm(784, generator=g)


def test_resetting_every_weight_gives_task_zero_back_and_the_second_order_term_is_rarely_zero():
    data = _data()
    runs = {form: one_run(data, form, lam=1.0, seed=0, epochs=3) for form in ("neg_entropy", "second_order")}
    for record in runs.values():
        assert record["reset all"] == pytest.approx(record["task0_before"])  # W* is task 0's trunk
        assert record["share all"] == 100.0
        assert record["share omega == 0"] == record["share_zero"]
        assert record["share M < 0.1"] + record["share M >= 0.5"] <= 100.0
    # The first-order term clamps a large share of the weights to zero; the second-order term alone
    # is zero only where the gradient is (dead ReLU units).
    assert runs["neg_entropy"]["share_zero"] > 20.0
    assert runs["second_order"]["share_zero"] < runs["neg_entropy"]["share_zero"] / 4


def test_an_unknown_taylor_of_is_refused_before_any_run(capsys):
    from benchmarks.zero_importance import main

    with pytest.raises(SystemExit):
        main(["--out", "unused", "--taylor-of", "paper"])
    assert "'paper' is not one of" in capsys.readouterr().err
