"""``hessian``: the Hessian at theta, per scanned loss: top eigenvalues (Lanczos), trace
(Hutchinson) and spectral density (SLQ), optionally per layer (:mod:`landscape.spectrum`). No
grid: one record per loss, stored in per-label arrays."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from landscape.scan_kinds.base import Built, KindInputs, KindPlan, KindRunner

if TYPE_CHECKING:
    import torch

    from landscape.scan_request import ScanRequest

__all__ = ["HessianKind", "KIND", "SPECTRUM_OPTIONS"]

SPECTRUM_OPTIONS = (
    "top_k",
    "lanczos_steps",
    "trace_samples",
    "density_runs",
    "density_steps",
    "density_sigma",
    "density_points",
    "layers",
)
"""The request fields of a Hessian scan (:class:`landscape.spectrum.SpectrumOptions`)."""


def given_options(req: ScanRequest) -> dict[str, Any]:
    """The spectrum options the request sets (the others: :class:`SpectrumOptions`' defaults)."""
    return {k: getattr(req, k) for k in SPECTRUM_OPTIONS if getattr(req, k) is not None}


class HessianKind(KindRunner):
    """The spectrum at the checkpoint; its options are resolved once the model is known."""

    own_options = SPECTRUM_OPTIONS
    takes_fields = False

    def check(self, req: ScanRequest) -> None:
        from landscape.spectrum import SpectrumOptions

        if req.hessian:
            raise ValueError(
                "--hessian adds the top eigenvalue to a grid scan; --kind hessian computes the "
                "spectrum itself (drop --hessian)"
            )
        SpectrumOptions(**given_options(req))

    def coords(
        self, req: ScanRequest, ranges: Sequence[tuple[float, float]] | None = None
    ) -> dict[str, np.ndarray]:
        return {}

    def plan(
        self, req: ScanRequest, model: torch.nn.Module, lr: float, labels: Sequence[str]
    ) -> KindPlan:
        from landscape.directions import params_meta
        from landscape.spectrum import SpectrumOptions

        n_params = sum(int(np.prod(s)) for s in params_meta(model)["param_shapes"])
        options = SpectrumOptions(**given_options(req)).resolved(n_params)
        plan = super().plan(req, model, lr, labels)
        plan.args["spectrum"] = options.to_dict()
        plan.attrs = {**{f"hessian_{k}": v for k, v in options.to_dict().items()}, **plan.attrs}
        plan.state = options
        return plan

    def build(self, inputs: KindInputs) -> Built:
        from landscape.spectrum import LABEL_ARRAYS, SpectrumEvaluator, layer_arrays

        options, model = inputs.plan.state, inputs.model
        evaluator = SpectrumEvaluator(
            model, inputs.closures, inputs.labels, options, seed=inputs.request.seed
        )
        label_arrays = [*LABEL_ARRAYS, *(layer_arrays(model) if options.layers else ())]
        return Built(evaluator, label_arrays=label_arrays)


KIND = HessianKind()
