"""Tests of benchmarks.analysis and benchmarks.analyze: numbers by hand, and every promised file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks import analysis, analysis_measures
from benchmarks.analysis import OUTPUT_FILES
from benchmarks.analysis_measures import fisher_importance, mas_importance
from benchmarks.analysis_numbers import (
    change_by_importance,
    fit_gaussian,
    frechet_distance_1d,
    frechet_distance_gaussians,
    layer_key,
    layer_values,
    log_density,
    near_zero_fraction,
    normalized_density,
    rank_correlation,
    weighted_squared_change,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------ pure numbers


def test_frechet_distance_of_two_known_gaussians():
    # (1 - 4)**2 + 2**2 + 0.5**2 - 2 * 2 * 0.5 = 9 + 4 + 0.25 - 2
    assert frechet_distance_gaussians(1.0, 2.0, 4.0, 0.5) == pytest.approx(11.25)
    assert frechet_distance_gaussians(3.0, 1.5, 3.0, 1.5) == 0.0
    with pytest.raises(ValueError, match="standard deviations"):
        frechet_distance_gaussians(0.0, -1.0, 0.0, 1.0)


def test_frechet_distance_of_samples_fits_population_gaussians():
    first = np.array([0.0, 2.0])  # mean 1, population std 1
    second = torch.tensor([2.0, 6.0, 2.0, 6.0])  # mean 4, population std 2
    assert fit_gaussian(first) == (1.0, 1.0)
    assert fit_gaussian(second) == (4.0, 2.0)
    assert frechet_distance_1d(first, second) == pytest.approx(9.0 + 1.0)
    assert frechet_distance_1d(second, first) == pytest.approx(10.0)
    # A shift of both samples leaves it unchanged; a sample against itself is 0.
    assert frechet_distance_1d(first + 7, second + 7) == pytest.approx(10.0)
    assert frechet_distance_1d(second, second) == 0.0
    with pytest.raises(ValueError, match="empty"):
        fit_gaussian(np.array([]))


def test_normalized_density_by_hand_and_integrates_to_one():
    edges, density = normalized_density(np.array([0.0, 1.0, 2.0]), bins=2)  # / max -> 0, .5, 1
    np.testing.assert_allclose(edges, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(density, [(1 / 3) / 0.5, (2 / 3) / 0.5])
    values = torch.rand(1000, generator=torch.Generator().manual_seed(0)) ** 4 * 3e-4
    for bins in (1, 7, 50):
        edges, density = normalized_density(values, bins=bins)
        assert float(np.sum(density * np.diff(edges))) == pytest.approx(1.0)
    # An explicit scale: values above it are counted in the last bin.
    edges, density = normalized_density(np.array([0.1, 4.0]), bins=2, scale=1.0)
    np.testing.assert_allclose(density, [1.0, 1.0])
    with pytest.raises(ValueError, match=">= 0"):
        normalized_density(np.array([-1.0, 1.0]))


def test_log_density_leaves_zeros_out_and_integrates_to_one():
    values = np.array([0.0, 0.0, 1e-12, 1e-3, 1.0])
    edges, density = log_density(values, bins=8, decades=8)  # unit-width bins -8..0
    np.testing.assert_allclose(edges, np.arange(-8.0, 1.0))
    expected = np.zeros(8)
    expected[0] = expected[5] = expected[7] = 1 / 3  # 1e-12 clipped to -8; -3; 0 in the last bin
    np.testing.assert_allclose(density, expected)
    edges, density = log_density(np.random.default_rng(0).exponential(size=500), bins=30)
    assert float(np.sum(density * np.diff(edges))) == pytest.approx(1.0)
    assert not log_density(np.zeros(4), bins=3)[1].any()


def test_near_zero_fraction():
    values = torch.tensor([0.0, 5e-4, 1e-3, 0.5, 1.0])
    assert near_zero_fraction(values, 1e-3) == pytest.approx(2 / 5)  # 1e-3 itself is not below
    assert near_zero_fraction(values, 0.6) == pytest.approx(4 / 5)
    assert near_zero_fraction(values, 1e-3, scale=1e3) == pytest.approx(4 / 5)  # below 1.0
    assert near_zero_fraction(np.zeros(3)) == 1.0
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        near_zero_fraction(values, 1.5)


def test_weighted_squared_change_by_hand():
    omega = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
    first = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    last = torch.tensor([[1.0, -1.0], [5.0, 3.0]])
    # 1 * 1**2 + 2 * 1**2 + 0 * 4**2 + 3 * 2**2
    assert weighted_squared_change(omega, first, last) == pytest.approx(15.0)
    assert weighted_squared_change(omega, first, first) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        weighted_squared_change(omega, first, last.T.reshape(4))


def test_change_by_importance_and_rank_correlation():
    omega = torch.tensor([1.0, 2.0, 3.0, 4.0])
    change = torch.tensor([4.0, 3.0, 2.0, 1.0])
    by = change_by_importance(omega, change, top=0.25, bottom=0.5)
    assert by == {"top": 1.0, "bottom": 3.5, "all": 2.5}
    assert rank_correlation(omega, change) == pytest.approx(-1.0)
    assert rank_correlation(omega, omega**3) == pytest.approx(1.0)
    assert rank_correlation(omega, torch.ones(4)) is None
    with pytest.raises(ValueError, match="fraction"):
        change_by_importance(omega, change, top=0.0)


def test_layer_keys_and_values():
    assert layer_key("features.1.weight") == ("features.1", None)
    assert layer_key("classifier.classifiers.3.classifier.bias") == ("head", 3)
    assert layer_key("classifier.heads.2.0.weight") == ("head.0", 2)
    assert layer_key("classifier.weight") == ("head", None)
    tensors = {
        "features.1.weight": torch.tensor([[1.0, 2.0]]),
        "features.1.bias": torch.tensor([3.0]),
        "classifier.classifiers.0.classifier.weight": torch.tensor([[10.0]]),
        "classifier.classifiers.1.classifier.weight": torch.tensor([[20.0]]),
    }
    values = layer_values(tensors, task=1)
    assert list(values) == ["features.1", "head"]
    assert values["features.1"].tolist() == [1.0, 2.0, 3.0]  # weight, then bias
    assert values["head"].tolist() == [20.0]
    assert layer_values(tensors, task=0)["head"].tolist() == [10.0]


def test_same_weights_compares_layers_across_single_and_multi_head_names():
    multi = {
        "features.1.weight": torch.ones(2, 2),
        "classifier.classifiers.0.classifier.weight": torch.zeros(3, 2),
        "classifier.classifiers.1.classifier.weight": torch.full((3, 2), 5.0),  # another task's head
    }
    single = {"features.1.weight": torch.ones(2, 2), "classifier.weight": torch.zeros(3, 2)}
    assert analysis._same_weights([multi, single])
    assert not analysis._same_weights([multi, {**single, "classifier.weight": torch.ones(3, 2)}])


# ------------------------------------------------------------------------ importance measures


def _tiny_model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    x = torch.randn(7, 3)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    return model, x, y


def _loop_per_sample(model, x, scalar):
    """Per-sample gradients by a plain Python loop: {name: (B, *shape)}."""
    rows = []
    for n in range(x.shape[0]):
        model.zero_grad()
        scalar(model(x[n : n + 1])[0], n).backward()
        rows.append({k: p.grad.detach().clone() for k, p in model.named_parameters()})
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def test_fisher_importance_equals_per_sample_loop():
    model, x, y = _tiny_model_and_data()
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    empirical = fisher_importance(model, batches, labels="empirical")
    grads = _loop_per_sample(model, x, lambda logits, n: torch.log_softmax(logits, -1)[y[n]])
    for name, g in grads.items():
        torch.testing.assert_close(empirical[name], (g**2).mean(0))
    # The mean of squared per-sample gradients, not the square of the mean gradient.
    assert not torch.allclose(empirical["2.weight"], grads["2.weight"].mean(0) ** 2)

    expected = fisher_importance(model, batches, labels="expected")
    with torch.no_grad():
        q = torch.softmax(model(x), -1)
    total = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    for c in range(3):
        g_c = _loop_per_sample(model, x, lambda logits, n, c=c: torch.log_softmax(logits, -1)[c])
        for k, g in g_c.items():
            total[k] += (q[:, c].reshape(-1, *[1] * (g.dim() - 1)) * g**2).sum(0)
    for name in total:
        torch.testing.assert_close(expected[name], total[name] / x.shape[0])
    with pytest.raises(ValueError, match="labels must be one of"):
        fisher_importance(model, batches, labels="sampled")
    with pytest.raises(ValueError, match="needs labels"):
        fisher_importance(model, [x])


def test_mas_importance_is_mean_absolute_per_sample_gradient():
    model, x, _ = _tiny_model_and_data()
    model.train()
    mas = mas_importance(model, [x[:3], (x[3:], None)])
    grads = _loop_per_sample(model, x, lambda out, n: out.pow(2).sum())
    for name, g in grads.items():
        torch.testing.assert_close(mas[name], g.abs().mean(0))
    assert not torch.allclose(mas["0.weight"], grads["0.weight"].mean(0).abs())
    assert model.training  # the caller's mode is restored


# ----------------------------------------------------------------------- the command line

N_TASKS = 3
HIDDEN = (8,)
BENCHMARK_OPTIONS = {"train_limit": 30, "eval_limit": 20}


def _fake_run(run_dir):
    """A run directory as `benchmarks.run --save-tensors` writes it, for spp, finetune and sgd.

    The weights after each task are the initial ones plus seeded noise (no training); SPP's saved
    importance is the running sum of entropy_importance on each task's training data, as the
    plugin accumulates it. Returns the saved payloads {method: [payload per task]}.
    """
    from avalanche.models.dynamic_modules import avalanche_model_adaptation

    from avalanche_spp import importance
    from avalanche_spp.importance import entropy_importance
    from benchmarks.baselines import uses_multi_head
    from benchmarks.models import make_model
    from benchmarks.records import build_record, write_json
    from benchmarks.streams import benchmark_info, make_benchmark

    stream = make_benchmark("permuted_digits", split="test", seed=0, n_tasks=N_TASKS, **BENCHMARK_OPTIONS)
    info = benchmark_info("permuted_digits", n_tasks=N_TASKS)
    saved = {}
    accuracies = {"spp": 0.9, "finetune": 0.8, "sgd": 0.7}
    for method, base in accuracies.items():
        torch.manual_seed(1)
        model = make_model(info, multi_head=uses_multi_head(method), hidden=HIDDEN)
        if uses_multi_head(method):
            for experience in stream.train_stream:  # evaluation creates every head
                avalanche_model_adaptation(model, experience)
        omega = None
        payloads = []
        for task in range(N_TASKS):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.1 * torch.randn_like(p))
            if method == "spp":
                x = [b[0] for b in analysis_measures.task_batches(stream, task)]
                forward = analysis_measures.task_forward(model, task)
                own = entropy_importance(model, x, forward)
                omega = own if omega is None else {n: omega[n] + own[n] for n in own}
            payload = {
                "task": task,
                "weights": {n: p.detach().clone() for n, p in model.named_parameters()},
                "omega": None if omega is None else {n: t.clone() for n, t in omega.items()},
            }
            folder = run_dir / "tensors" / f"{method}_seed0"
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(payload, folder / f"task{task}.pt")
            payloads.append(payload)
        saved[method] = payloads
        matrix = np.full((N_TASKS, N_TASKS), np.nan)
        for j in range(N_TASKS):
            matrix[j, : j + 1] = base - 0.1 * np.arange(j, -1, -1)
        config = {
            "benchmark": "permuted_digits",
            "split": "test",
            "n_tasks": N_TASKS,
            "data_root": None,
            "benchmark_options": BENCHMARK_OPTIONS,
            "train": {
                "hidden": list(HIDDEN),
                "dropout": 0.0,
                "spp_fisher": importance.DEFAULT_FISHER,
                "spp_clamp": importance.DEFAULT_CLAMP,
                "spp_taylor_of": importance.DEFAULT_TAYLOR_OF,
            },  # fmt: skip
        }
        record = build_record(
            method=method,
            benchmark="permuted_digits",
            seed=0,
            strength=10.0 if method == "spp" else None,
            config=config,
            accuracy_matrix=matrix,
            joint_accuracies=None,
            wall_time_s={"train": 1.0, "importance": 0.0, "total": 1.0},
            versions={"torch": "test"},
        )
        write_json(run_dir / "runs" / f"{method}_seed0.json", record)
    return saved


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
    from benchmarks.analyze import main

    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("run")
    saved = _fake_run(run_dir)
    out = run_dir / "looked"
    code = main([str(run_dir), "--out", str(out), "--heatmap-block", "4", "--quiet"])
    return run_dir, out, saved, code


def test_command_writes_every_promised_file(analyzed):
    _, out, _, code = analyzed
    assert code == 0
    for name in OUTPUT_FILES:
        assert (out / name).is_file(), name
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == PNG_MAGIC
    markdown = (out / "analysis.md").read_text()
    for name in OUTPUT_FILES:
        if name.endswith(".png"):
            assert f"]({name})" in markdown
    numbers = json.loads((out / "analysis.json").read_text())
    assert numbers["config"]["heatmap_block"] == 4
    assert numbers["run"]["same_weights_after_task_1"] is False  # the fake run's sgd differs
    assert numbers["command"].startswith("python -m benchmarks.analyze ")


def test_command_numbers_match_the_saved_tensors(analyzed):
    _, out, saved, _ = analyzed
    numbers = json.loads((out / "analysis.json").read_text())
    spp = saved["spp"]
    # The SPP importance recomputed on the rebuilt models equals the one saved during the "run".
    check = numbers["checks"]["saved_vs_recomputed_spp_importance"]["spp"]
    assert check["first_task"] < 1e-5 and check["last_task"] < 1e-5

    # Fig. 7(c) by hand: sum Omega_1 (W_T - W_1)^2 over features.1 (weight and bias).
    first, last, omega = spp[0]["weights"], spp[-1]["weights"], spp[0]["omega"]
    by_hand = sum(
        float((omega[n].double() * (last[n].double() - first[n].double()) ** 2).sum())
        for n in ("features.1.weight", "features.1.bias")
    )
    assert numbers["weighted_change"]["spp"]["features.1"]["weighted"] == pytest.approx(by_hand, rel=1e-4)

    # Fig. 7(b) by hand: task-1 importance vs the last task's own (difference of running sums).
    def values(o, names):
        return np.concatenate([o[n].double().numpy().ravel() for n in names])

    names = ("features.1.weight", "features.1.bias")
    a = values(spp[0]["omega"], names)
    b = values(spp[-1]["omega"], names) - values(spp[-2]["omega"], names)
    expected = (a.mean() - b.mean()) ** 2 + (a.std() - b.std()) ** 2
    assert numbers["frechet"]["spp"]["features.1"]["frechet"] == pytest.approx(expected, rel=1e-3)

    # "head": head 1's importance after task 1 against head T's after task T.
    def head(task):
        return [f"classifier.classifiers.{task}.classifier.{k}" for k in ("weight", "bias")]

    head_first = values(spp[0]["omega"], head(0))
    head_last = values(spp[-1]["omega"], head(2)) - values(spp[-2]["omega"], head(2))
    expected = (head_first.mean() - head_last.mean()) ** 2 + (head_first.std() - head_last.std()) ** 2
    assert numbers["frechet"]["spp"]["head"]["frechet"] == pytest.approx(expected, rel=1e-3)

    assert analysis._same_weights([spp[0]["weights"], saved["finetune"][0]["weights"]])

    # Fig. 7(a): read from the records' metrics_after_each_task.
    accuracy = numbers["accuracy"]
    assert accuracy["spp"]["mean"][0] == pytest.approx(0.9)
    assert accuracy["sgd"]["mean"][-1] == pytest.approx(np.mean([0.5, 0.6, 0.7]))

    # Fig. 6: three measures, densities that integrate to 1, near-zero fractions in [0, 1].
    dist = numbers["importance_distribution"]
    assert dist["measures"] == ["ewc", "mas", "spp"]
    assert set(dist["groups"]) == {"all", "features.1", "head"}
    widths = np.diff(dist["edges"])
    for group in dist["groups"].values():
        for row in group.values():
            assert float(np.sum(np.asarray(row["density"]) * widths)) == pytest.approx(1.0)
            assert 0.0 <= row["near_zero_fraction"] <= 1.0
    spp_all = dist["groups"]["all"]["spp"]
    saved_all = torch.cat([t.reshape(-1) for n, t in spp[0]["omega"].items() if layer_key(n)[1] in (None, 0)])
    assert spp_all["near_zero_fraction"] == pytest.approx(near_zero_fraction(saved_all), abs=1e-9)

    # Fig. 8: the hidden layer, changes after task 2 and task T, numbers over the whole layer.
    heat = numbers["heatmaps"]
    assert heat["layer"] == "features.1"
    assert heat["methods"]["sgd"]["tasks_shown"] == [2, 3]
    change = (last["features.1.weight"] - first["features.1.weight"]).abs()
    by = change_by_importance(omega["features.1.weight"], change)
    assert heat["methods"]["spp"]["mean_change_by_importance"] == pytest.approx(by)


def test_command_refuses_a_run_without_tensors(tmp_path, analyzed, capsys):
    from benchmarks.analyze import main

    run_dir, _, _, _ = analyzed
    bare = tmp_path / "bare"
    (bare / "runs").mkdir(parents=True)
    for path in (run_dir / "runs").glob("*.json"):
        (bare / "runs" / path.name).write_text(path.read_text())
    assert main([str(bare), "--quiet"]) == 2
    assert "--save-tensors" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main([str(run_dir), "--near-zero", "2"])
    assert exit_info.value.code == 2
    assert main([str(run_dir), "--methods", "lwf", "--quiet"]) == 2
    assert main([str(run_dir), "--layer", "features.9", "--quiet"]) == 2
    assert "features.1" in capsys.readouterr().err  # the message names the layers there are


def test_eval_mode_gives_every_module_its_own_mode_back_even_on_error():
    from benchmarks.analysis_measures import eval_mode

    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.BatchNorm1d(2))
    model.train()
    model[2].eval()  # a frozen BatchNorm inside a training model
    with pytest.raises(RuntimeError, match="inside"):
        with eval_mode(model):
            assert not any(m.training for m in model.modules())
            raise RuntimeError("inside")
    assert [m.training for m in model.modules()] == [True, True, True, False]
