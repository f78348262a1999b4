"""Stability decay: per experience, the stiffest SPP strength that leaves the new task learnable.

A harness experiment (``TrainConfig.spp_auto_drop``), after the continual hyper-parameter
framework of De Lange et al. (2021, "A continual learning survey: defying forgetting in
classification tasks", IEEE TPAMI), which sets a regulariser's strength per task from the new
task's data alone:

1. train the new experience with ``lam = 0`` (fine-tuning, the most plastic run) and note its
   accuracy ``A*`` on the experience's own training data;
2. from the run's strength (``lam_max``) down the grid ``AUTO_GRID``, train the experience again
   from the same start (the weights, the new head's initial values, the optimiser's state, SPP's
   importances and anchors, the random number generators) until its accuracy on that data is at
   least ``(1 - drop) A*``; keep that run. When no strength of the grid holds it, the experience
   is fine-tuned (``lam 0``).

Nothing of earlier tasks is looked at: the rule trades only the new task's learning against the
penalty. Unlike De Lange et al., the learning rate is the stream's own (no search for the most
plastic one) and the accuracy is measured on the training data (no held-out part of the task).
It costs up to ``2 + len(grid)`` trainings of each experience after the first; the first
experience has no importance yet and is trained once.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from avalanche.core import SupervisedPlugin
from avalanche.models.utils import avalanche_forward
from torch.utils.data import DataLoader

from avalanche_spp.importance import DivergedError
from avalanche_spp.plugin import SPPPlugin
from benchmarks.checkpoint import restore_rng_states, rng_states

AUTO_GRID: tuple[float, ...] = (300.0, 100.0, 30.0, 10.0, 3.0, 1.0, 0.3, 0.1)
"""Strengths tried, stiffest first (half a decade apart; SPP's validation grid and 0.1)."""


class _SameStart(SupervisedPlugin):
    """Puts every try of one experience at the same start.

    Its ``before_training_exp`` runs after Avalanche adapted the model (a new head) and rebuilt the
    optimiser, and before SPP's: the first call keeps the weights (the new head's initial values
    included), the optimiser's state, SPP's state and the random number generators (after the new
    head drew its initial values, so every try shuffles the data alike); every later call puts
    them back.
    """

    def __init__(self, spp: SPPPlugin) -> None:
        super().__init__()
        self.spp = spp
        self.saved: dict[str, Any] | None = None

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        optimizer = strategy.optimizer
        if self.saved is None:
            self.saved = {
                "model": {k: v.detach().clone() for k, v in strategy.model.state_dict().items()},
                "optimizer": _copy_state(optimizer),
                "spp": self.spp.state_dict(),
                "rng": rng_states(),  # after the new head drew its initial values
            }
            return
        restore_rng_states(self.saved["rng"])
        strategy.model.load_state_dict(self.saved["model"])
        optimizer.state.clear()
        optimizer.state.update({p: copy.deepcopy(value) for p, value in self.saved["optimizer"].items()})
        lam = self.spp.lam  # the try's own strength, set before this call
        self.spp.load_state_dict(self.saved["spp"])
        self.spp.lam = lam


def _copy_state(optimizer: torch.optim.Optimizer) -> dict[Any, Any]:
    """The optimiser's per-parameter state, values copied, keyed by the live parameters."""
    return {p: copy.deepcopy(value) for p, value in optimizer.state.items()}


def train_with_stability_decay(
    strategy: Any,
    experience: Any,
    *,
    drop: float,
    reset_optimizer: bool,
    grid: Sequence[float] | None = None,
    start: float | None = None,
) -> dict[str, Any] | None:
    """Train ``experience`` at the strength stability decay picks (module docstring).

    Args:
        start: the stiffest strength to try, when below the run's (``spp_auto_monotone``: the
            previous task's choice, so the strength never grows from task to task; a previous
            choice of 0 starts the search again at the run's strength).

    Returns:
        ``None`` for an experience with no importance yet (trained once, as usual); else
        ``{"reference_acc", "tries": [{"lam", "acc"}], "chosen_lam"}``, accuracies on the
        experience's training data (NaN for a try that diverged).
    """
    if isinstance(drop, bool) or not (isinstance(drop, (int, float)) and 0 <= drop < 1):
        raise ValueError(f"drop must be a number in [0, 1), got {drop!r}")
    spp = next((p for p in strategy.plugins if isinstance(p, SPPPlugin)), None)
    if spp is None:
        raise ValueError("stability decay sets SPP's strength: the strategy has no SPPPlugin")
    if not spp.omega:
        strategy.train(experience, reset_optimizer_state=reset_optimizer)
        return None
    lam_max = spp.lam  # the run's strength: the stiffest tried
    grid = AUTO_GRID if grid is None else grid
    top = lam_max if not start else min(start, lam_max)
    keeper = _SameStart(spp)
    strategy.plugins.insert(0, keeper)
    tries: list[dict[str, float]] = []

    def attempt(lam: float) -> float:
        spp.lam = lam
        try:
            strategy.train(experience, reset_optimizer_state=reset_optimizer)
            if not all(bool(torch.isfinite(p).all()) for p in strategy.model.parameters()):
                raise DivergedError("weights not finite")
            acc = training_accuracy(strategy, experience)
        except DivergedError:
            acc = math.nan
        tries.append({"lam": lam, "acc": acc})
        return acc

    try:
        reference = attempt(0.0)
        chosen = 0.0
        for lam in sorted((g for g in grid if g <= top), reverse=True):
            if attempt(lam) >= (1 - drop) * reference:  # NaN (diverged) is never accepted
                chosen = lam
                break
        else:
            attempt(0.0)  # no strength leaves the task learnable: fine-tune it (the same run again)
    finally:
        strategy.plugins.remove(keeper)
        spp.lam = lam_max
    return {"reference_acc": reference, "tries": tries, "chosen_lam": chosen}


@torch.no_grad()
def training_accuracy(strategy: Any, experience: Any, batch_size: int = 512) -> float:
    """The model's accuracy on the experience's training data (evaluation mode, eval transforms)."""
    model = strategy.model
    was_training = model.training
    model.eval()
    correct = total = 0
    # its own generator: iterating a loader draws a seed from the global RNG otherwise, which would
    # shift the training shuffles of later tasks
    loader = DataLoader(
        experience.dataset.eval(), batch_size=batch_size, shuffle=False, generator=torch.Generator()
    )
    for x, y, t in loader:
        x, y, t = x.to(strategy.device), y.to(strategy.device), t.to(strategy.device)
        correct += int((avalanche_forward(model, x, t).argmax(1) == y).sum())
        total += len(y)
    model.train(was_training)
    return correct / total
