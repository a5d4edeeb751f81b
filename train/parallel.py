"""The processes a command runs in: torch.distributed under torchrun, or one process.

``torchrun --nproc-per-node K -m landscape.cli train ...`` (or ``scan ...``) starts K processes
that each join the process group torchrun describes in the environment (:func:`init`: gloo on
CPU, nccl when every process has a CUDA device). Without torchrun (no ``WORLD_SIZE``, or 1),
:func:`init` returns a one-process context for which every function here is the identity, so
the same code runs either way. Training splits every global batch across the processes and
averages their gradients (:mod:`train.loop`); scans split their grid
(:mod:`landscape.distributed`).

Training across K processes: every rank draws the same data order (a generator seeded from
the run's seed and the epoch), takes the same global batch of ``B`` rows and keeps its
:func:`shard_slice` of ``b_r`` rows (:func:`batch_shard`). It computes the mean loss over its
shard, ``L_r``, and its gradient; :func:`reduce_step` then sums, in one collective,

    g = sum_r (b_r / B) grad L_r        (= grad of the mean loss over the global batch)

and the batch statistics weighted the same way, so the update, the recorded loss and the
statistics are those of one process on the same batch (to float rounding). Random slopes and
PGD starts of a shard are its rows of the draw for the whole batch
(:class:`bounds.relaxations.ShardGenerator`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.distributed as dist

from bounds.relaxations import ShardGenerator

__all__ = [
    "Context",
    "init",
    "shutdown",
    "broadcast",
    "all_reduce_sum",
    "shard_slice",
    "backend_for",
    "local_device",
    "check_batch",
    "Shard",
    "batch_shard",
    "reduce_step",
]


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
        t.copy_(flat[start : start + t.numel()].view_as(t))
        start += t.numel()


def shard_slice(n: int, ctx: Context) -> slice:
    """This rank's contiguous share of ``n`` items: sizes differ by at most one, lower ranks
    first, and the shares of all ranks in order are ``0 .. n``."""
    base, extra = divmod(n, ctx.world)
    start = ctx.rank * base + min(ctx.rank, extra)
    return slice(start, start + base + (1 if ctx.rank < extra else 0))


def backend_for(device: str) -> str:
    """The process-group backend for a run on ``device``: nccl on CUDA, gloo otherwise."""
    return "nccl" if str(device).startswith("cuda") else "gloo"


def local_device(ctx: Context, device: torch.device) -> torch.device:
    """``cuda`` without an index becomes ``cuda:LOCAL_RANK`` under torchrun (one GPU a process,
    made the current one); any other device is kept."""
    if ctx.active and device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", ctx.rank)))
        torch.cuda.set_device(device)
    return device


def check_batch(ctx: Context, batch_size: int) -> None:
    """ValueError unless every process gets a share of a global batch of ``batch_size``."""
    if batch_size < ctx.world:
        raise ValueError(
            f"the global batch of {batch_size} samples is smaller than the {ctx.world} processes "
            f"training it; use --batch-size {ctx.world} or more, or fewer processes"
        )


@dataclass(frozen=True)
class Shard:
    """This rank's ``rows`` of a global batch of ``total`` rows; ``weight = b_r / B``."""

    rows: slice
    total: int
    active: bool = False

    @property
    def size(self) -> int:
        return self.rows.stop - self.rows.start

    @property
    def weight(self) -> float:
        return self.size / self.total

    def take(self, t: torch.Tensor) -> torch.Tensor:
        """The shard's rows of ``t`` (``[total, ...]``); its first row when the shard is empty (the
        last batch of an epoch may have fewer rows than there are processes), which
        :func:`reduce_step` then weighs by 0."""
        return t[self.rows] if self.size else t[:1]

    def generator(self, seed: int, device: torch.device) -> torch.Generator:
        """A generator seeded with ``seed`` whose draws are the shard's rows of the batch's draw
        (a plain one in one process, whose shard is the whole batch)."""
        if not self.active or not self.size:
            return torch.Generator(device=device).manual_seed(seed)
        return ShardGenerator(self.rows, self.total, device).manual_seed(seed)


def batch_shard(ctx: Context, total: int) -> Shard:
    """This rank's :class:`Shard` of a global batch of ``total`` rows (all of it in one process)."""
    return Shard(shard_slice(total, ctx), total, ctx.active)


def reduce_step(
    ctx: Context,
    model: torch.nn.Module,
    loss: torch.Tensor,
    stats: Mapping[str, float],
    shard: Shard,
) -> tuple[float, Mapping[str, float]]:
    """After ``loss.backward()`` on this rank's shard: the global batch's loss and statistics.

    In one process: ``(float(loss), stats)`` unchanged. Across processes, one all-reduce sums
    ``w_r * grad``, ``w_r * loss`` and ``w_r * stat`` over the ranks (``w_r = b_r / B``, 0 for an
    empty shard), so every rank ends with the gradient of the mean loss over the global batch in
    its ``.grad`` fields and the same loss and statistics (plain floats; NaN stays NaN). The sum
    runs in float64, so its order across ranks does not show in float32 gradients.
    """
    if not ctx.active:
        return float(loss.detach()), stats
    w = shard.weight
    params = [
        p for p in model.parameters() if p.grad is not None
    ]  # the same ones in every rank: one graph
    grads = [
        cast(torch.Tensor, p.grad) for p in params
    ]  # none is None: params keeps those with one
    keys = sorted(stats)
    values = [float(loss.detach())] + [float(stats[k]) for k in keys]
    head = torch.tensor(
        [0.0 if w == 0 else v * w for v in values], dtype=torch.float64, device=loss.device
    )
    flat = torch.cat([head] + [g.detach().reshape(-1).to(torch.float64) * w for g in grads])
    if w == 0:  # an empty shard's stand-in row: nothing of it counts, not even a NaN
        flat[len(values) :] = 0.0
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    start = len(values)
    for p, g in zip(params, grads):
        p.grad = flat[start : start + g.numel()].view_as(g).to(g.dtype)
        start += g.numel()
    total = flat[: len(values)].tolist()
    return total[0], {k: v for k, v in zip(keys, total[1:])}
