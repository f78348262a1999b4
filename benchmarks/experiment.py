"""Run one method on one benchmark with one seed, and return its record.

This is the training logic behind ``python -m benchmarks.run`` and ``benchmarks.sweep``: build the
stream, the model and the method's strategy; train on each experience in turn and evaluate on every
task after each (``P[j][i]``); time the training and the importance passes; hand back a record
(:func:`benchmarks.records.build_record`) with the accuracy matrix and the paper's metrics.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from tqdm.auto import tqdm

from avalanche_spp.importance import DivergedError
from avalanche_spp.plugin import SPPPlugin, sgd_strength_limit
from benchmarks.auto_strength import train_with_stability_decay
from benchmarks.baselines import (
    STRENGTH_NAMES,
    TrainConfig,
    build_strategy,
    default_strength,
    uses_multi_head,
)
from benchmarks.checkpoint import PROGRESS_KEYS, load_run_checkpoint, save_run_checkpoint
from benchmarks.models import make_model
from benchmarks.records import build_record
from benchmarks.streams import benchmark_info, make_benchmark

log = logging.getLogger(__name__)

_EXPERIENCE_KEY = re.compile(r"^Top1_Acc_Exp/eval_phase/(?P<stream>[^/]+)/Task\d+/Exp(?P<exp>\d+)$")

TaskEndHook = Callable[[int, Any], None]


def run_method(
    method: str,
    *,
    benchmark: str,
    seed: int,
    train: TrainConfig,
    strength: float | None = None,
    split: str = "test",
    data_root: str | Path | None = None,
    n_tasks: int | None = None,
    benchmark_options: Mapping[str, Any] | None = None,
    joint_accuracies: list[float] | None = None,
    progress: bool = False,
    on_task_end: TaskEndHook | None = None,
    checkpoint: str | Path | None = None,
    on_divergence: str = "raise",
) -> dict[str, Any]:
    """Train ``method`` on ``benchmark`` and return its run record.

    Args:
        method: a name from :data:`benchmarks.baselines.METHODS`.
        benchmark: a name from :func:`benchmarks.streams.available_benchmarks`.
        seed: seeds torch, numpy and random (Avalanche's ``RNGManager``) and the benchmark's
            validation split, permutations and sub-sampling.
        train: the budget shared by all methods.
        strength: the method's hyper-parameter (``None``: its default).
        split: ``"test"`` for final numbers, ``"validation"`` while tuning.
        data_root: folder of file-based data sets.
        n_tasks: a shorter (split) or longer (permuted) sequence than the default.
        benchmark_options: e.g. ``{"train_limit": 500}``; image benchmarks also take
            ``image_size`` (pixels per side; the model is built for that size, see
            :func:`benchmarks.streams.benchmark_info`).
        joint_accuracies: ``m_i`` of joint training on the same split and seed, for FWT.
        progress: show a progress bar over the experiences (tqdm, on stderr, only when stderr is a
            terminal; a log file gets one line per finished run instead). Avalanche's
            ``InteractiveLogger`` is not used: it prints every metric and costs more than the
            training of these small models.
        on_task_end: called as ``on_task_end(j, strategy)`` after training task ``j`` and its
            evaluation (``benchmarks.run --save-tensors`` stores weights and importances there).
        checkpoint: a file for resuming. After every experience (training and evaluation) the
            whole strategy (model, optimiser, plugins' state), the accuracy rows so far and the
            random number generators are saved there atomically (a temporary file, then a
            rename). If the file exists when the run starts, the run continues after the last
            saved experience and ends with the same record as an uninterrupted run (bit-identical
            on the CPU). The file is removed once the run is complete. ``joint`` trains once and
            is not checkpointed.
        on_divergence: what to do when training diverges (weights or SPP importance not finite):
            ``"raise"`` :class:`~avalanche_spp.importance.DivergedError` (the tuner's choice: that
            strength failed), or ``"record"``: stop training, evaluate the diverged model on the
            remaining rows (chance-level accuracy) and note the task in the record's
            ``diverged_at_task`` (final runs: a method that diverges on a seed is charged for it,
            not left out of the mean).

    Returns:
        A record (see :func:`benchmarks.records.build_record`); ``joint``'s accuracy matrix
        repeats its final per-task accuracies in every row, so its BWT and SMT are 0.
    """
    _check_run_arguments(train, checkpoint, on_divergence)
    RNGManager.set_random_seeds(seed)
    options = dict(benchmark_options or {})
    stream = make_benchmark(
        benchmark, split=split, seed=seed, data_root=data_root, n_tasks=n_tasks, **options
    )
    info = benchmark_info(benchmark, n_tasks=n_tasks, image_size=options.get("image_size"))
    multi_head = uses_multi_head(method, train.single_head)
    model = make_model(info, multi_head=multi_head, hidden=train.hidden, dropout=train.dropout)
    with warnings.catch_warnings():  # "No loggers specified": intended, the record is the log
        warnings.filterwarnings("ignore", message="No loggers specified")
        evaluator = EvaluationPlugin(accuracy_metrics(experience=True), loggers=[])
    strategy = build_strategy(method, model, train, strength=strength, evaluator=evaluator)
    n = len(stream.train_stream)
    state = _RunState(matrix=np.full((n, n), np.nan))
    label = f"{method} {split} seed {seed}" + ("" if strength is None else f" strength {strength:g}")
    # A bar only where a person watches; in a log file, one line per finished run (below).
    bar = tqdm(total=n, desc=label, unit="task", disable=not (progress and sys.stderr.isatty()), leave=False)
    if method == "joint":
        joint_accuracies = _train_joint(strategy, stream, state, on_task_end, bar)
    else:
        fingerprint = {
            "method": method,
            "benchmark": benchmark,
            "seed": seed,
            "strength": _used_strength(method, strength),
            "split": split,
            "n_tasks": n,
            "benchmark_options": options,
            "train": asdict(train),
            "model": {name: tuple(p.shape) for name, p in model.named_parameters()},
        }
        checkpoint = None if checkpoint is None else Path(checkpoint)
        if checkpoint is not None and checkpoint.exists():
            strategy = state.resume(strategy, checkpoint, fingerprint)
            log.info("resumed %s seed %d after task %d (%s)", method, seed, state.next_task - 1, checkpoint)
        for j in range(state.next_task, n):
            _train_and_evaluate_task(strategy, stream, j, state, train, method, seed, on_divergence)
            if on_task_end is not None:
                on_task_end(j, strategy)
            bar.update(1)
            bar.set_postfix(acc=f"{np.mean(state.matrix[j, : j + 1]):.3f}")
            if checkpoint is not None and j + 1 < n:
                save_run_checkpoint(strategy, checkpoint, state.progress(fingerprint))
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)  # the record returned below holds everything
    bar.close()
    importance_seconds = sum(sum(p.importance_time_s) for p in strategy.plugins if isinstance(p, SPPPlugin))
    config = {"benchmark": benchmark, "split": split, "n_tasks": n,
              "data_root": None if data_root is None else str(data_root), "benchmark_options": options,
              "input_shape": list(info.input_shape),  # what the model was built for (image_size)
              "train": asdict(train), "torch_threads": torch.get_num_threads()}  # fmt: skip
    record = build_record(
        method=method,
        benchmark=benchmark,
        seed=seed,
        strength=_used_strength(method, strength),
        config=config,
        accuracy_matrix=state.matrix,
        joint_accuracies=joint_accuracies,
        wall_time_s={
            "train": state.train_seconds,
            "importance": importance_seconds,
            "total": state.train_seconds,
        },
    )
    record["diverged_at_task"] = state.diverged_at
    record["tasks_trained_in_this_call"] = state.tasks_trained
    log.info(
        "finished %s: ACC %.2f, BWT %.2f (%.1f s training)",
        label, 100 * record["metrics"]["acc"], 100 * record["metrics"]["bwt"], state.train_seconds,
    )  # fmt: skip
    if state.penalty_importance is not None:
        record["spp_importance"] = state.penalty_importance
    if state.spp_auto:
        record["spp_auto"] = state.spp_auto
    return record


def _check_run_arguments(train: TrainConfig, checkpoint: str | Path | None, on_divergence: str) -> None:
    if on_divergence not in ("raise", "record"):
        raise ValueError(f"on_divergence must be 'raise' or 'record', got {on_divergence!r}")
    if checkpoint is not None and train.spp_auto_drop is not None:
        raise ValueError(
            "spp_auto_drop (stability decay, a harness experiment) keeps its tries in the record "
            "only, not in checkpoints: run it without checkpoint"
        )


@dataclass
class _RunState:
    """What a run has done so far: what a checkpoint saves, and what the record is made of."""

    matrix: np.ndarray  # (T, T) accuracies, NaN where not measured yet
    train_seconds: float = 0.0
    next_task: int = 0
    diverged_at: int | None = None
    penalty_importance: dict[str, Any] | None = None
    tasks_trained: list[int] = field(default_factory=list)  # by this call (a resumed run: the rest)
    spp_auto: list[dict[str, Any] | None] = field(default_factory=list)  # stability decay's tries per task

    def progress(self, fingerprint: dict[str, Any]) -> dict[str, Any]:
        """What a checkpoint saves: the fingerprint and the fields named by ``PROGRESS_KEYS``."""
        state = {k: getattr(self, k) for k in PROGRESS_KEYS if k != "fingerprint"}
        return {"fingerprint": fingerprint} | state

    def resume(self, strategy: Any, checkpoint: Path, fingerprint: dict[str, Any]) -> Any:
        strategy, saved = load_run_checkpoint(strategy, checkpoint, fingerprint)
        for key in PROGRESS_KEYS:
            if key != "fingerprint":
                setattr(self, key, saved[key])
        return strategy


def _train_joint(strategy: Any, stream: Any, state: _RunState, on_task_end: Any, bar: Any) -> list[float]:
    """Joint training on every experience at once; every row of the matrix is its final accuracies."""
    n = len(stream.train_stream)
    start = time.perf_counter()
    strategy.train(stream.train_stream)
    state.tasks_trained = list(range(n))
    state.train_seconds = time.perf_counter() - start
    accuracies = _experience_accuracies(strategy.eval(stream.test_stream), n)
    state.matrix[:] = accuracies
    if on_task_end is not None:
        on_task_end(n - 1, strategy)
    bar.update(n)
    return list(accuracies)


def _train_and_evaluate_task(
    strategy: Any, stream: Any, j: int, state: _RunState, train: TrainConfig, method: str, seed: int,
    on_divergence: str,
) -> None:  # fmt: skip
    """Train experience ``j`` (unless the run diverged before), evaluate every task, update ``state``."""
    n = len(stream.train_stream)
    if state.diverged_at is None:
        state.tasks_trained.append(j)
        start = time.perf_counter()
        try:
            # train.reset_optimizer: a fresh optimiser state per task (the harness's protocol), or
            # Avalanche's default: momentum and Adam's moments kept across experiences.
            if method == "spp" and train.spp_auto_drop is not None:  # lam per task (benchmarks.auto_strength)
                last = next((a["chosen_lam"] for a in reversed(state.spp_auto) if a), None)
                state.spp_auto.append(train_with_stability_decay(
                    strategy, stream.train_stream[j], drop=train.spp_auto_drop,
                    reset_optimizer=train.reset_optimizer, start=last if train.spp_auto_monotone else None,
                ))  # fmt: skip
            else:
                strategy.train(stream.train_stream[j], reset_optimizer_state=train.reset_optimizer)
            _check_finite_weights(strategy.model, method, j)
        except DivergedError as error:
            if on_divergence == "raise":
                raise
            log.warning("%s seed %d: %s; recorded, evaluated as it is", method, seed, error)
            state.diverged_at = j
        state.train_seconds += time.perf_counter() - start
    state.matrix[j] = _experience_accuracies(strategy.eval(stream.test_stream), n)
    spp_plugins = [p for p in strategy.plugins if isinstance(p, SPPPlugin)]
    if j == n - 2 and spp_plugins and spp_plugins[0].omega:
        # The importance the penalty applies while the last task is learned (the largest
        # in force at any time: it only grows), and the lambda SGD can bear with it.
        state.penalty_importance = importance_summary(
            spp_plugins[0].omega, lr=train.lr, momentum=train.momentum
        )
        if getattr(spp_plugins[0], "curvatures", None):  # SPPVariantPlugin(stiffness="curvature")
            state.penalty_importance["curvatures"] = list(spp_plugins[0].curvatures)
    state.next_task = j + 1


def importance_summary(
    omega: Mapping[str, torch.Tensor], *, lr: float, momentum: float, shared_prefix: str = "features."
) -> dict[str, Any]:
    """Statistics of the accumulated importance, and the largest ``lambda`` plain SGD can bear.

    The penalty ``lam * Omega_k (W_k - W*_k)^2`` is a quadratic of curvature ``2 lam Omega_k``
    in each weight. Heavy-ball SGD (learning rate ``eta``, momentum ``mu``) on a quadratic of
    curvature ``h`` is stable only while ``eta * h < 2 (1 + mu)``, so a weight that the new task's
    loss moves away from ``W*`` oscillates with growing amplitude once
    ``lam > (1 + mu) / (eta * Omega_k)``. The weights of an old task's head get no gradient from
    the new task and stay at ``W*``, so the limit that matters is the one of the shared weights
    (names starting with ``shared_prefix``; the models of this package keep them in
    ``features``).

    Returns:
        ``n``, ``max``, ``mean``, ``median_nonzero``, ``fraction_zero`` of ``Omega`` over all
        weights; ``max_shared`` over the shared ones; ``lam_stability_limit`` ``= (1 + mu) /
        (eta * max_shared)`` (over all weights when none is shared; ``None`` when every importance
        is 0).
    """
    values = torch.cat([t.detach().flatten().double().cpu() for t in omega.values()])
    shared = [t.detach().flatten().double().cpu() for n, t in omega.items() if n.startswith(shared_prefix)]
    nonzero = values[values > 0]
    top = float(values.max()) if values.numel() else 0.0
    top_shared = float(torch.cat(shared).max()) if shared else None
    limiting = top if top_shared is None else top_shared
    return {
        "n": int(values.numel()),
        "max": top,
        "max_shared": top_shared,
        "mean": float(values.mean()) if values.numel() else 0.0,
        "median_nonzero": float(nonzero.median()) if nonzero.numel() else 0.0,
        "fraction_zero": float((values == 0).double().mean()) if values.numel() else 0.0,
        "lam_stability_limit": (
            sgd_strength_limit({"lr": lr, "momentum": momentum}) / limiting if limiting > 0 else None
        ),
    }


def tune_strength(
    grid: Sequence[float], evaluate: Callable[[float], Mapping[str, Any]]
) -> tuple[float, list[dict[str, Any]]]:
    """Pick the strength with the best validation ACC (the smallest one on a tie).

    Args:
        grid: candidate strengths, tried from the smallest up.
        evaluate: runs the method at a strength on the validation split and returns its record.
            A run that diverges (:class:`~avalanche_spp.importance.DivergedError`, or a non-finite
            ACC) is kept as a row with ``acc`` ``None`` and ``status`` ``"diverged"`` and never
            chosen. A stronger penalty only makes the SGD step less stable, so the strengths above
            a diverged one are not run: their rows have ``status`` ``"skipped"``.

    Returns:
        ``(best, rows)``; each row holds ``strength``, ``status`` (``"ok"``, ``"diverged"`` or
        ``"skipped"``) and the metrics ``acc``, ``bwt``, ``fwt``, ``smt`` of that validation run.

    Raises:
        ValueError: an empty grid. DivergedError: every strength diverged (or was skipped).
    """
    if not grid:
        raise ValueError("the strength grid is empty")
    empty = {"acc": None, "bwt": None, "fwt": None, "smt": None}
    rows: list[dict[str, Any]] = []
    diverged_at: float | None = None
    for strength in sorted(grid):
        if diverged_at is not None:
            rows.append({"strength": float(strength), "status": "skipped", **empty})
            continue
        try:
            metrics = dict(evaluate(strength)["metrics"])
        except DivergedError as error:
            log.warning("strength %g diverged: %s", strength, error)
            metrics = dict(empty)
        if metrics.get("acc") is not None and not math.isfinite(metrics["acc"]):
            metrics["acc"] = None
        status = "ok" if metrics.get("acc") is not None else "diverged"
        if status == "diverged":
            diverged_at = float(strength)
        rows.append({"strength": float(strength), "status": status, **metrics})
    finished = [r for r in rows if r["status"] == "ok"]
    if not finished:
        raise DivergedError(f"every strength of {sorted(grid)} diverged: lower the grid or the lr")
    best = max(finished, key=lambda r: (r["acc"], -r["strength"]))
    return best["strength"], rows


class TensorSaver:
    """An ``on_task_end`` hook: after each task, save weights and SPP importance to a folder.

    Writes ``<folder>/task<j>.pt`` holding ``{"task": j, "weights": {name: tensor},
    "omega": {name: tensor} | None}`` (the accumulated SPP importance, when the method is SPP),
    atomically (temporary file, then rename). ``benchmarks.analyze`` reads these.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def __call__(self, task: int, strategy: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        model = getattr(strategy.model, "module", strategy.model)
        omega = None
        for plugin in strategy.plugins:
            if isinstance(plugin, SPPPlugin):
                omega = {n: t.detach().cpu() for n, t in plugin.omega.items()}
        payload = {
            "task": task,
            "weights": {n: p.detach().cpu() for n, p in model.named_parameters()},
            "omega": omega,
        }
        path = self.folder / f"task{task}.pt"
        tmp = path.with_suffix(".pt.tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)


def _check_finite_weights(model: torch.nn.Module, method: str, task: int) -> None:
    """Refuse to go on with a model whose weights became NaN or infinite (training diverged)."""
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise DivergedError(
            f"{method}: training diverged on task {task}: weights {bad[:3]} are not finite. "
            "Lower the learning rate or the method's strength."
        )


def _experience_accuracies(results: Mapping[str, Any], n: int) -> np.ndarray:
    """Per-experience accuracies ``(n,)`` from the dictionary ``strategy.eval`` returns."""
    accuracies = np.full(n, np.nan)
    for key, value in results.items():
        match = _EXPERIENCE_KEY.match(key)
        if match and int(match["exp"]) < n:
            accuracies[int(match["exp"])] = float(value)
    if np.isnan(accuracies).any():
        missing = np.flatnonzero(np.isnan(accuracies)).tolist()
        raise RuntimeError(f"evaluation returned no accuracy for experiences {missing}")
    return accuracies


def _used_strength(method: str, strength: float | None) -> float | None:
    """The strength the method really got (its default when ``strength`` is None)."""
    if method not in STRENGTH_NAMES:
        return None
    return float(default_strength(method) if strength is None else strength)
