"""``gradient``: theta_t = theta - t lr grad L at t = 0, 1 and log-spaced t (the paper's scan).

Each loss moves along its own gradient, or every loss along the gradient of ``--direction-from``;
the fields are the gradient metrics (and the sign changes of the bound's coefficients), the
directions are stored, and each label's loss at t = 0 is a summary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from common.names import SCAN_KINDS
from landscape.scan_kinds.base import Built, KindInputs, KindPlan, KindRunner, flat32

if TYPE_CHECKING:
    import torch

    from landscape.scan_request import ScanRequest

__all__ = ["GradientKind", "KIND"]


class GradientKind(KindRunner):
    """Step sizes ``t`` along the gradient of each loss (see the module doc)."""

    own_options = ("direction_from",)
    takes_fields = False

    def check(self, req: ScanRequest) -> None:
        from landscape.scans import check_float32_grid

        check_float32_grid("--t-min/--t-max", float(req.t_min), float(req.t_max), positive=True)

    def coords(
        self, req: ScanRequest, ranges: Sequence[tuple[float, float]] | None = None
    ) -> dict[str, np.ndarray]:
        from landscape.scans import default_t_values

        n = req.points if req.points is not None else SCAN_KINDS[req.kind].points
        return {"t": default_t_values(req.t_min, req.t_max, n)}

    def plan(
        self, req: ScanRequest, model: torch.nn.Module, lr: float, labels: Sequence[str]
    ) -> KindPlan:
        from landscape.evaluators import GRADIENT_FIELDS, SIGN_FIELDS

        shared = req.direction_from
        if shared is not None and shared not in labels:
            raise ValueError(
                f"--direction-from: {shared!r} is not one of the scanned losses "
                f"({', '.join(labels)})"
            )
        plan = super().plan(req, model, lr, labels)
        plan.fields = [*GRADIENT_FIELDS, *(SIGN_FIELDS if req.metrics else ())]
        plan.args.update(lr=lr, metrics=req.metrics)
        if len(labels) > 1:  # one loss: its own gradient either way (and files stay as before)
            plan.args["direction"] = "own" if shared is None else f"shared:{shared}"
        plan.attrs.update(lr=lr, direction_from="own" if shared is None else shared)
        return plan

    def build(self, inputs: KindInputs) -> Built:
        from landscape import evaluators as E

        req, labels, closures = inputs.request, inputs.labels, inputs.closures
        own = req.direction_from is None
        evaluator = E.GradientEvaluator(
            inputs.model,
            closures,
            inputs.plan.coords["t"],
            inputs.lr,
            labels=labels,
            point_metrics=E.sign_change_metrics(closures, labels) if req.metrics else None,
            point_fields=E.SIGN_FIELDS if req.metrics else (),
            own_direction=own,
        )
        if not own:
            evaluator.set_direction(req.direction_from)
        first = labels[0] if own else req.direction_from
        arrays = {
            "gradient": (flat32(evaluator.directions[first]), {**inputs.meta, "label": first})
        }
        for label in labels[1:] if own else ():
            arrays[f"gradient_{label}"] = (
                flat32(evaluator.directions[label]),
                {**inputs.meta, "label": label},
            )
        return Built(evaluator, arrays)

    def summaries(self, built: Built, labels: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {label: {"loss0": built.evaluator.loss0[label]} for label in labels}


KIND = GradientKind()
