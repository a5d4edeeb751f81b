"""A scan kind that is not in the toolkit, written as ``docs/design.md`` says a new kind is: this
one module (its computing half, a ``KindRunner`` named ``KIND``, and its figure) plus one entry
in ``common.names.SCAN_KINDS`` (``tests/test_scan_kind_extension.py`` adds it at test time).

``scale``: theta_x = (1 + x) theta, every parameter (biases too) scaled by 1 + x, so x = -1 is
the network with all parameters zero and x = 0 the checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.names import ScanKind
from landscape.scan_kinds.base import Built, KindInputs, KindRunner, flat32

ENTRY = ScanKind(
    "theta (1 + x): the checkpoint's parameters scaled",
    5,
    (-1.0, 1.0),
    "scale x of the parameters (1 + x)",
    runner=__name__,
    figure=f"{__name__}:plot_scale",
)
"""The kind's one table entry."""

DRAWN: list[str] = []
"""The stems :func:`plot_scale` drew (the test reads them)."""


class ScaleKind(KindRunner):
    """One axis, x; the direction is theta itself, from theta."""

    def coords(self, req: Any, ranges: Any = None) -> dict[str, np.ndarray]:
        from landscape.scans import grid_coords, parse_range

        lo, hi = parse_range(req.range, req.kind)
        return {"x": grid_coords(lo, hi, req.points or ENTRY.points)}

    def build(self, inputs: KindInputs) -> Built:
        from landscape.directions import get_params
        from landscape.evaluators import DirectionEvaluator

        theta = get_params(inputs.model)
        evaluator = DirectionEvaluator(
            inputs.model,
            inputs.closures,
            [theta],
            inputs.plan.coords["x"][:, None],
            inputs.labels,
            base=theta,
            vmap_batch=inputs.batch_points,
            point_values=inputs.errors,
        )
        return Built(evaluator, {"direction_x": (flat32(theta), inputs.meta)})


KIND = ScaleKind()


def plot_scale(
    scans: Sequence[Any],
    out_dir: str | Path,
    stem: str,
    formats: Sequence[str] = ("png", "pdf"),
    log: bool = False,
) -> list[Path]:
    """The kind's figure: the common 1D figure, noted in :data:`DRAWN`."""
    from figures import curves

    DRAWN.append(stem)
    return curves.plot_line_scans(scans, out_dir, stem, formats, log=log)
