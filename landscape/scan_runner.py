"""The one scan runner: a :class:`ScanRequest` in, a complete (resumable) scan file out.

``landscape scan``, ``landscape reproduce`` and every process under torchrun call
:func:`run_scan`. It loads the checkpoint and its data, builds the losses
(:mod:`landscape.scan_losses`) and the evaluator of the kind (:mod:`landscape.evaluators`),
opens or resumes the file (:mod:`common.store`) and fills its missing points with
:func:`fill_scan`, the one loop, in which splitting the grid across processes is a strategy
(:mod:`landscape.distributed`). Scan kinds are those of :data:`common.names.SCAN_KINDS`;
definitions in ``docs/scans.md``, file layout in ``docs/schema.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common import store
from common.names import SCAN_KINDS, SCAN_LOSSES, TRAIN_METHODS
from landscape import distributed
from landscape.distributed import Context, barrier, exchange, shard
from landscape.metrics import loss_variation
from landscape.provenance import provenance
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
    from tqdm.auto import tqdm

    ctx = ctx or Context()
    todo = list(scan.missing() if indices is None else indices)
    if not todo:  # the same on every rank, so no collective is left waiting
        if ctx.is_main and not scan.complete:
            finish_scan(scan, summaries)  # all points were written before a crash
        return scan
    mine = shard(todo, ctx.rank, ctx.world)
    chunker = Chunker(evaluator)
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
                if (
                    not finished and time.monotonic() - last >= interval
                ):  # finish_scan writes the last
                    t0 = time.monotonic()
                    scan.flush()
                    last = time.monotonic()
                    interval = max(
                        flush_seconds, 20.0 * (last - t0)
                    )  # writing stays <= ~5% of the time
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
    if ctx.is_main:
        finish_scan(scan, summaries)
    barrier(ctx)
    return scan


# ----------------------------------------------------------------------------- the request


@dataclass
class ScanRequest:
    """Everything that defines a scan (the options of ``landscape scan``).

    ``methods``: the losses scanned over the same points, training methods or
    :data:`common.names.SCAN_LOSSES` (default: the checkpoint's method, or ``loss`` when it is
    ``clean`` / ``pgd``); a gradient scan moves each loss along its own gradient, or every loss
    along the gradient of the loss ``direction_from`` (one of them). ``eps``,
    ``beta``, ``kappa`` default to the checkpoint's final training values, ``lr`` to its
    learning rate. ``data``: an already loaded dataset of the checkpoint (else loaded here).
    ``keep_bias``: whether biases move along random or PCA directions (default: not for random
    directions, yes for PCA ones). ``trajectory``, ``center``: the checkpoints of a PCA scan (a
    glob, a list or a run directory; default: the run's epoch and step checkpoints beside
    ``checkpoint``) and whether their differences are centred. ``top_k`` to
    ``density_points``: the work of a Hessian scan (:class:`landscape.spectrum.SpectrumOptions`;
    None: its defaults). ``dataset``, ``trust_code``: dataset code the checkpoint names is
    imported only when ``dataset`` names the same reference or ``trust_code`` is set. ``compile``:
    certified losses run the engine's compiled kernels (the same values to float rounding; not
    part of the arguments a file records).
    """

    checkpoint: str
    out: str
    kind: str = "gradient"
    to_checkpoint: str | None = None
    methods: Sequence[str] | None = None
    loss: str = "certified"
    eps: float | None = None
    beta: float | None = None
    kappa: float | None = None
    slope: str | None = None
    samples: int | str = 100
    batch_size: int | None = None
    split: str = "train"
    seed: int = 0
    points: int | None = None
    range: str | Sequence[float] | None = None
    t_min: float = 0.5
    t_max: float = 5.0
    lr: float | None = None
    direction_from: str | None = None
    norm: str = "filter"
    keep_bias: bool | None = None
    hessian: bool = False
    trajectory: str | Sequence[str] | None = None
    center: bool = False
    top_k: int | None = None
    lanczos_steps: int | None = None
    trace_samples: int | None = None
    density_runs: int | None = None
    density_steps: int | None = None
    density_sigma: float | None = None
    density_points: int | None = None
    layers: bool | None = None
    fields: Sequence[str] | None = None
    verify_methods: Sequence[str] = ("ibp", "crown-ibp")
    metrics: bool = True
    pgd_steps: int = 10
    fused: bool = False
    batch_points: int | None = None
    compile: bool = False
    device: str = "cpu"
    data_dir: str | None = None
    download: bool = False
    dataset: str | None = None
    trust_code: bool = False
    command: str | None = None
    data: Any = field(default=None, repr=False)

    def check(self) -> None:
        """One ValueError naming the first bad option (:func:`landscape.scan_checks.check_request`)."""
        from landscape.scan_checks import check_request

        check_request(self)

    def spectrum_options(self) -> dict[str, Any]:
        """The options of a Hessian scan as given (None: the default)."""
        names = (
            "top_k",
            "lanczos_steps",
            "trace_samples",
            "density_runs",
            "density_steps",
            "density_sigma",
            "density_points",
            "layers",
        )
        return {k: getattr(self, k) for k in names}

    def moves_bias(self) -> bool:
        """Whether biases move along the scan's directions: ``keep_bias``, else only for PCA."""
        return bool(self.keep_bias) if self.keep_bias is not None else self.kind == "pca"

    def coords(self, ranges: Sequence[tuple[float, float]] | None = None) -> dict[str, np.ndarray]:
        """The grid axes: ``t`` (gradient), ``x`` (and ``y``) (random, PCA), ``alpha``
        (interpolate: ``--points`` values, plus 0 and 1 where missing), none (hessian). ``ranges``:
        the default range of each axis, where the kind has none of its own (PCA: the trajectory's); ``--range`` wins."""
        from landscape.scans import default_t_values, grid_coords

        n = self.points if self.points is not None else SCAN_KINDS[self.kind].points
        if self.kind == "gradient":
            return {"t": default_t_values(self.t_min, self.t_max, n)}
        if self.kind == "hessian":
            return {}
        if self.kind == "pca":
            given = parse_range(self.range, self.kind) if self.range is not None else None
            (xlo, xhi), (ylo, yhi) = (given, given) if given is not None else ranges  # type: ignore[misc]
            return {"x": grid_coords(xlo, xhi, n), "y": grid_coords(ylo, yhi, n)}
        lo, hi = parse_range(self.range, self.kind)
        if self.kind == "random-2d":
            return {"x": grid_coords(lo, hi, n), "y": grid_coords(lo, hi, n)}
        if (
            self.kind == "interpolate"
        ):  # the two checkpoints themselves are always points of the scan
            from landscape.scans import with_endpoints

            return {"alpha": with_endpoints(grid_coords(lo, hi, n))}
        return {"x": grid_coords(lo, hi, n)}

    def loss_specs(
        self, cfg: Mapping[str, Any], eps: float, domain: Sequence[float] | None
    ) -> list[Any]:
        """One :class:`landscape.scan_losses.LossSpec` per scanned loss, with the checkpoint's
        final training values (config ``cfg``) where the request leaves them open."""
        from landscape.scan_losses import LossSpec
        from train.objective import LossOptions

        if self.methods is not None:
            labels = [m.strip() for m in self.methods]
        else:
            labels = [self.loss if self.loss != "certified" else cfg.get("method", "ibp")]
        if not labels or any(not n for n in labels) or len(set(labels)) != len(labels):
            raise ValueError(
                f"--methods: expected distinct comma-separated names, got {','.join(labels)!r}"
            )
        specs = []
        for name in labels:
            kind = name if name in SCAN_LOSSES else "certified"
            own = name == cfg.get("method")
            slope = self.slope if self.slope is not None else (cfg.get("slope") if own else None)
            beta = self.beta if self.beta is not None else float(cfg.get("beta_end", 1.0))
            info = TRAIN_METHODS.get(name)
            if info is not None and info.beta is not None:
                beta = info.beta
            if info is not None and info.slope is not None and slope == info.slope:
                slope = None
            kappa = self.kappa if self.kappa is not None else float(cfg.get("kappa_end", 0.0))
            options = LossOptions.of(cfg).for_method(name) if kind == "certified" else {}
            specs.append(
                LossSpec(
                    kind=kind,
                    method=name if kind == "certified" else "ibp",
                    slope=slope,
                    beta=beta,
                    kappa=kappa,
                    eps=float(eps),
                    domain=None if domain is None else (float(domain[0]), float(domain[1])),
                    fused=bool(self.fused and kind == "certified"),
                    pgd_steps=int(self.pgd_steps),
                    seed=int(self.seed),
                    options=tuple(options.items()),
                )
            )
        return specs


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
    from landscape.scan_setup import prepare_scan

    request.check()
    ctx = distributed.init()
    scan_file = None
    try:
        plan = prepare_scan(request, ctx)
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
    request: ScanRequest, plan: Any, ctx: Context
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
        attrs = {**provenance(request.command), **plan.attrs, "world_size": ctx.world}
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
        if resumed and (request.kind.startswith("random") or request.kind == "pca"):
            for name, (value, _) in plan.arrays.items():
                stored, _ = store.read_array(request.out, name)
                # PCA directions come from an SVD: equal up to the rounding of another thread count
                same = stored.shape == value.shape and (
                    np.allclose(stored, value, rtol=1e-4, atol=1e-6)
                    if request.kind == "pca"
                    else np.array_equal(stored, value)
                )
                if not same:
                    what = (
                        "PCA directions than its checkpoints give"
                        if request.kind == "pca"
                        else "random directions than this seed gives"
                    )
                    raise ValueError(
                        f"{request.out} holds other {what}; choose another --out or delete it"
                    )
        todo = scan_file.missing().tolist()
    except (ValueError, OSError) as exc:
        error = exc
    distributed.broadcast(ctx, (None if error is None else str(error), todo))
    if error is not None:
        if scan_file is not None:  # the lock goes with the refusal
            scan_file.close()
        raise error
    return scan_file, todo
