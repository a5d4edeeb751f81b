"""Splitting a scan grid across processes with torch.distributed.

Launched as ``torchrun --nproc-per-node K -m landscape.cli scan ...``, every process (rank r of
K) builds the same model, batch and directions (all seeded), rank 0 opens the results file and
broadcasts the missing points, rank r computes points ``missing[r::K]``, and in each round the
ranks exchange their values (``all_gather_object``, which also tells every rank when all are
done) and rank 0 writes them. Every point is
computed by exactly the same code as in a single process, so the file is the same.

Without torchrun (no ``WORLD_SIZE`` in the environment, or 1) everything runs in-process.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch.distributed as dist

__all__ = ["Context", "init", "shutdown", "broadcast", "fill_scan_distributed"]


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
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on
    CUDA when asked), or return a single-process context."""
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


def fill_scan_distributed(
    ctx: Context,
    scan: Any,
    evaluator: Callable[[Sequence[int]], list[dict]],
    indices: Sequence[int],
    flush_seconds: float = 2.0,
    progress: bool = True,
    summaries: Callable[[Any], Any] | None = None,
) -> None:
    """Compute ``indices`` (the same list on every rank) split across ranks; rank 0 (which holds
    ``scan``, a :class:`landscape.store.ScanFile`; ``None`` elsewhere) writes them.

    In single-process mode this is :func:`landscape.scans.fill_scan`.
    """
    from landscape.scans import fill_scan, finish_scan

    if not ctx.active:
        fill_scan(scan, evaluator, indices, flush_seconds=flush_seconds, progress=progress, summaries=summaries)
        return
    from tqdm.auto import tqdm

    if not indices:
        # every rank sees the same empty list, so all return here (no collective to wait for);
        # rank 0 only marks a file complete whose points were all written before a crash
        if ctx.is_main and not scan.complete:
            finish_scan(scan, summaries)
        return
    from landscape.scans import Chunker

    mine = shard(indices, ctx.rank, ctx.world)
    chunker = Chunker(evaluator)
    bar = tqdm(total=len(indices), desc=f"scan ({ctx.world} processes)", unit="pt",
               disable=not (progress and ctx.is_main), leave=False)
    last = time.monotonic()
    pos = 0
    try:
        while True:
            chunk = mine[pos:pos + chunker.size]
            pos += len(chunk)
            t0 = time.perf_counter()
            local = list(zip(chunk, evaluator(chunk))) if chunk else []
            chunker.update(len(chunk), time.perf_counter() - t0)
            gathered: list[Any] = [None] * ctx.world
            dist.all_gather_object(gathered, (local, pos >= len(mine)))
            if ctx.is_main:
                for part, _ in gathered:
                    for idx, values in part:
                        for label, v in values.items():
                            scan.set_point(label, int(idx), v)
                        bar.update(1)
                if not all(f for _, f in gathered) and time.monotonic() - last >= flush_seconds:
                    scan.flush()
                    last = time.monotonic()
            if all(finished for _, finished in gathered):
                break
    except BaseException:
        if ctx.is_main and scan is not None and scan._dirty:
            scan.flush()
        raise
    finally:
        bar.close()
    if ctx.is_main:
        finish_scan(scan, summaries)
    dist.barrier()
