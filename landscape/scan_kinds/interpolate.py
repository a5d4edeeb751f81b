"""``interpolate``: theta_1 + alpha (theta_2 - theta_1) between the checkpoint and ``--to``;
the two checkpoints themselves are always points, and BatchNorm statistics move with the
weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from common.names import SCAN_KINDS
from landscape.scan_kinds.base import Built, KindInputs, KindPlan, KindRunner

if TYPE_CHECKING:
    import torch

    from landscape.scan_request import ScanRequest

__all__ = ["InterpolateKind", "KIND"]


class InterpolateKind(KindRunner):
    """One axis, ``alpha``; the second model is loaded by :meth:`plan`."""

    own_options = ("to_checkpoint",)

    def check(self, req: ScanRequest) -> None:
        if req.to_checkpoint is None:
            raise ValueError(f"--kind {req.kind} needs --to CKPT2")

    def coords(
        self, req: ScanRequest, ranges: Sequence[tuple[float, float]] | None = None
    ) -> dict[str, np.ndarray]:
        from landscape.scans import grid_coords, parse_range, with_endpoints

        n = req.points if req.points is not None else SCAN_KINDS[req.kind].points
        lo, hi = parse_range(req.range, req.kind)
        return {"alpha": with_endpoints(grid_coords(lo, hi, n))}

    def plan(
        self, req: ScanRequest, model: torch.nn.Module, lr: float, labels: Sequence[str]
    ) -> KindPlan:
        import torch

        from train.checkpoint import load_model

        plan = super().plan(req, model, lr, labels)
        plan.state = load_model(req.to_checkpoint, device=req.device)[0]
        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            plan.args["batchnorm_buffers"] = "interpolated"
        return plan

    def build(self, inputs: KindInputs) -> Built:
        from landscape.directions import (
            batchnorm_buffer_path,
            get_params,
            interpolation_direction,
        )
        from landscape.evaluators import DirectionEvaluator

        req, model, second = inputs.request, inputs.model, inputs.plan.state
        theta1, theta2 = get_params(model), get_params(second)
        if [t.shape for t in theta1] != [t.shape for t in theta2]:
            raise ValueError(
                f"{req.to_checkpoint} has another architecture than {req.checkpoint}; "
                "cannot interpolate"
            )
        evaluator = DirectionEvaluator(
            model,
            inputs.closures,
            [interpolation_direction(theta1, theta2)],
            inputs.plan.coords["alpha"][:, None],
            inputs.labels,
            base=theta1,
            vmap_batch=inputs.batch_points,
            buffer_path=batchnorm_buffer_path(model, second),
            point_values=inputs.errors,
        )
        return Built(evaluator)


KIND = InterpolateKind()
