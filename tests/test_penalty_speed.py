"""The hot-path timing command writes its JSON and the markdown table the docs include."""

from __future__ import annotations

import json

from benchmarks import penalty_speed


def test_penalty_speed_writes_json_and_a_table_of_the_same_numbers(tmp_path):
    out = tmp_path / "speed.json"
    assert penalty_speed.main(["--out", str(out), "--repeats", "2"]) == 0
    result = json.loads(out.read_text())
    for label in ("penalty_mlp", "penalty_vgg9"):
        row = result[label]
        assert row["gradient_ms"] > 0 and row["fused_ms"] > 0 and row["python_loop_ms"] > 0
    assert result["penalty_mlp"]["n_scalars"] == 784 * 512 + 512 + 512 * 256 + 256 + 5 * (2 * 256 + 2)
    table = out.with_suffix(".md").read_text()
    assert f"{result['penalty_mlp']['gradient_ms']:.2f}" in table
    assert f"{result['importance_mlp']['per_sample_samples_per_s']:,.0f} samples/s" in table
