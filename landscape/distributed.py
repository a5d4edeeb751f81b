"""Processes that share a scan grid: torch.distributed under torchrun, or one process.

Launched as ``torchrun --nproc-per-node K -m landscape.cli scan ...``, every process (rank r of
K) builds the same model, batch and directions (all seeded); rank 0 opens the results file and
:func:`broadcast` s the missing points; rank r computes ``shard(missing, r, K)``; in each round
the ranks :func:`exchange` their values (which also tells every rank when all are done) and
rank 0 writes them. Every point is computed by exactly the same code as in a single process,
so the file is the same. The loop itself is :func:`landscape.scan_runner.fill_scan`; this
module only knows the processes.

Joining the process group (:func:`init`, :func:`shutdown`, :func:`broadcast`) is
:mod:`train.parallel`'s, shared with training; without torchrun every function here is the
identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.distributed as dist

from train.parallel import Context, broadcast, init, shutdown

__all__ = ["Context", "init", "shutdown", "broadcast", "shard", "exchange", "barrier"]


def shard(indices: Sequence[int], rank: int, world: int) -> list[int]:
    """Round-robin share of ``indices`` for ``rank``: ``indices[rank::world]``."""
    return list(indices)[rank::world]


def exchange(ctx: Context, local: list, finished: bool) -> tuple[list, bool]:
    """One round: every rank's ``local`` items, concatenated in rank order, and whether every
    rank is ``finished`` (a collective: all ranks call it the same number of times)."""
    if not ctx.active:
        return list(local), finished
    gathered: list[Any] = [None] * ctx.world
    dist.all_gather_object(gathered, (local, finished))
    return [item for part, _ in gathered for item in part], all(f for _, f in gathered)


def barrier(ctx: Context) -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if ctx.active:
        dist.barrier()
