"""Runs that are killed continue where they stopped and end with the numbers of an unkilled run.

The two command-line tests start a real subprocess, SIGKILL it while it trains (after its first
checkpoint is on disk), run the same command again with ``--resume`` and compare with a run that
was never interrupted: the accuracy matrices (benchmarks.run) and the weights (VAE) must be
bit-identical on the CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_generative import _argv as vae_argv
from test_generative import write_anime, write_celeba

from benchmarks import run as run_cli
from benchmarks.baselines import TrainConfig
from benchmarks.errors import CheckpointMismatchError
from benchmarks.experiment import run_method
from generative import vae_sequence

REPO = Path(__file__).resolve().parents[1]
TRAIN = TrainConfig(epochs=1, hidden=(32,), lr=0.1)
DIGITS = {"benchmark": "split_digits", "train": TRAIN, "benchmark_options": {"train_limit": 100}}


class _Interrupted(Exception):
    pass


def _interrupt_after(task: int):
    def hook(j, strategy):
        if j == task:
            raise _Interrupted

    return hook


@pytest.mark.parametrize("method", ["spp", "ewc", "si", "mas", "lwf", "sgd_f"])
def test_run_interrupted_after_task_2_resumes_to_the_uninterrupted_matrix(method, tmp_path):
    full = run_method(method, seed=0, **DIGITS)
    checkpoint = tmp_path / "run.pt"
    with pytest.raises(_Interrupted):  # dies after task 2's evaluation, before its checkpoint
        run_method(method, seed=0, checkpoint=checkpoint, on_task_end=_interrupt_after(2), **DIGITS)
    saved = torch.load(checkpoint, weights_only=False)  # the strategy after task 1
    assert saved["exp_counter"] == 2
    resumed = run_method(method, seed=0, checkpoint=checkpoint, **DIGITS)
    assert np.array_equal(np.array(full["accuracy_matrix"]), np.array(resumed["accuracy_matrix"]))
    # It did resume: only the tasks after the checkpoint were trained again, not all five.
    n = len(full["accuracy_matrix"])
    assert full["tasks_trained_in_this_call"] == list(range(n))
    assert resumed["tasks_trained_in_this_call"] == list(range(2, n))
    assert not checkpoint.exists()  # removed once the record is complete


def test_same_seed_repeats_exactly_and_another_seed_differs():
    first = run_method("spp", seed=0, strength=100.0, **DIGITS)
    again = run_method("spp", seed=0, strength=100.0, **DIGITS)
    other = run_method("spp", seed=1, strength=100.0, **DIGITS)
    assert first["accuracy_matrix"] == again["accuracy_matrix"]
    assert first["accuracy_matrix"] != other["accuracy_matrix"]


def test_a_checkpoint_of_another_run_or_a_corrupt_one_is_refused(tmp_path):
    checkpoint = tmp_path / "run.pt"
    with pytest.raises(_Interrupted):
        run_method(
            "spp", seed=0, strength=10.0, checkpoint=checkpoint, on_task_end=_interrupt_after(1), **DIGITS
        )
    differs = r"different run \(differs in \['seed', 'strength'\]\)"
    with pytest.raises(CheckpointMismatchError, match=differs):
        run_method("spp", seed=1, strength=100.0, checkpoint=checkpoint, **DIGITS)
    wider = TrainConfig(epochs=1, hidden=(16,), lr=0.1)
    with pytest.raises(CheckpointMismatchError, match="'model'"):
        run_method("spp", seed=0, strength=10.0, checkpoint=checkpoint, **{**DIGITS, "train": wider})
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # a save cut short
    with pytest.raises(CheckpointMismatchError, match="cannot be read.*delete it"):
        run_method("spp", seed=0, strength=10.0, checkpoint=checkpoint, **DIGITS)


def _kill_when(process: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    """SIGKILL ``process`` as soon as ``ready()`` is true; fail if it ends or times out first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            out = process.stdout.read().decode(errors="replace") if process.stdout else ""
            pytest.fail(f"the run ended (status {process.returncode}) before it could be killed:\n{out}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("no checkpoint appeared in time")
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL


def _spawn(module: str, argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", module, *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.subprocess
def test_benchmark_run_killed_by_sigkill_resumes_to_the_same_numbers(tmp_path):
    def argv(out: Path) -> list[str]:
        return [
            "--benchmark",
            "split_digits",
            "--methods",
            "finetune,spp",
            "--seeds",
            "1",
            "--no-tune",
            "--lam",
            "100",
            "--epochs",
            "3",
            "--hidden",
            "64",
            "--lr",
            "0.1",
            "--out",
            str(out),
            "--quiet",
            "--threads",
            "1",
        ]

    full, killed = tmp_path / "full", tmp_path / "killed"
    assert run_cli.main(argv(full)) == 0
    process = _spawn("benchmarks.run", argv(killed))
    _kill_when(process, lambda: (killed / "checkpoints" / "spp_seed0.pt").exists())
    assert run_cli.main(argv(killed)) == 2  # results exist: refused without --resume
    assert run_cli.main([*argv(killed), "--resume"]) == 0
    for name in ("finetune_seed0.json", "spp_seed0.json"):
        a, b = (json.loads((root / "runs" / name).read_text()) for root in (full, killed))
        assert a["accuracy_matrix"] == b["accuracy_matrix"]
        assert a["metrics"] == b["metrics"]
    assert not list((killed / "checkpoints").glob("*.pt"))


@pytest.mark.subprocess
def test_vae_run_killed_by_sigkill_resumes_bit_identically(tmp_path):
    data = tmp_path / "data"
    write_celeba(data)
    write_anime(data)
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert vae_sequence.main(vae_argv(data, full)) == 0

    def spp_epoch_1_saved() -> bool:  # SPP's task-2 training has saved at least one epoch
        path = killed / "checkpoints" / "spp_lam100.pt"
        if not path.exists():
            return False
        return len(torch.load(path, weights_only=False)["history"]) >= 1

    process = _spawn("generative.vae_sequence", vae_argv(data, killed))
    _kill_when(process, spp_epoch_1_saved)
    assert not (killed / "metrics.json").exists()
    assert vae_sequence.main(vae_argv(data, killed, "--resume")) == 0
    a, b = (torch.load(root / "checkpoints" / "spp_lam100.pt", weights_only=False) for root in (full, killed))
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    metrics = [json.loads((root / "metrics.json").read_text())["runs"] for root in (full, killed)]
    assert metrics[0] == metrics[1]  # distances and reconstruction errors of every run, exactly


def _tiny_strategy(lam: float = 1.0):
    from avalanche.training import Naive

    from avalanche_spp import SPPPlugin

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    return Naive(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        criterion=torch.nn.CrossEntropyLoss(), plugins=[SPPPlugin(lam=lam)], evaluator=None,
    )  # fmt: skip


def test_run_checkpoint_round_trips_progress_weights_and_every_random_state(tmp_path):
    import random

    from benchmarks.checkpoint import PROGRESS_KEYS, load_run_checkpoint, save_run_checkpoint

    strategy = _tiny_strategy()
    with torch.no_grad():
        strategy.model.weight.fill_(0.25)
    progress = {key: f"value of {key}" for key in PROGRESS_KEYS} | {"next_task": 3}
    path = tmp_path / "two" / "levels" / "run.pt"  # folders that do not exist yet
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    save_run_checkpoint(strategy, path, progress)
    assert path.is_file() and not list(tmp_path.rglob("*.tmp")) and not hasattr(strategy, "run_progress")
    drawn = (torch.rand(3), np.random.rand(3), random.random())  # what comes next after the save
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    fresh = _tiny_strategy()
    restored, saved = load_run_checkpoint(fresh, path, progress["fingerprint"])
    assert saved == progress  # every progress entry, and nothing else (the RNG states are consumed)
    assert torch.equal(restored.model.weight, torch.full((2, 3), 0.25))
    assert torch.equal(torch.rand(3), drawn[0])
    np.testing.assert_array_equal(np.random.rand(3), drawn[1])
    assert random.random() == drawn[2]
    assert not hasattr(restored, "run_progress")
    with pytest.raises(ValueError, match=r"needs progress keys \['matrix'\]"):
        save_run_checkpoint(strategy, path, {k: v for k, v in progress.items() if k != "matrix"})


def test_run_checkpoint_of_another_run_names_what_differs(tmp_path):
    from benchmarks.checkpoint import PROGRESS_KEYS, load_run_checkpoint, save_run_checkpoint

    path = tmp_path / "run.pt"
    fingerprint = {"seed": 0, "strength": 1.0, "method": "spp"}
    save_run_checkpoint(_tiny_strategy(), path, dict.fromkeys(PROGRESS_KEYS) | {"fingerprint": fingerprint})
    with pytest.raises(CheckpointMismatchError, match=r"differs in \['extra', 'seed'\]"):
        load_run_checkpoint(_tiny_strategy(), path, fingerprint | {"seed": 1, "extra": 2})
    missing = tmp_path / "none.pt"
    missing.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="cannot be read"):
        load_run_checkpoint(_tiny_strategy(), missing, fingerprint)


def test_checkpoint_writes_through_a_tmp_file_and_loads_onto_the_strategy_device(tmp_path, monkeypatch):
    import benchmarks.checkpoint as checkpoint

    written, loaded = [], []
    real_save, real_load = checkpoint.save_checkpoint, checkpoint.maybe_load_checkpoint
    save = lambda s, f: written.append(Path(f)) or real_save(s, f)  # noqa: E731
    monkeypatch.setattr(checkpoint, "save_checkpoint", save)

    def load(strategy, path, **kwargs):
        loaded.append(kwargs)
        return real_load(strategy, path, **kwargs)

    monkeypatch.setattr(checkpoint, "maybe_load_checkpoint", load)
    strategy = _tiny_strategy()
    progress = {key: 0 for key in checkpoint.PROGRESS_KEYS} | {"fingerprint": {"seed": 0}}
    path = tmp_path / "run.pt"
    checkpoint.save_run_checkpoint(strategy, path, progress)
    assert written == [tmp_path / "run.pt.tmp"]  # the half-written file is *.tmp (gitignored)
    checkpoint.load_run_checkpoint(_tiny_strategy(), path, {"seed": 0})
    assert loaded == [{"map_location": strategy.device}]


def test_cuda_random_states_are_saved_and_restored_only_where_cuda_is(monkeypatch):
    import benchmarks.checkpoint as checkpoint

    if not torch.cuda.is_available():
        assert checkpoint.rng_states()["cuda"] is None
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: ["cuda state"])
    for available in (True, False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda available=available: available)
        states = checkpoint.rng_states()
        assert states["cuda"] == (["cuda state"] if available else None)
        checkpoint.restore_rng_states(states | {"cuda": ["saved"]})
        checkpoint.restore_rng_states(states | {"cuda": None})
    assert restored == [["saved"]]  # once: saved states, on a machine with CUDA
