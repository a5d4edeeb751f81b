"""Processes that share a scan grid: torch.distributed under torchrun, or one process.

Launched as ``torchrun --nproc-per-node K -m landscape.cli scan ...``, every process (rank r of
K) builds the same model, batch and directions (all seeded); rank 0 opens the results file and
:func:`broadcast` s the missing points; rank r computes ``shard(missing, r, K)``; in each round
the ranks :func:`exchange` their values (which also tells every rank when all are done) and
rank 0 writes them. Every point is computed by exactly the same code as in a single process,
so the file is the same. The loop itself is :func:`landscape.scan_runner.fill_scan`; this
module only knows the processes.

Without torchrun (no ``WORLD_SIZE`` in the environment, or 1) :func:`init` returns a
single-process context, for which every function here is the identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch.distributed as dist

__all__ = ["Context", "init", "shutdown", "broadcast", "shard", "exchange", "barrier"]


@dataclass
class Context:
    """This process's place: ``rank`` of ``world`` processes; ``owns_pg`` if we initialised it."""

    rank: int = 0
    world: int = 1
    owns_pg: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init(backend: str | None = None) -> Context:
    """Join the process group torchrun describes in the environment (``backend``, default
    gloo, which every scan uses: only small Python objects cross it), or return a
    single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    if dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), False)
    dist.init_process_group(backend=backend or "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), True)


def shutdown(ctx: Context) -> None:
    """Leave the process group if :func:`init` created it."""
    if ctx.owns_pg and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(ctx: Context, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


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
