"""The experiment runner: strength tuning on validation, and what happens when training diverges."""

from __future__ import annotations

import pytest
import torch

from avalanche_spp.importance import DivergedError
from benchmarks.baselines import TrainConfig
from benchmarks.experiment import importance_summary, run_method, tune_strength

torch.set_num_threads(1)
DIGITS = {"benchmark": "split_digits", "seed": 0, "benchmark_options": {"train_limit": 100}}


def test_tuner_picks_the_best_validation_acc_and_skips_strengths_above_a_divergence():
    tried = []

    def evaluate(strength):
        tried.append(strength)
        if strength >= 100:
            raise DivergedError("too strong")
        acc = {1.0: 0.7, 10.0: 0.9, 0.1: 0.9}[strength]
        return {"metrics": {"acc": acc, "bwt": 0, "fwt": None, "smt": 0}}

    best, rows = tune_strength([1000.0, 10.0, 0.1, 1.0, 100.0], evaluate)
    assert tried == [0.1, 1.0, 10.0, 100.0]  # ascending; 1000 never run
    assert best == 0.1  # a tie goes to the smaller strength
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "diverged", "skipped"]
    assert rows[-1]["strength"] == 1000.0 and rows[-1]["acc"] is None


def test_tuner_refuses_an_empty_grid_and_a_grid_that_only_diverges():
    with pytest.raises(ValueError, match="grid is empty"):
        tune_strength([], lambda s: {})

    def diverge(strength):
        raise DivergedError("no")

    with pytest.raises(DivergedError, match="every strength .* diverged"):
        tune_strength([1.0, 2.0], diverge)


def test_a_diverging_run_raises_for_tuning_and_is_recorded_for_final_runs():
    config = TrainConfig(epochs=2, hidden=(32,), lr=0.1)  # EWC at 1e5 blows up on task 3 here
    with pytest.raises(DivergedError, match="diverged on task 3.*not finite"):
        run_method("ewc", strength=1e5, train=config, **DIGITS)
    record = run_method("ewc", strength=1e5, train=config, on_divergence="record", **DIGITS)
    assert record["diverged_at_task"] == 3
    matrix = record["accuracy_matrix"]
    assert all(row[j] is not None and 0 <= row[j] <= 1 for j, row in enumerate(matrix))  # all evaluated
    assert max(matrix[-1]) < 0.6  # the diverged model is at chance level on these 2-class tasks
    healthy = run_method("ewc", strength=1.0, train=config, **DIGITS)
    assert healthy["diverged_at_task"] is None
    with pytest.raises(ValueError, match="on_divergence must be"):
        run_method("ewc", train=config, on_divergence="ignore", **DIGITS)


def test_importance_summary_by_hand():
    omega = {"head.w": torch.tensor([0.0, 0.5, 2.0]), "features.b": torch.tensor([[0.0], [1.0]])}
    summary = importance_summary(omega, lr=0.01, momentum=0.9)
    assert summary["n"] == 5 and summary["max"] == 2.0 and summary["max_shared"] == 1.0
    assert summary["mean"] == pytest.approx(3.5 / 5)
    assert summary["median_nonzero"] == 1.0  # of 0.5, 1, 2
    assert summary["fraction_zero"] == pytest.approx(0.4)
    assert summary["lam_stability_limit"] == pytest.approx(1.9 / (0.01 * 1.0))  # (1 + mu) / (eta max shared)
    no_prefix = importance_summary(omega, lr=0.01, momentum=0.9, shared_prefix="trunk.")
    assert no_prefix["max_shared"] is None and no_prefix["lam_stability_limit"] == pytest.approx(1.9 / 0.02)
    assert importance_summary({"a": torch.zeros(3)}, lr=0.1, momentum=0.0)["lam_stability_limit"] is None


def test_spp_records_carry_the_importance_summary():
    seen = {}

    def keep_omega(j, strategy):  # the importance in force while the last task (4) is learned
        if j == 3:
            seen.update({n: t.clone() for n, t in strategy.plugins[0].omega.items()})

    train = TrainConfig(epochs=1, hidden=(16,), lr=0.1)
    record = run_method("spp", strength=10.0, train=train, on_task_end=keep_omega, **DIGITS)
    stats = record["spp_importance"]
    assert stats["max"] == pytest.approx(max(t.max().item() for t in seen.values()))
    assert stats["max"] > 0 and 0 <= stats["fraction_zero"] < 1
    shared_max = max(t.max().item() for n, t in seen.items() if n.startswith("features."))
    assert stats["lam_stability_limit"] == pytest.approx(1.9 / (0.1 * shared_max))
    assert "spp_importance" not in run_method("finetune", train=TrainConfig(epochs=1, hidden=(16,)), **DIGITS)


def test_spp_diverging_inside_its_importance_pass_is_recorded_too():
    # Here the weights blow up during task 2 and SPP's importance pass after it refuses the
    # non-finite model (DivergedError raised inside Avalanche's callbacks): the run still ends.
    config = TrainConfig(  # the paper's raw penalty and estimate, at a strength SGD cannot bear
        epochs=5, hidden=(256, 128), lr=0.1, spp_scale="raw", spp_clamp="experience",
        spp_taylor_of="entropy", spp_fisher="per_sample",
    )  # fmt: skip
    run = {"benchmark": "split_digits", "seed": 0, "split": "validation", "strength": 1e4, "train": config}
    record = run_method("spp", on_divergence="record", **run)
    assert record["diverged_at_task"] == 2
    assert all(row[j] is not None for j, row in enumerate(record["accuracy_matrix"]))


def test_progress_bars_only_on_a_terminal_and_one_log_line_per_run(capsys, caplog, monkeypatch):
    import logging
    import sys

    train = TrainConfig(epochs=1, hidden=(16,))
    with caplog.at_level(logging.INFO, logger="benchmarks.experiment"):
        run_method("finetune", train=train, progress=True, **DIGITS)  # stderr is not a terminal here
    assert "\r" not in capsys.readouterr().err  # no carriage-return updates in a log
    finished = [r.getMessage() for r in caplog.records if r.getMessage().startswith("finished")]
    assert len(finished) == 1 and "finetune test seed 0" in finished[0] and "ACC" in finished[0]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    run_method("finetune", train=train, progress=True, **DIGITS)
    assert "task" in capsys.readouterr().err  # a terminal gets the bar


def test_benchmarks_run_with_no_option_is_the_readme_quickstart(monkeypatch):
    from pathlib import Path

    from benchmarks import run as run_cli

    seen = []

    def parse(argv):
        seen.append(argv)
        raise SystemExit(0)

    real_parse = run_cli.parse_args
    monkeypatch.setattr(run_cli, "parse_args", parse)
    with pytest.raises(SystemExit):
        run_cli.main([])
    assert seen == [list(run_cli.QUICKSTART_ARGS)]
    config = real_parse(list(run_cli.QUICKSTART_ARGS))
    assert config.benchmark == "split_digits" and len(config.methods) == 9 and config.seeds == (0, 1, 2)
    assert config.epochs == 20  # a budget at which fine-tuning forgets (docs/results.md, "Quickstart")
    assert config.lr == 0.1 and tuple(config.hidden) == (256, 128) and config.out == "runs/quickstart"
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "pip install -e . && python -m benchmarks.run\n" in readme
    assert all(arg in readme for arg in run_cli.QUICKSTART_ARGS)  # the README spells out the options


@pytest.mark.parametrize("reset", [True, False])
def test_reset_optimizer_decides_whether_adams_state_outlives_an_experience(reset):
    steps = []  # Adam's step count of the first shared weight, after each experience

    def count_steps(j, strategy):
        weight = next(strategy.model.features.parameters())
        steps.append(int(strategy.optimizer.state[weight]["step"]))

    train = TrainConfig(epochs=1, hidden=(16,), optimizer="adam", lr=1e-3, reset_optimizer=reset)
    run_method("finetune", train=train, on_task_end=count_steps, **DIGITS)
    per_task = steps[0]  # each experience is the same number of mini-batches here
    assert per_task > 0 and steps[1] > 0
    assert steps == ([per_task] * 5 if reset else [per_task * (j + 1) for j in range(5)])
    with pytest.raises(ValueError, match="reset_optimizer must be True or False"):
        TrainConfig(reset_optimizer="no")


def test_single_head_gives_every_method_one_shared_head():
    kinds = []
    for single_head in (True, False):
        train = TrainConfig(epochs=1, hidden=(16,), single_head=single_head)
        run_method(
            "spp",
            train=train,
            on_task_end=lambda j, strategy: kinds.append(type(strategy.model).__name__),
            **DIGITS,
        )
    assert kinds == ["SingleHeadMLP"] * 5 + ["MultiHeadMLP"] * 5
    with pytest.raises(ValueError, match="single_head must be True or False"):
        TrainConfig(single_head=1)
