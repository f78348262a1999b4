"""SPP in a multi-process run (``torchrun``, ``DistributedDataParallel``): shards and sums.

Each rank measures the importance of its own shard of the experience (:class:`ShardSampler`: every
sample exactly once across the ranks) and the ranks add their sums with ``all_reduce`` before the
estimate, so every rank ends with the importance of the whole experience (docs/distributed.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` (or ``DataParallel``) wrapper."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def _world() -> tuple[int, int] | None:
    """``(rank, world size)`` in a multi-process run of two or more ranks, else ``None``."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return dist.get_rank(), dist.get_world_size()


def _all_reduce_if_distributed() -> Callable[[Tensor], Any] | None:
    dist = torch.distributed
    return None if _world() is None else lambda tensor: dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def _distributed_sampler(dataset: Any) -> ShardSampler | None:
    world = _world()
    return None if world is None else ShardSampler(len(dataset), *world)


class ShardSampler(torch.utils.data.Sampler):
    """Rank ``r`` of ``w`` takes samples ``r, r + w, r + 2w, ...``: disjoint shards, no padding.

    ``DistributedSampler`` pads the last shards by repeating samples, so their importance would be
    counted twice; here every sample is measured exactly once across the ranks, so the summed
    statistics are exact for any data size.
    """

    def __init__(self, size: int, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.indices = range(rank, size, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
