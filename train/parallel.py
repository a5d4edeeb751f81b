"""The processes a command runs in: torch.distributed under torchrun, or one process.

``torchrun --nproc-per-node K -m landscape.cli train ...`` (or ``scan ...``) starts K processes
that each join the process group torchrun describes in the environment (:func:`init`: gloo on
CPU, nccl when every process has a CUDA device). Without torchrun (no ``WORLD_SIZE``, or 1),
:func:`init` returns a one-process context for which every function here is the identity, so
the same code runs either way. Training splits every global batch across the processes and
averages their gradients (:mod:`train.loop`); scans split their grid
(:mod:`landscape.distributed`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist

__all__ = ["Context", "init", "shutdown", "broadcast", "all_reduce_sum", "shard_slice"]


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
    """Join the process group torchrun describes in the environment (``backend``, default gloo,
    or nccl when asked), or return a one-process context."""
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


def all_reduce_sum(ctx: Context, tensors: Sequence[torch.Tensor]) -> None:
    """In place: every tensor becomes the sum of its values over the processes (one coalesced
    collective for all of them; nothing in one process)."""
    if not ctx.active or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    start = 0
    for t in tensors:
        t.copy_(flat[start:start + t.numel()].view_as(t))
        start += t.numel()


def shard_slice(n: int, ctx: Context) -> slice:
    """This rank's contiguous share of ``n`` items: sizes differ by at most one, lower ranks
    first, and the shares of all ranks in order are ``0 .. n``."""
    base, extra = divmod(n, ctx.world)
    start = ctx.rank * base + min(ctx.rank, extra)
    return slice(start, start + base + (1 if ctx.rank < extra else 0))
