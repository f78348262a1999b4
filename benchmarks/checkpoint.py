"""Resume after a kill: a run's checkpoint of its whole strategy, its progress and its RNG states.

:func:`benchmarks.experiment.run_method` saves one after every experience with
:func:`save_run_checkpoint` and, when the file exists as a run starts, continues from it with
:func:`load_run_checkpoint`. A checkpoint carries the run's *fingerprint* (method, benchmark,
seed, strength, split, budget, model shapes): one written by another run, or one that cannot be
read, is refused with :class:`~benchmarks.errors.CheckpointMismatchError`, never half-used.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from avalanche.checkpointing import maybe_load_checkpoint, save_checkpoint

from benchmarks.errors import CheckpointMismatchError

#: What a checkpoint's progress holds besides the strategy (see :func:`save_run_checkpoint`).
PROGRESS_KEYS = ("fingerprint", "matrix", "train_seconds", "next_task", "diverged_at", "penalty_importance")


def rng_states() -> dict[str, Any]:
    """The states of every random number generator a run draws from (torch, CUDA, numpy, random)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def restore_rng_states(rng: dict[str, Any]) -> None:
    """Set every generator back to the states :func:`rng_states` returned."""
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])


def save_run_checkpoint(strategy: Any, path: Path, progress: dict[str, Any]) -> None:
    """Avalanche's strategy checkpoint plus ``progress`` and the RNG states, written atomically.

    ``progress`` must hold :data:`PROGRESS_KEYS`. The file is written as ``path.tmp`` and then
    renamed, so a kill leaves either the previous checkpoint or the new one, never half a file.
    """
    missing = [k for k in PROGRESS_KEYS if k not in progress]
    if missing:
        raise ValueError(f"a run checkpoint needs progress keys {missing}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    strategy.run_progress = {**progress, "rng": rng_states()}
    try:
        save_checkpoint(strategy, tmp)
    finally:
        del strategy.run_progress
    os.replace(tmp, path)


def load_run_checkpoint(strategy: Any, path: Path, fingerprint: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Restore a strategy saved by :func:`save_run_checkpoint` and check it belongs to this run.

    Returns:
        ``(strategy, progress)``; the RNG states are restored as a side effect.

    Raises:
        CheckpointMismatchError: the file cannot be read, or its fingerprint differs (the
            message names the differing keys).
    """
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # Avalanche prints its device mapping
            strategy, _ = maybe_load_checkpoint(strategy, path, map_location=strategy.device)
        saved = strategy.__dict__.pop("run_progress")
    except Exception as error:  # a truncated or foreign file: any unpickling error
        raise CheckpointMismatchError(
            f"checkpoint {path} cannot be read ({type(error).__name__}: {error}); "
            "delete it to start this run again"
        ) from error
    if saved["fingerprint"] != fingerprint:
        changed = sorted(
            k for k in fingerprint.keys() | saved["fingerprint"].keys()
            if fingerprint.get(k) != saved["fingerprint"].get(k)
        )  # fmt: skip
        raise CheckpointMismatchError(
            f"checkpoint {path} was written by a different run (differs in {changed}); "
            "delete it, or rerun with the settings that wrote it"
        )
    restore_rng_states(saved.pop("rng"))
    return strategy, saved
