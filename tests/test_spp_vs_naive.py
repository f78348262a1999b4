"""Split digits, multi-head MLP, 3 seeds: SPP forgets less than Naive (issue 2's end-to-end check).

Measured with this budget (see the closing note of issue 2): SPP's BWT is closer to zero than
Naive's, but its final ACC is about one point lower (the penalty costs plasticity on later tasks),
so the test asserts the forgetting and bounds the ACC cost rather than claiming a higher ACC.
"""

from __future__ import annotations

import numpy as np
import torch

from avalanche_spp.baselines import TrainConfig
from avalanche_spp.experiment import run_method


def test_spp_forgets_less_than_naive_on_split_digits_over_three_seeds():
    torch.set_num_threads(1)
    config = TrainConfig(epochs=5, lr=0.1, hidden=(32,))
    results = {}
    for method, strength in (("finetune", None), ("spp", 1000.0)):
        metrics = [
            run_method(method, benchmark="split_digits", seed=seed, train=config, strength=strength)[
                "metrics"
            ]
            for seed in (0, 1, 2)
        ]
        results[method] = {key: float(np.mean([m[key] for m in metrics])) for key in ("acc", "bwt")}
    assert results["finetune"]["bwt"] < -0.01, results  # Naive does forget here
    assert abs(results["spp"]["bwt"]) < 0.5 * abs(results["finetune"]["bwt"]), results
    assert results["spp"]["acc"] > results["finetune"]["acc"] - 0.02, results
