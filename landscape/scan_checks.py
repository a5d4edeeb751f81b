"""The checks of a scan request (:class:`landscape.scan_request.ScanRequest`), one clear
``ValueError`` naming the first bad option, before any work or output: the common ones here,
and each kind's own (:meth:`landscape.scan_kinds.base.KindRunner.check`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from bounds.compiled import check_cache
from bounds.names import SCAN_KINDS, SLOPES
from landscape.scans import parse_range

if TYPE_CHECKING:
    from landscape.scan_request import ScanRequest

__all__ = ["check_request"]


def check_request(req: ScanRequest) -> None:
    """Validate ``req`` in place: normalises ``samples`` and ``fields``; ValueError naming the
    first bad option."""
    if req.kind not in SCAN_KINDS:
        raise ValueError(
            f"--kind: unknown scan kind {req.kind!r}; choose one of {', '.join(SCAN_KINDS)}"
        )
    from landscape.scan_kinds.base import runner

    kind, dims = runner(req.kind), SCAN_KINDS[req.kind].dims
    if req.eps is not None and not (math.isfinite(req.eps) and req.eps >= 0):
        raise ValueError(f"--eps: eps must be a finite number >= 0, got {req.eps}")
    if req.lr is not None and not (math.isfinite(req.lr) and req.lr > 0):
        raise ValueError(f"--lr: lr must be a finite number > 0, got {req.lr}")
    _check_numbers(req)
    if dims == 2 and req.points is not None and int(req.points) < 2:
        raise ValueError(
            f"--points: a {req.kind} scan needs at least 2 points per axis, got {req.points}"
        )
    if dims == 0 and (req.points is not None or req.range is not None):
        raise ValueError(
            f"--points and --range set a grid; --kind {req.kind} has none (see its own options)"
        )
    if req.fields is not None:
        from landscape.evaluators import check_error_fields

        req.fields = check_error_fields(req.fields, req.verify_methods)
        if not kind.takes_fields:
            raise ValueError(
                "--fields adds errors at the points of a scan along directions of the "
                f"weights; not with --kind {req.kind}"
            )
    _check_others_options(req)
    kind.check(req)
    parse_range(req.range, req.kind)
    if req.compile:
        check_cache()  # an unwritable cache fails now, before any file is made


def _check_numbers(req: ScanRequest) -> None:
    """The slope, the losses, and the counts every kind shares."""
    if req.slope is not None and req.slope not in SLOPES:
        raise ValueError(f"--slope: unknown slope {req.slope!r}; choose one of {', '.join(SLOPES)}")
    if req.methods is not None and req.loss != "certified":
        raise ValueError("give either --loss clean|pgd or --methods, not both")
    from landscape.scan_losses import parse_samples

    req.samples = parse_samples(req.samples)
    if req.batch_size is not None and int(req.batch_size) < 1:
        raise ValueError(f"--batch-size: must be >= 1, got {req.batch_size}")
    for name, value in (
        ("samples", 1 if req.samples == "all" else req.samples),
        ("points", req.points or 1),
        ("pgd_steps", req.pgd_steps),
    ):
        if int(value) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {value}")


def _check_others_options(req: ScanRequest) -> None:
    """Refuse an option that only another kind uses (given: not its default)."""
    import dataclasses

    from landscape.scan_kinds.base import runner
    from landscape.scan_request import flag_of

    defaults = {f.name: f.default for f in dataclasses.fields(req)}
    for other in SCAN_KINDS:
        if other == req.kind or SCAN_KINDS[other].runner == SCAN_KINDS[req.kind].runner:
            continue
        for name in runner(other).own_options:
            if getattr(req, name) != defaults[name]:
                raise ValueError(f"{flag_of(name)} is only used with --kind {other}")
