"""Issue 2's end-to-end check: on split digits (multi-head MLP, 3 seeds), SPP forgets less than Naive."""

from __future__ import annotations

import numpy as np
import torch

from avalanche_spp.baselines import TrainConfig
from avalanche_spp.experiment import run_method


def test_spp_beats_naive_on_split_digits_over_three_seeds():
    torch.set_num_threads(1)
    config = TrainConfig(epochs=2, lr=0.1, hidden=(256, 128))
    results = {}
    for method, strength in (("finetune", None), ("spp", 1000.0)):
        metrics = [
            run_method(method, benchmark="split_digits", seed=seed, train=config, strength=strength)[
                "metrics"
            ]
            for seed in (0, 1, 2)
        ]
        results[method] = {key: float(np.mean([m[key] for m in metrics])) for key in ("acc", "bwt")}
    assert results["spp"]["acc"] > results["finetune"]["acc"], results
    assert abs(results["spp"]["bwt"]) < abs(results["finetune"]["bwt"]), results
