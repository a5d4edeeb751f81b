"""The one scan runner: a :class:`ScanRequest` in, a complete (resumable) scan file out.

``landscape scan``, ``landscape reproduce`` and every process under torchrun call
:func:`run_scan`. It loads the checkpoint and its data, builds the losses
(:mod:`landscape.scan_losses`) and the evaluator of the kind (:mod:`landscape.evaluators`),
opens or resumes the file (:mod:`common.store`) and fills its missing points with
:func:`fill_scan`, the one loop, in which splitting the grid across processes is a strategy
(:mod:`landscape.distributed`). Scan kinds are those of :data:`common.names.SCAN_KINDS`, each
computed by its module of :mod:`landscape.scan_kinds`; definitions in ``docs/scans.md``, file
layout in ``docs/schema.md``. The request itself is :mod:`landscape.scan_request`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from common import store
from landscape import distributed
from landscape.distributed import Context, barrier, exchange, shard
from landscape.metrics import loss_variation
from landscape.scan_request import ScanRequest
from landscape.scans import parse_range

__all__ = [
    "ScanRequest",
    "ScanOutcome",
    "run_scan",
    "fill_scan",
    "finish_scan",
    "Chunker",
    "parse_range",
]
if TYPE_CHECKING:
    from landscape.scan_setup import PreparedScan

Summaries = Callable[[store.ScanFile], Mapping[str, Mapping[str, Any]]]


# ----------------------------------------------------------------------------- the loop


class Chunker:
    """How many points to hand an evaluator per call: its fixed ``batch_size`` (vmap), or
    adaptively as many as take about ``target_s`` seconds (1 for slow points, so progress
    and crash-safe writes stay fine-grained; up to ``max_size`` for fast ones, so per-call
    costs such as restoring the parameters are shared)."""

    def __init__(self, evaluator: Any, target_s: float = 0.1, max_size: int = 64) -> None:
        fixed = getattr(evaluator, "batch_size", None)
        self.fixed = int(fixed) if fixed else None
        self.size = self.fixed or 1
        self.target_s, self.max_size = target_s, max_size

    def update(self, n: int, seconds: float) -> None:
        if self.fixed is None and n > 0:
            per_point = max(seconds / n, 1e-6)
            self.size = int(max(1, min(self.max_size, self.target_s / per_point)))


def finish_scan(scan: store.ScanFile, summaries: Summaries | None = None) -> None:
    """Flush; when nothing is missing, store per-label summaries (``loss_variation`` over the
    finite values, ``nonfinite_points`` when a computed loss overflowed, and what
    ``summaries(scan)`` returns, computed once) and mark the file complete."""
    complete = scan.missing().size == 0
    if complete:
        extra = summaries(scan) if summaries is not None else {}
        for label in scan.labels:
            attrs: dict[str, Any] = {}
            if not scan.gridless:  # one point: no variation to speak of
                attrs["loss_variation"] = loss_variation(scan.data[label]["loss"])
            if scan.nonfinite(label):
                attrs["nonfinite_points"] = scan.nonfinite(label)
            attrs.update(extra.get(label, {}))
            scan.label_attrs.setdefault(label, {}).update(attrs)
    scan.flush(complete=complete)


def fill_scan(
    scan: store.ScanFile | None,
    evaluator: Callable[[Sequence[int]], list],
    indices: Sequence[int] | None = None,
    *,
    ctx: Context | None = None,
    flush_seconds: float = 2.0,
    progress: bool = True,
    on_point: Callable[[int], None] | None = None,
    summaries: Summaries | None = None,
) -> store.ScanFile | None:
    """Compute the missing points of ``scan`` (or ``indices``) and write them.

    ``ctx`` (default: one process) splits the points across processes: every rank computes its
    :func:`~landscape.distributed.shard` and rank 0, the only one holding ``scan`` (None
    elsewhere; ``indices`` must then be the same list on every rank), writes what all computed.
    The file is rewritten (atomically) at most every ``flush_seconds`` (or 20x the time a write
    takes, whichever is longer), at the end, and when an exception (e.g. KeyboardInterrupt)
    stops the scan, so a resume redoes little. ``on_point(n_done)`` is called after each point
    written (tests raise from it to simulate a crash). When no point is missing any more,
    :func:`finish_scan` stores the summaries and marks the file complete.
    """
    ctx = ctx or Context()
    todo = list(scan.missing() if indices is None else indices)
    if todo:  # the same on every rank, so no collective is left waiting
        _compute(scan, evaluator, todo, ctx, flush_seconds, progress, on_point)
    if ctx.is_main and (todo or not scan.complete):  # or all were written before a crash
        finish_scan(scan, summaries)
    if todo:
        barrier(ctx)
    return scan


def _compute(
    scan: store.ScanFile | None,
    evaluator: Callable[[Sequence[int]], list],
    todo: list[int],
    ctx: Context,
    flush_seconds: float,
    progress: bool,
    on_point: Callable[[int], None] | None,
) -> None:
    """The loop of :func:`fill_scan`: this rank's share of ``todo`` in chunks, every rank's
    results written by rank 0 into ``scan`` (flushed as :func:`fill_scan` says)."""
    from tqdm.auto import tqdm

    chunker = Chunker(evaluator)
    mine = shard(todo, ctx.rank, ctx.world)
    desc = f"scan ({ctx.world} processes)" if ctx.active else f"scan {scan.kind}"
    bar = tqdm(
        total=len(todo), desc=desc, unit="pt", disable=not (progress and ctx.is_main), leave=False
    )
    last, interval, done, pos = time.monotonic(), flush_seconds, 0, 0
    try:
        while True:
            chunk = mine[pos : pos + chunker.size]
            pos += len(chunk)
            t0 = time.perf_counter()
            local = list(zip(chunk, evaluator(chunk))) if chunk else []
            chunker.update(len(chunk), time.perf_counter() - t0)
            computed, finished = exchange(ctx, local, pos >= len(mine))
            if ctx.is_main:
                for idx, values in computed:
                    for label, v in values.items():
                        scan.set_point(label, int(idx), v)
                    done += 1
                    bar.update(1)
                    if on_point is not None:
                        on_point(done)
                if not finished and time.monotonic() - last >= interval:  # finish_scan: the last
                    t0 = time.monotonic()
                    scan.flush()
                    last = time.monotonic()
                    # writing stays <= ~5% of the time
                    interval = max(flush_seconds, 20.0 * (last - t0))
            if finished:
                break
    except BaseException as exc:
        if (
            ctx.is_main
            and scan is not None
            and scan.dirty
            and not isinstance(exc, store.FileChangedError)
        ):
            scan.flush()
        raise
    finally:
        bar.close()


# ----------------------------------------------------------------------------- the request


@dataclass
class ScanOutcome:
    """What :func:`run_scan` did: the file, its number of points (of labels, for a scan without
    a grid), how many were computed now and in how many seconds, the per-label summaries and
    the number of computed points whose loss is not finite, per label (rank 0; empty
    elsewhere)."""

    path: str
    n_points: int
    computed: int
    seconds: float
    label_attrs: dict[str, dict[str, Any]]
    nonfinite: dict[str, int] = field(default_factory=dict)


def run_scan(request: ScanRequest, progress: bool = True) -> ScanOutcome:
    """Carry out ``request`` (see the module docstring) in this process, or in its share of a
    torchrun group; rank 0 writes the file. Resumes an existing file made with the same
    arguments and refuses one made with others, leaving it as it was."""
    from landscape.scan_checks import check_request
    from landscape.scan_setup import prepare_scan

    kind = check_request(request)
    ctx = distributed.init()
    scan_file = None
    try:
        plan = prepare_scan(request, kind, ctx)
        scan_file, todo = _open_file(request, plan, ctx)
        t0 = time.perf_counter()
        fill_scan(
            scan_file, plan.evaluator, todo, ctx=ctx, progress=progress, summaries=plan.summaries
        )
        seconds = time.perf_counter() - t0
        n_total = (
            int(np.prod([len(c) for c in plan.coords.values()]))
            if plan.coords
            else len(plan.labels)
        )
        attrs = scan_file.label_attrs if scan_file is not None else {}
        bad = (
            {lab: scan_file.nonfinite(lab) for lab in scan_file.labels}
            if scan_file is not None
            else {}
        )
        return ScanOutcome(
            request.out,
            n_total,
            len(todo),
            seconds,
            {k: dict(v) for k, v in attrs.items()},
            {lab: n for lab, n in bad.items() if n},
        )
    finally:
        if scan_file is not None:
            scan_file.close()
        distributed.shutdown(ctx)


def _open_file(
    request: ScanRequest, plan: PreparedScan, ctx: Context
) -> tuple[store.ScanFile | None, list[int]]:
    """Rank 0 opens (or creates) the file and tells every rank which points are missing."""
    if not ctx.is_main:
        status = distributed.broadcast(ctx, None)
        if status[0] is not None:
            raise SystemExit(1)
        return None, status[1]
    error: Exception | None = None
    scan_file, todo = None, []
    try:
        attrs = {**plan.attrs, "world_size": ctx.world}
        scan_file, resumed = store.open_or_create_scan(
            request.out,
            kind=request.kind,
            args=plan.args,
            coords=plan.coords,
            labels=plan.labels,
            fields=plan.fields,
            attrs=attrs,
            arrays=plan.arrays,
            label_arrays=plan.label_arrays,
            lock=True,
        )
        if resumed:
            plan.kind.resumes(request.out, plan.arrays)
        todo = scan_file.missing().tolist()
    except (ValueError, OSError) as exc:
        error = exc
    distributed.broadcast(ctx, (None if error is None else str(error), todo))
    if error is not None:
        if scan_file is not None:  # the lock goes with the refusal
            scan_file.close()
        raise error
    return scan_file, todo
