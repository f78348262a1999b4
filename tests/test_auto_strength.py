"""benchmarks.auto_strength: stability decay picks SPP's strength per task from the new task's data."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from benchmarks import auto_strength
from benchmarks.baselines import TrainConfig
from benchmarks.experiment import run_method


def _config(optimizer: str, keep: bool, **changes) -> TrainConfig:
    lr = 0.01 if optimizer == "sgd" else 1e-3
    return replace(TrainConfig(), epochs=1, optimizer=optimizer, lr=lr, reset_optimizer=not keep, **changes)


def _matrix(record) -> np.ndarray:
    return np.asarray(record["accuracy_matrix"], dtype=float)


@pytest.mark.parametrize(("optimizer", "keep"), [("sgd", True), ("adam", True), ("sgd", False)])
def test_the_try_it_keeps_is_exactly_the_plain_run_at_that_strength(optimizer, keep):
    """Every try starts where a plain run would (weights, new head, optimiser state, SPP state,
    random numbers), so accepting the first strength gives the plain run's numbers to the bit,
    although a fine-tuned try of every task ran before it."""
    config = _config(optimizer, keep)
    plain = run_method(
        "spp", benchmark="split_digits", seed=0, train=config, strength=10.0, split="validation"
    )
    auto = run_method(
        "spp", benchmark="split_digits", seed=0, train=replace(config, spp_auto_drop=0.999),
        strength=10.0, split="validation",
    )  # fmt: skip
    np.testing.assert_array_equal(_matrix(auto), _matrix(plain))
    tries = [task["tries"] for task in auto["spp_auto"][1:]]
    assert auto["spp_auto"][0] is None  # the first task has no importance: trained once
    assert all([t["lam"] for t in task] == [0.0, 10.0] for task in tries)


def test_when_no_strength_keeps_the_task_learnable_the_task_is_fine_tuned(monkeypatch):
    """Every try of the grid diverges (a strength SGD cannot follow): each task is fine-tuned, and
    SPP at lam 0 is Naive, so the run ends with fine-tuning's numbers exactly."""
    monkeypatch.setattr(auto_strength, "AUTO_GRID", (1e9,))
    config = _config("sgd", False)
    naive = run_method("finetune", benchmark="split_digits", seed=0, train=config, split="validation")
    auto = run_method(
        "spp", benchmark="split_digits", seed=0, train=replace(config, spp_auto_drop=0.05),
        strength=1e9, split="validation",
    )  # fmt: skip
    for task in auto["spp_auto"][1:]:
        assert task["chosen_lam"] == 0.0
        assert [t["lam"] for t in task["tries"]] == [0.0, 1e9, 0.0]
        assert np.isnan(task["tries"][1]["acc"])  # diverged: never accepted
    np.testing.assert_array_equal(_matrix(auto), _matrix(naive))


def test_the_chosen_strength_is_the_stiffest_whose_accuracy_holds():
    config = _config("adam", True, spp_auto_drop=0.005)
    auto = run_method(
        "spp", benchmark="split_digits", seed=0, train=config, strength=300.0, split="validation"
    )
    for task in auto["spp_auto"][1:]:
        reference, tries = task["reference_acc"], task["tries"]
        lams = [t["lam"] for t in tries[1:]]
        assert lams == sorted(lams, reverse=True) and lams[0] == 300.0
        kept = [t for t in tries[1:] if t["acc"] >= (1 - 0.005) * reference]
        if kept:  # the first strength that holds, and only it, is chosen; the search stops there
            assert task["chosen_lam"] == kept[0]["lam"] == lams[-1]
        else:
            assert task["chosen_lam"] == 0.0


def test_with_monotone_the_strength_never_grows_from_task_to_task():
    config = _config("adam", True, spp_auto_drop=0.005, spp_auto_monotone=True)
    auto = run_method(
        "spp", benchmark="permuted_digits", seed=0, train=config, strength=300.0, split="validation"
    )
    chosen = [task["chosen_lam"] for task in auto["spp_auto"][1:]]
    for previous, task in zip(chosen[:-1], auto["spp_auto"][2:], strict=True):
        first = task["tries"][1]["lam"]
        assert first == (previous if previous > 0 else 300.0)
    assert any(task["tries"][1]["lam"] < 300.0 for task in auto["spp_auto"][2:])  # the bound was used
