"""SPP ends with a higher ACC and forgets less than Naive: split and permuted digits (MLP), and a CNN.

The budget is one at which Naive really forgets (a 256-128 MLP, SGD lr 0.1 with momentum 0.9,
5 epochs per task; at lr 0.01 or with a 32-unit MLP split digits is so easy that Naive hardly
forgets and a penalty can only cost plasticity). SPP's lambda is tuned as the comparison tunes
it: on the validation split carved from the training data, seed 0, never on test. Then seeds
0, 1, 2 run on the test split. ``docs/results/split_digits`` holds the same protocol for all
nine methods (``python -m benchmarks.run --benchmark split_digits ...``).
"""

from __future__ import annotations

import numpy as np
import torch

from avalanche_spp import SPPPlugin
from avalanche_spp.metrics import all_metrics
from benchmarks.baselines import TrainConfig
from benchmarks.cnn_digits import cnn_run
from benchmarks.experiment import run_method, tune_strength

CONFIG = TrainConfig(epochs=5, lr=0.1, momentum=0.9, hidden=(256, 128))


def _mean_metrics(method: str, strength: float | None, benchmark: str = "split_digits") -> dict[str, float]:
    metrics = [
        run_method(method, benchmark=benchmark, seed=seed, train=CONFIG, strength=strength)["metrics"]
        for seed in (0, 1, 2)
    ]
    return {key: float(np.mean([m[key] for m in metrics])) for key in ("acc", "bwt")}


def test_spp_beats_naive_on_split_digits_over_three_seeds():
    torch.set_num_threads(1)
    lam, rows = tune_strength(
        (0.3, 1.0, 3.0, 10.0, 30.0),  # the default grid's middle five (SGD at lr 0.1 diverges above)
        lambda s: run_method(
            "spp", benchmark="split_digits", seed=0, train=CONFIG, strength=s, split="validation"
        ),
    )
    assert any(r["status"] == "ok" for r in rows), rows
    naive, spp = _mean_metrics("finetune", None), _mean_metrics("spp", lam)
    report = {"lam": lam, "naive": naive, "spp": spp}
    assert naive["bwt"] < -0.02, report  # Naive does forget at this budget
    assert spp["acc"] > naive["acc"], report
    assert abs(spp["bwt"]) < abs(naive["bwt"]), report
    # SPPPlugin() with no argument (the default strength): at most half of Naive's forgetting,
    # and no lower ACC.
    default = _mean_metrics("spp", SPPPlugin().lam)
    report["default"] = default
    assert abs(default["bwt"]) <= abs(naive["bwt"]) / 2, report
    assert default["acc"] >= naive["acc"], report


def test_default_spp_halves_forgetting_on_permuted_digits():
    """A second stream, where every task shares all ten classes: SPPPlugin() with no argument."""
    torch.set_num_threads(1)
    naive, default = (
        _mean_metrics("finetune", None, "permuted_digits"),
        _mean_metrics("spp", None, "permuted_digits"),
    )
    report = {"naive": naive, "default": default}  # measured: naive 77.7 / -22.5, default (10) 92.0 / -1.4
    assert naive["bwt"] < -0.1, report
    assert abs(default["bwt"]) <= abs(naive["bwt"]) / 2, report
    assert default["acc"] > naive["acc"] + 0.05, report


# ----------------------------------------------------------------------------- a CNN stream
def test_spp_halves_the_forgetting_of_a_vgg9():
    """The CNN the paper uses, on 8x8 digit images, seeds 0-4: SPP (lam 100) against Naive, medians.

    ``python -m benchmarks.cnn_digits`` runs the same stream and keeps every seed
    (``docs/results/cnn_digits``): medians Naive 84.1 / -19.1, lam 100 96.0 / -2.7; lam 3 gives
    88.8 / -11.3 and lam 10 (the default) 85.2 / -15.6, one seed of five losing its tasks: this toy
    stream (240 images, about 24 steps per task) scatters too much to test the default on, so the
    test names its strength; the default is checked on a CNN stream of working size by
    ``python -m benchmarks.cnn_digits --stream fmnist`` (docs/method.md, section 4). Medians over
    five seeds: one run that loses every task while it learns the last one does not decide them.
    """
    torch.set_num_threads(1)
    results = {}
    for name, plugins in (("naive", lambda: []), ("spp", lambda: [SPPPlugin(lam=100.0)])):
        metrics = [all_metrics(cnn_run(plugins(), seed)) for seed in range(5)]
        results[name] = {key: float(np.median([m[key] for m in metrics])) for key in ("acc", "bwt")}
    assert results["naive"]["bwt"] < -0.1, results  # Naive does forget
    assert abs(results["spp"]["bwt"]) <= abs(results["naive"]["bwt"]) / 2, results
    assert results["spp"]["acc"] > results["naive"]["acc"] + 0.03, results
