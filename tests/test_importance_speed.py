"""benchmarks.importance_speed runs without Avalanche and writes what it measured."""

from __future__ import annotations

import json

from benchmarks.importance_speed import FORMS, main


def _spy_on_entropy_importance(monkeypatch, with_args=False):
    """Every call of ``entropy_importance`` the benchmark makes: its keywords (and args if asked)."""
    import benchmarks.importance_speed as speed

    seen = []
    real = speed.entropy_importance
    record = (lambda a, k: (a, k)) if with_args else (lambda a, k: k)
    monkeypatch.setattr(
        speed, "entropy_importance", lambda *a, **k: seen.append(record(a, k)) or real(*a, **k)
    )
    return seen


def test_importance_speed_writes_every_form_and_its_cost_in_epochs(tmp_path):
    out = tmp_path / "speed.json"
    assert main(["--models", "mlp", "--samples", "16", "--train-steps", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (row,) = result["models"]
    assert row["model"] == "mlp" and row["parameters"] == 784 * 512 + 512 + 512 * 256 + 256 + 5 * (
        256 * 2 + 2
    )
    assert [(f["clamp"], f["fisher"]) for f in row["importance"]] == list(FORMS)
    for form in row["importance"]:
        assert form["images_per_s"] > 0
        assert form["epochs"] == row["train_images_per_s"] / form["images_per_s"]
    table = out.with_suffix(".md").read_text()
    assert table.count("\n| ") == len(FORMS) + 1 and "python -m benchmarks.importance_speed" in table


def test_the_per_sample_backend_reaches_every_timed_pass(tmp_path, monkeypatch):

    seen = _spy_on_entropy_importance(monkeypatch)
    out = tmp_path / "speed.json"
    argv = ["--models", "mlp", "--samples", "8", "--train-steps", "1", "--out", str(out)]
    assert main([*argv, "--per-sample-backend", "vmap"]) == 0
    assert {k["per_sample_backend"] for k in seen} == {"vmap"}
    assert {(k["clamp"], k["fisher"]) for k in seen} == set(FORMS)
    assert json.loads(out.read_text())["config"]["per_sample_backend"] == "vmap"
    assert "per-sample backend vmap" in out.with_suffix(".md").read_text()


def test_taylor_of_and_the_importance_batch_reach_every_timed_pass(tmp_path, monkeypatch, capsys):
    import pytest

    seen = _spy_on_entropy_importance(monkeypatch, with_args=True)
    out = tmp_path / "speed.json"
    argv = ["--models", "mlp", "--samples", "8", "--train-steps", "1", "--out", str(out)]
    assert main([*argv, "--taylor-of", "entropy", "--importance-batch-size", "3"]) == 0
    assert {k["taylor_of"] for _, k in seen} == {"entropy"}
    assert {tuple(len(x) for x, _ in a[1]) for a, _ in seen} == {(3, 3, 2)}  # 8 samples in batches of 3
    assert "taylor_of entropy, importance batch 3" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        main([*argv, "--importance-batch-size", "0"])
    assert "--importance-batch-size must be a positive int, got 0" in capsys.readouterr().err


def test_the_timed_pass_chunks_importance_batches_by_the_training_batch_as_the_plugin(tmp_path, monkeypatch):

    seen = _spy_on_entropy_importance(monkeypatch)
    out = tmp_path / "speed.json"
    argv = ["--models", "mlp", "--samples", "8", "--train-steps", "1", "--out", str(out)]
    assert main(argv) == 0
    chunks = {(k["fisher"], k["chunk_size"]) for k in seen}
    assert chunks == {("batch", 64), ("per_sample", None)}  # the training batch, where the plugin uses it
    assert "in chunks of the training batch 64" in out.with_suffix(".md").read_text()
    seen.clear()
    assert main([*argv, "--whole-batches"]) == 0
    assert {k["chunk_size"] for k in seen} == {None}
    assert "in chunks of" not in out.with_suffix(".md").read_text()


def test_a_training_batch_below_one_is_refused(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["--models", "mlp", "--train-batch-size", "0", "--out", "unused.json"])
    assert "--train-batch-size must be a positive int, got 0" in capsys.readouterr().err
