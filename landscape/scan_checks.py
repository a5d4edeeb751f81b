"""The checks of a scan request (:class:`landscape.scan_runner.ScanRequest`), one clear
``ValueError`` naming the first bad option, before any work or output."""

from __future__ import annotations

import math
from typing import Any

from bounds.compiled import check_cache
from common.names import SCAN_KINDS, SLOPES
from landscape.scans import check_float32_grid, parse_range

__all__ = ["check_request"]


def check_request(req: Any) -> None:
    """Validate ``req`` (a ``ScanRequest``) in place: normalises ``samples`` and ``fields``;
    ValueError naming the first bad option."""
    if req.kind not in SCAN_KINDS:
        raise ValueError(
            f"--kind: unknown scan kind {req.kind!r}; choose one of {', '.join(SCAN_KINDS)}"
        )
    if req.eps is not None and not (math.isfinite(req.eps) and req.eps >= 0):
        raise ValueError(f"--eps: eps must be a finite number >= 0, got {req.eps}")
    if req.lr is not None and not (math.isfinite(req.lr) and req.lr > 0):
        raise ValueError(f"--lr: lr must be a finite number > 0, got {req.lr}")
    if req.kind == "gradient":
        check_float32_grid("--t-min/--t-max", float(req.t_min), float(req.t_max), positive=True)
    if req.kind == "interpolate" and req.to_checkpoint is None:
        raise ValueError("--kind interpolate needs --to CKPT2")
    if req.kind != "interpolate" and req.to_checkpoint is not None:
        raise ValueError("--to is only used with --kind interpolate")
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
    if req.kind in ("random-2d", "pca") and req.points is not None and int(req.points) < 2:
        raise ValueError(
            f"--points: a {req.kind} scan needs at least 2 points per axis, got {req.points}"
        )
    if req.fields is not None:
        from landscape.evaluators import check_error_fields

        req.fields = check_error_fields(req.fields, req.verify_methods, req.kind)
    if req.direction_from is not None and req.kind != "gradient":
        raise ValueError("--direction-from is only used with --kind gradient")
    if req.kind != "pca" and (req.trajectory is not None or req.center):
        raise ValueError("--trajectory and --center are only used with --kind pca")
    spectrum = {k: v for k, v in req.spectrum_options().items() if v is not None}
    if req.kind != "hessian" and spectrum:
        raise ValueError(
            f"--{next(iter(spectrum)).replace('_', '-')} is only used with --kind hessian"
        )
    if req.kind == "hessian":
        if req.hessian:
            raise ValueError(
                "--hessian adds the top eigenvalue to a grid scan; --kind hessian computes the "
                "spectrum itself (drop --hessian)"
            )
        if req.points is not None or req.range is not None:
            raise ValueError(
                "--points and --range set a grid; --kind hessian has none (see --top-k)"
            )
        from landscape.spectrum import SpectrumOptions

        SpectrumOptions(**spectrum)
    parse_range(req.range, req.kind)
    if req.compile:
        check_cache()  # an unwritable cache fails now, before any file is made
