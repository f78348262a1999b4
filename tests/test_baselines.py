"""Each method of the comparison is built as promised; the comparison CLI writes its report."""

from __future__ import annotations

import json

import pytest
import torch
from avalanche.training import JointTraining, Naive
from avalanche.training.plugins import EWCPlugin, LwFPlugin, MASPlugin, SynapticIntelligencePlugin

from avalanche_spp import SPPPlugin
from benchmarks import run as run_cli
from benchmarks.baselines import (
    METHODS,
    STRENGTH_GRIDS,
    CopyingSynapticIntelligencePlugin,
    FreezeFeaturesPlugin,
    TrainConfig,
    ZeroLossMASPlugin,
    build_strategy,
    default_strength,
    uses_multi_head,
)
from benchmarks.models import MultiHeadMLP, SingleHeadMLP, make_model
from benchmarks.streams import benchmark_info, make_benchmark

torch.set_num_threads(1)
PLUGIN = {
    "sgd_f": FreezeFeaturesPlugin,
    "ewc": EWCPlugin,
    "si": CopyingSynapticIntelligencePlugin,
    "mas": ZeroLossMASPlugin,
    "lwf": LwFPlugin,
    "spp": SPPPlugin,
}


@pytest.mark.parametrize("method", METHODS)
def test_each_method_is_built_with_its_plugin_and_model(method):
    info = benchmark_info("split_digits")
    model = make_model(info, multi_head=uses_multi_head(method), hidden=(16,))
    assert isinstance(model, SingleHeadMLP if method == "sgd" else MultiHeadMLP)
    assert not uses_multi_head(method, single_head=True)  # TrainConfig.single_head: one head for every method
    strategy = build_strategy(method, model, TrainConfig(epochs=1, hidden=(16,)))
    assert isinstance(strategy, JointTraining if method == "joint" else Naive)
    found = [p for p in strategy.plugins if isinstance(p, PLUGIN[method])] if method in PLUGIN else []
    assert len(found) == (1 if method in PLUGIN else 0)
    if method == "spp":
        assert found[0].lam == default_strength("spp")


def test_every_spp_setting_of_the_train_config_reaches_the_plugin():
    config = TrainConfig(
        epochs=1,
        hidden=(16,),
        spp_scale="raw",
        spp_taylor_of="neg_entropy",
        spp_clamp="sample",
        spp_fisher="per_sample",
        spp_normalize="max",
        spp_accumulate="max",
        spp_importance_samples=7,
        spp_importance_batch_size=32,
        spp_curvature_cap=0.5,
    )
    model = make_model(benchmark_info("split_digits"), hidden=(16,))
    (plugin,) = [
        p for p in build_strategy("spp", model, config, strength=2.5).plugins if isinstance(p, SPPPlugin)
    ]
    settings = plugin.state_dict()["settings"]
    assert plugin.lam == 2.5
    for key, value in (
        ("scale", "raw"), ("taylor_of", "neg_entropy"), ("clamp", "sample"), ("fisher", "per_sample"),
        ("normalize", "max"), ("accumulate", "max"), ("importance_samples", 7), ("curvature_cap", 0.5),
        ("importance_batch_size", 32),
    ):  # fmt: skip
        assert settings[key] == value, key
    for key, value in (("spp_fisher", "batch"), ("spp_clamp", "batch")):
        other = build_strategy("spp", model, TrainConfig(epochs=1, hidden=(16,), **{key: value}))
        (found,) = [p for p in other.plugins if isinstance(p, SPPPlugin)]
        assert found.state_dict()["settings"][key[4:]] == value
        assert type(found) is SPPPlugin  # no variant asked for: the library's own class
    tempered = build_strategy("spp", model, TrainConfig(epochs=1, hidden=(16,), spp_temperature=4.0))
    (found,) = [p for p in tempered.plugins if isinstance(p, SPPPlugin)]
    assert found.state_dict()["settings"]["temperature"] == 4.0
    with pytest.raises(ValueError, match="spp_temperature must be a finite number > 0"):
        TrainConfig(spp_temperature=0.0)
    weighted = build_strategy("spp", model, TrainConfig(epochs=1, hidden=(16,), spp_anchor="weighted"))
    (found,) = [p for p in weighted.plugins if isinstance(p, SPPPlugin)]
    assert found.state_dict()["settings"]["anchor_mode"] == "weighted"
    with pytest.raises(ValueError, match="spp_anchor must be one of"):
        TrainConfig(spp_anchor="first")
    decayed = build_strategy("spp", model, TrainConfig(epochs=1, hidden=(16,), spp_decay=0.5))
    (found,) = [p for p in decayed.plugins if isinstance(p, SPPPlugin)]
    assert found.state_dict()["settings"]["decay"] == 0.5
    with pytest.raises(ValueError, match=r"spp_decay must be a number in \(0, 1\]"):
        TrainConfig(spp_decay=0.0)


def test_every_method_gets_the_same_number_of_grid_points_around_its_default():
    sizes = {method: len(grid) for method, grid in STRENGTH_GRIDS.items()}
    assert len(set(sizes.values())) == 1, sizes
    assert default_strength("spp") == SPPPlugin().lam  # SPP's grid is centred on the plugin default


def test_strength_errors():
    model = make_model(benchmark_info("split_digits"), hidden=(16,))
    with pytest.raises(ValueError, match="method must be one of"):
        build_strategy("packnet", model, TrainConfig())
    with pytest.raises(ValueError, match="finetune has no strength"):
        build_strategy("finetune", model, TrainConfig(), strength=1.0)
    with pytest.raises(ValueError, match="finite and >= 0"):
        build_strategy("ewc", model, TrainConfig(), strength=-1.0)
    with pytest.raises(ValueError, match="lr must be"):
        TrainConfig(lr=0)


def test_sgd_f_freezes_the_shared_layers_after_the_first_task():
    bench = make_benchmark("split_digits", n_tasks=2)
    model = make_model(benchmark_info("split_digits"), hidden=(16,))
    strategy = build_strategy("sgd_f", model, TrainConfig(epochs=1, lr=0.1, hidden=(16,)))
    strategy.train(bench.train_stream[0])
    before = [p.detach().clone() for p in model.features.parameters()]
    strategy.train(bench.train_stream[1])
    for old, new in zip(before, model.features.parameters(), strict=True):
        assert torch.equal(old, new)
    assert model.classifier.classifiers["1"].classifier.weight.grad is not None


def test_comparison_cli_writes_report_and_protects_results(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = [
        "--benchmark",
        "split_digits",
        "--methods",
        "finetune,joint,spp",
        "--n-tasks",
        "2",
        "--epochs",
        "1",
        "--hidden",
        "16",
        "--grid",
        "spp=1,10",
        "--out",
        str(out),
        "--quiet",
    ]
    assert run_cli.main(argv) == 0
    for name in ("report.md", "summary.json", "config.json", "accuracy_over_tasks.png"):
        assert (out / name).exists(), name
    record = json.loads((out / "runs" / "spp_seed0.json").read_text())
    assert record["strength"] in (1.0, 10.0) and record["config"]["split"] == "test"
    assert record["metrics"]["fwt"] is not None  # joint ran first
    tuning = json.loads((out / "tuning" / "spp_summary.json").read_text())
    assert [r["strength"] for r in tuning["rows"]] == [1.0, 10.0]
    assert "| spp |" in (out / "report.md").read_text()
    assert run_cli.main(argv) == 2  # results exist: refused without --resume / --force
    assert "--resume" in capsys.readouterr().err
    stamp = (out / "runs" / "spp_seed0.json").stat().st_mtime_ns
    assert run_cli.main([*argv, "--resume"]) == 0
    assert (out / "runs" / "spp_seed0.json").stat().st_mtime_ns == stamp  # skipped, not rerun


def test_comparison_cli_refuses_bad_arguments(tmp_path):
    for argv in (
        ["--benchmark", "nope"],
        ["--methods", "sgd,packnet"],
        ["--lam", "-1"],
        ["--strength", "finetune=1"],
        ["--epochs", "0"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            run_cli.main([*argv, "--out", str(tmp_path / "x")])
        assert exit_info.value.code == 2


def _si_after_one_experience(plugin_class):
    """Train a small MLP on split-digits task 0 with an SI plugin; return the plugin and model."""
    torch.manual_seed(0)
    stream = make_benchmark("split_digits", split="test", seed=0, train_limit=200)
    model = make_model(benchmark_info("split_digits"), hidden=(16,))
    plugin = plugin_class(si_lambda=1.0)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=32,
        train_epochs=1,
        plugins=[plugin],
        evaluator=None,
    )
    strategy.train(stream.train_stream[0])
    return plugin, model, strategy


def test_si_learns_a_nonzero_importance_and_anchor_that_does_not_move():
    plugin, model, strategy = _si_after_one_experience(CopyingSynapticIntelligencePlugin)
    importance = torch.cat([d.data for d in plugin.ewc_data[1].values()])
    assert importance.abs().sum() > 0  # the path integral saw the weights move
    trained = {n: p.detach().flatten().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    for name, stored in plugin.ewc_data[0].items():
        # the plugin's own anchor still holds the trained weights: a copy, not the live weights
        assert torch.equal(stored.data, trained[name]), name
    loss = CopyingSynapticIntelligencePlugin.compute_ewc_loss(
        model, plugin.ewc_data, plugin.excluded_parameters, device="cpu", lambd=1.0
    )
    assert loss.item() != 0.0


def test_avalanche_si_is_inert_on_cpu_which_is_why_the_copying_class_exists():
    # Documents the upstream bug the copying class fixes: if Avalanche fixes it, this fails
    # and the workaround can go.
    plugin, _, _ = _si_after_one_experience(SynapticIntelligencePlugin)
    importance = torch.cat([d.data for d in plugin.ewc_data[1].values()])
    assert importance.abs().sum() == 0


def test_mas_accepts_a_zero_loss_which_avalanche_refuses_and_adds_the_same_penalty():
    from types import SimpleNamespace

    model = torch.nn.Linear(3, 2)
    importance = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    anchor = {n: p.detach() + 0.1 for n, p in model.named_parameters()}  # (W - W*)^2 = 0.01

    def strategy(loss):
        return SimpleNamespace(model=model, loss=loss, clock=SimpleNamespace(train_exp_counter=1))

    ours, theirs = ZeroLossMASPlugin(lambda_reg=2.0), MASPlugin(lambda_reg=2.0)
    for plugin in (ours, theirs):
        plugin.importance, plugin.params = importance, anchor
    expected = 2.0 * sum(float(o.sum()) * 0.01 for o in importance.values())
    mine, avalanches = strategy(torch.tensor(1.5)), strategy(torch.tensor(1.5))
    ours.before_backward(mine)
    theirs.before_backward(avalanches)
    assert float(mine.loss) == pytest.approx(float(avalanches.loss)) == pytest.approx(1.5 + expected)
    with pytest.raises(ValueError, match="Loss is not available"):
        theirs.before_backward(strategy(torch.tensor(0.0)))
    zero = strategy(torch.tensor(0.0))
    ours.before_backward(zero)
    assert float(zero.loss) == pytest.approx(expected)
    with pytest.raises(ValueError, match="Loss is not available"):
        ours.before_backward(strategy(None))
