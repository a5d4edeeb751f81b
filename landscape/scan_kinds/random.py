"""``random-1d`` and ``random-2d``: theta + x d_x (+ y d_y) along seeded random directions,
normalised per filter, per layer or not (``--norm``); biases stay unless ``--keep-bias``. The
directions are stored, and a resumed file must hold the ones this seed gives."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from common.names import SCAN_KINDS
from landscape.scan_kinds.base import (
    Arrays,
    Built,
    KindInputs,
    KindPlan,
    KindRunner,
    flat32,
    grid_points,
)

if TYPE_CHECKING:
    import torch

    from landscape.scan_request import ScanRequest

__all__ = ["RandomKind", "KIND"]


class RandomKind(KindRunner):
    """One axis per random direction: as many as the kind's ``dims`` (x, then y)."""

    def coords(
        self, req: ScanRequest, ranges: Sequence[tuple[float, float]] | None = None
    ) -> dict[str, np.ndarray]:
        from landscape.scans import grid_coords, parse_range

        info = SCAN_KINDS[req.kind]
        n = req.points if req.points is not None else info.points
        lo, hi = parse_range(req.range, req.kind)
        return {axis: grid_coords(lo, hi, n) for axis in "xy"[: info.dims]}

    def plan(
        self, req: ScanRequest, model: torch.nn.Module, lr: float, labels: Sequence[str]
    ) -> KindPlan:
        plan = super().plan(req, model, lr, labels)
        plan.args.update(norm=req.norm, keep_bias=self.moves_bias(req))
        plan.attrs.update(norm=req.norm)
        return plan

    def build(self, inputs: KindInputs) -> Built:
        import torch

        from landscape.directions import random_direction
        from landscape.evaluators import DirectionEvaluator

        req, coords = inputs.request, inputs.plan.coords
        gen = torch.Generator().manual_seed(req.seed)
        ignore = None if self.moves_bias(req) else "biasbn"
        dirs = [random_direction(inputs.model, req.norm, ignore, generator=gen) for _ in coords]
        evaluator = DirectionEvaluator(
            inputs.model,
            inputs.closures,
            dirs,
            grid_points(coords),
            inputs.labels,
            vmap_batch=inputs.batch_points,
            point_values=inputs.errors,
        )
        arrays = {f"direction_{name}": (flat32(d), inputs.meta) for name, d in zip(coords, dirs)}
        return Built(evaluator, arrays)

    def resumes(self, out: str, arrays: Arrays) -> None:
        from landscape.scan_kinds.base import same_arrays

        if not same_arrays(out, arrays, close=False):
            raise ValueError(
                f"{out} holds other random directions than this seed gives; choose another "
                "--out or delete it"
            )


KIND = RandomKind()
