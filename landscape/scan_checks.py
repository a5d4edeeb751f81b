"""The checks of a scan request (:class:`landscape.scan_request.ScanRequest`), one clear
``ValueError`` naming the first bad option, before any work or output: the common ones here,
then each kind's own (:meth:`landscape.scan_kinds.base.KindRunner.check`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bounds.compiled import check_cache
from common.names import SCAN_KINDS, SLOPES
from landscape.scans import parse_range

if TYPE_CHECKING:
    from landscape.scan_kinds.base import KindRunner
    from landscape.scan_request import ScanRequest

__all__ = ["check_request", "check_error_fields"]


def check_request(req: ScanRequest) -> KindRunner:
    """Validate ``req`` in place (normalises ``samples`` and ``fields``) and return the
    computing half of its kind; ValueError naming the first bad option."""
    _check_values(req)
    from landscape.scan_losses import parse_samples

    req.samples = parse_samples(req.samples)
    for name, value in (
        ("samples", 1 if req.samples == "all" else req.samples),
        ("points", req.points or 1),
        ("pgd_steps", req.pgd_steps),
    ):
        if int(value) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
    from landscape.scan_kinds.base import refuse_others_options, runner

    kind = runner(req.kind)
    refuse_others_options(req)
    if req.fields is not None and not kind.takes_fields:
        raise ValueError(
            "--fields adds errors at the points of a scan along directions of the weights; "
            f"not with --kind {req.kind}"
        )
    kind.check(req)
    parse_range(req.range, req.kind)
    if req.compile:
        check_cache()  # an unwritable cache fails now, before any file is made
    return kind


def _check_values(req: ScanRequest) -> None:
    """The kind's name, the numbers, the slope, the losses and the ``--fields``, as given."""
    if req.kind not in SCAN_KINDS:
        raise ValueError(
            f"--kind: unknown scan kind {req.kind!r}; choose one of {', '.join(SCAN_KINDS)}"
        )
    if req.eps is not None and not (math.isfinite(req.eps) and req.eps >= 0):
        raise ValueError(f"--eps: eps must be a finite number >= 0, got {req.eps}")
    if req.lr is not None and not (math.isfinite(req.lr) and req.lr > 0):
        raise ValueError(f"--lr: lr must be a finite number > 0, got {req.lr}")
    if req.slope is not None and req.slope not in SLOPES:
        raise ValueError(f"--slope: unknown slope {req.slope!r}; choose one of {', '.join(SLOPES)}")
    if req.methods is not None and req.loss != "certified":
        raise ValueError("give either --loss clean|pgd or --methods, not both")
    if req.batch_size is not None and int(req.batch_size) < 1:
        raise ValueError(f"--batch-size: must be >= 1, got {req.batch_size}")
    dims = SCAN_KINDS[req.kind].dims
    if dims == 2 and req.points is not None and int(req.points) < 2:
        raise ValueError(
            f"--points: a {req.kind} scan needs at least 2 points per axis, got {req.points}"
        )
    if dims == 0 and (req.points is not None or req.range is not None):
        raise ValueError(
            f"--points and --range set a grid; --kind {req.kind} has none (see its own options)"
        )
    if req.fields is not None:
        req.fields = check_error_fields(req.fields, req.verify_methods)


def check_error_fields(fields: Sequence[str] | str, verify_methods: Sequence[str]) -> list[str]:
    """The ``--fields`` of a scan as a list, checked (one ValueError naming the bad option):
    distinct names of :data:`landscape.evaluators.ERROR_FIELDS`, and verification methods that
    exist when ``verified_err`` is asked for (whether the scan's kind takes fields is the
    kind's: :attr:`landscape.scan_kinds.base.KindRunner.takes_fields`)."""
    from landscape.evaluators import ERROR_FIELDS
    from train.evaluate import verifier

    if isinstance(fields, str):
        fields = [f.strip() for f in fields.split(",") if f.strip()]
    fields = list(fields)
    bad = [f for f in fields if f not in ERROR_FIELDS]
    if bad or not fields or len(set(fields)) != len(fields):
        raise ValueError(
            f"--fields: expected distinct names of {', '.join(ERROR_FIELDS)}, "
            f"got {','.join(fields)!r}"
        )
    if "verified_err" in fields:
        if not list(verify_methods):
            raise ValueError("--verify-methods: give at least one bound method")
        for m in verify_methods:
            try:
                verifier(m)
            except ValueError as exc:
                raise ValueError(f"--verify-methods: {exc}") from None
    return fields
