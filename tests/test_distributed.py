"""SPP in two processes (gloo): every rank ends with the Omega and W* of a single-process run."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from avalanche_spp import SPPPlugin
from benchmarks.models import make_model
from benchmarks.streams import benchmark_info, make_benchmark

# A clamp whose Omega is a sum over samples, so the ranks' shards add up to the whole exactly
# ("batch" clamps each importance mini-batch, and the ranks' mini-batches are other mini-batches;
# so does the batch Fisher).
CLAMP = "experience"


def _model_and_experience():
    torch.manual_seed(0)
    bench = make_benchmark("split_digits", n_tasks=1)
    model = make_model(benchmark_info("split_digits", n_tasks=1), hidden=(32,))
    model.eval()
    return model, bench.train_stream[0]


def _worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        model, experience = _model_and_experience()
        plugin = SPPPlugin(lam=1.0, importance_batch_size=16, clamp=CLAMP, fisher="per_sample")
        strategy = SimpleNamespace(model=model, experience=experience)
        plugin.after_training_exp(strategy)
        seen = sum(item[0].shape[0] for item in plugin._importance_batches(strategy, model))
        state = {"omega": plugin.omega, "anchor": plugin.anchor, "seen": seen}
        torch.save(state, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.subprocess
def test_two_process_importance_equals_single_process(tmp_path):
    torch.set_num_threads(1)
    model, experience = _model_and_experience()
    single = SPPPlugin(lam=1.0, importance_batch_size=16, clamp=CLAMP, fisher="per_sample")
    single.after_training_exp(SimpleNamespace(model=model, experience=experience))
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name, omega in single.omega.items():
        if name.startswith("features."):  # the trunk is measured (only unused heads may be all zero)
            assert omega.abs().sum() > 0, name
        for state in ranks:
            torch.testing.assert_close(state["omega"][name], omega, rtol=1e-5, atol=1e-9)
            assert torch.equal(state["anchor"][name], single.anchor[name])
    # The ranks did split the work: each saw half the experience, yet they agree bit for bit.
    assert [state["seen"] for state in ranks] != [len(experience.dataset)] * 2
    assert sum(state["seen"] for state in ranks) == len(experience.dataset)
    for name in single.omega:
        assert torch.equal(ranks[0]["omega"][name], ranks[1]["omega"][name])
