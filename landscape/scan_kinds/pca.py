"""``pca``: theta + x d_1 + y d_2 on the plane of the top two principal directions of the run's
trajectory ending at the checkpoint (Li et al. 2018). The trajectory's checkpoints are hashed
into the arguments, its path and the directions are stored, and each axis covers the path with
a margin unless ``--range`` says."""

from __future__ import annotations

import math
import os
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
    same_arrays,
)

if TYPE_CHECKING:
    import torch

    from landscape.scan_request import ScanRequest

__all__ = ["PcaKind", "KIND", "nice_range"]


def nice_range(lo: float, hi: float, digits: int = 3) -> tuple[float, float]:
    """``[lo, hi]`` widened outwards to ``digits`` significant digits of its span, so that a range
    computed from floats (a trajectory's) is the same number whatever the last bits were."""
    span = hi - lo
    if not span > 0:
        return float(lo), float(hi)
    q = 10.0 ** (math.floor(math.log10(span)) - digits + 1)
    return float(math.floor(lo / q) * q), float(math.ceil(hi / q) * q)


class PcaKind(KindRunner):
    """Two axes, x and y, along the trajectory's principal directions (found by :meth:`plan`)."""

    own_options = ("trajectory", "center")
    keeps_bias = True

    def coords(
        self, req: ScanRequest, ranges: Sequence[tuple[float, float]] | None = None
    ) -> dict[str, np.ndarray]:
        from landscape.scans import grid_coords, parse_range

        n = req.points if req.points is not None else SCAN_KINDS[req.kind].points
        given = parse_range(req.range, req.kind) if req.range is not None else None
        (xlo, xhi), (ylo, yhi) = (given, given) if given is not None else ranges  # type: ignore[misc]
        return {"x": grid_coords(xlo, xhi, n), "y": grid_coords(ylo, yhi, n)}

    def plan(
        self, req: ScanRequest, model: torch.nn.Module, lr: float, labels: Sequence[str]
    ) -> KindPlan:
        from landscape.directions import named_params, params_meta
        from landscape.provenance import file_sha256
        from landscape.trajectory import default_range, load_trajectory, pca_directions

        traj = load_trajectory(req.trajectory or req.checkpoint, final=req.checkpoint)
        keep = self.moves_bias(req)
        pca = pca_directions(
            traj.params,
            traj.final,
            center=req.center,
            ignore=None if keep else "biasbn",
            seed=req.seed,
        )
        ranges = [nice_range(*r) for r in default_range(pca.path)]
        plan = self.common_plan(req, self.coords(req, ranges))
        plan.args.update(
            trajectory_sha256=[file_sha256(p) for p in traj.paths],
            center=bool(req.center),
            keep_bias=keep,
        )
        ratios = [float(v) for v in pca.explained_variance_ratio]
        plan.attrs.update(
            explained_variance=ratios,
            explained_variance_ratio=ratios,
            center=bool(req.center),
            keep_bias=keep,
            trajectory_checkpoints=len(traj.paths),
        )
        params = [p for _, p in named_params(model)]
        dirs = [
            [t.to(device=p.device, dtype=p.dtype) for t, p in zip(d, params)]
            for d in pca.directions
        ]
        meta = params_meta(model)
        plan.arrays = {f"direction_{name}": (flat32(d), meta) for name, d in zip("xy", dirs)}
        plan.arrays["trajectory"] = (
            pca.path.astype(np.float32),
            {
                "dims": ["x", "y"],
                "checkpoints": [os.path.abspath(p) for p in traj.paths],
                "epochs": traj.epochs,
                "steps": traj.steps,
            },
        )
        plan.state = dirs
        return plan

    def build(self, inputs: KindInputs) -> Built:
        from landscape.evaluators import DirectionEvaluator

        evaluator = DirectionEvaluator(
            inputs.model,
            inputs.closures,
            inputs.plan.state,
            grid_points(inputs.plan.coords),
            inputs.labels,
            vmap_batch=inputs.batch_points,
            point_values=inputs.errors,
        )
        return Built(evaluator)

    def resumes(self, out: str, arrays: Arrays) -> None:
        # the directions come from an SVD: equal up to the rounding of another thread count
        if not same_arrays(out, arrays, close=True):
            raise ValueError(
                f"{out} holds other PCA directions than its checkpoints give; choose another "
                "--out or delete it"
            )


KIND = PcaKind()
