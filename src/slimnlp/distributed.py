"""Which process may write: the runner's side effects (teacher publishing, caches, results, artifacts,
latency) happen on rank 0 only, the other ranks wait at a barrier and then read what rank 0 wrote.

Lightning's DDP launcher re-runs the whole command in each extra process with ``LOCAL_RANK`` set, so the
rank is known from the environment before any Trainer exists (``rank_zero_only.rank``)."""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_only

DISTRIBUTED_STRATEGIES = ("ddp", "fsdp", "deepspeed")


def is_rank_zero() -> bool:
    return getattr(rank_zero_only, "rank", 0) == 0


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def is_distributed(strategy: object, devices: object) -> bool:
    """Whether a Trainer with these settings runs several processes."""
    if isinstance(strategy, str) and any(strategy.startswith(s) for s in DISTRIBUTED_STRATEGIES):
        return True
    if isinstance(devices, (list, tuple)):
        return len(devices) > 1
    return isinstance(devices, int) and not isinstance(devices, bool) and devices > 1
