"""benchmarks.importance_speed runs without Avalanche and writes what it measured."""

from __future__ import annotations

import json

from benchmarks.importance_speed import FORMS, main


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
