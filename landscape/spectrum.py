"""The Hessian scan (``landscape scan --kind hessian``): per scanned loss, at the checkpoint, the
top eigenvalues, the trace and the spectral density of the Hessian with respect to the
parameters, computed by :mod:`landscape.hessian` from Hessian-vector products.

A Hessian scan has no grid: each label (loss) is one record, the unit of work of
:func:`landscape.scan_runner.fill_scan` (so a resumed scan computes only the labels not yet
stored, and torchrun processes share the labels). For a label with loss ``L`` its record is

- ``loss``: ``L(theta)``;
- ``eigenvalues`` [k]: the ``top_k`` largest eigenvalues (algebraically: the most positive
  curvature first), sorted by value, from ``lanczos_steps`` Lanczos steps with full
  reorthogonalisation from a Gaussian start seeded with ``seed``;
- attributes ``trace`` and ``trace_stderr``: Hutchinson's estimate of ``tr H`` from
  ``trace_samples`` Rademacher vectors (seeded with ``seed + 1``) and its standard error;
- ``density_grid``, ``density`` [G]: the spectral density by stochastic Lanczos quadrature,
  ``density_runs`` runs of ``density_steps`` steps from Rademacher vectors (seeded with
  ``seed + 2``), each Ritz value broadened by a Gaussian of width ``sigma = density_sigma``
  times the spread of the Ritz values (attribute ``density_sigma`` holds the absolute width),
  normalised to integrate to 1 over the grid of ``density_points`` points;
- ``slq_nodes``, ``slq_weights`` [R, m]: the Ritz values and weights behind the density, so it
  can be broadened again with another width without new Hessian-vector products;
- with ``layers`` (the default), per parameter block ``B`` (a layer: the module owning the
  parameters, :func:`landscape.hessian.parameter_blocks`), under ``layers/<layer>/``:
  ``eigenvalues`` [min(k, |B|)], the top eigenvalues of the block ``H_BB`` (the principal
  submatrix of ``H`` on that layer's parameters: the curvature when only that layer moves),
  from ``min(lanczos_steps, |B|)`` Lanczos steps with the same seed; ``trace``, ``trace_stderr``
  (Hutchinson on ``H_BB`` with ``trace_samples`` vectors, seeded with ``seed + 1``; the block
  traces sum to ``tr H``) and ``size`` = |B|. By Cauchy's interlacing theorem the largest
  eigenvalue of ``H_BB`` never exceeds that of ``H``.

Definitions in ``docs/scans.md``; the layout in ``docs/schema.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from common.tensors import LossFn
from landscape.directions import named_params
from landscape.evaluators import Values, loss_labels
from landscape.hessian import hessian_trace, parameter_blocks, spectral_density, top_eigenvalues

__all__ = ["SpectrumOptions", "SpectrumEvaluator", "LABEL_ARRAYS", "LAYER_ARRAYS", "layer_arrays"]

LABEL_ARRAYS = ("eigenvalues", "density_grid", "density", "slq_nodes", "slq_weights")
"""The per-label arrays of a Hessian scan file."""

LAYER_ARRAYS = ("eigenvalues", "trace", "trace_stderr", "size")
"""The arrays of each layer's record, under ``layers/<layer>/``."""


def layer_arrays(model: nn.Module) -> list[str]:
    """The label-array names of the per-layer records of ``model`` (``layers/<layer>/<name>``)."""
    return [f"layers/{layer}/{name}" for layer in parameter_blocks(model) for name in LAYER_ARRAYS]


@dataclass(frozen=True)
class SpectrumOptions:
    """How much work a Hessian record takes (see the module docstring); ``lanczos_steps`` None:
    ``max(2 top_k + 20, 40)`` (at most the number of parameters)."""

    top_k: int = 5
    lanczos_steps: int | None = None
    trace_samples: int = 100
    density_runs: int = 10
    density_steps: int = 40
    density_sigma: float = 0.01
    density_points: int = 1000
    layers: bool = True

    def __post_init__(self) -> None:
        for name in ("top_k", "trace_samples", "density_runs", "density_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}"
                )
        if self.lanczos_steps is not None and int(self.lanczos_steps) < int(self.top_k):
            raise ValueError(
                f"--lanczos-steps: must be at least --top-k = {self.top_k}, got {self.lanczos_steps}"
            )
        if int(self.density_points) < 2:
            raise ValueError(f"--density-points: must be >= 2, got {self.density_points}")
        if not (math.isfinite(self.density_sigma) and self.density_sigma > 0):
            raise ValueError(
                f"--density-sigma: must be a finite number > 0, got {self.density_sigma}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resolved(self, n_params: int) -> SpectrumOptions:
        """A copy with ``lanczos_steps`` set (the default, or at most ``n_params``)."""
        if int(self.top_k) > int(n_params):
            raise ValueError(
                f"--top-k: the model has {n_params} parameters, fewer than the {self.top_k} eigenvalues "
                "asked for"
            )
        steps = (
            max(2 * self.top_k + 20, 40) if self.lanczos_steps is None else int(self.lanczos_steps)
        )
        return replace(self, lanczos_steps=min(steps, int(n_params)))


class SpectrumEvaluator:
    """``evaluator([i, ...])``: the Hessian records (module docstring) of the losses at positions
    ``i``, at the model's current parameters (which are never moved)."""

    batch_size: int | None = None

    def __init__(
        self,
        model: nn.Module,
        losses: Sequence[LossFn],
        labels: Sequence[str] | None = None,
        options: SpectrumOptions | None = None,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.losses = list(losses)
        self.labels = loss_labels(self.losses, labels)
        self.seed = int(seed)
        size = sum(p.numel() for _, p in named_params(model))
        self.options = (options or SpectrumOptions()).resolved(size)
        if self.options.top_k > size:
            raise ValueError(
                f"--top-k: the model has {size} parameters, fewer than the {self.options.top_k} "
                "eigenvalues asked for"
            )

    def record(self, loss_fn: LossFn) -> dict[str, Any]:
        """The record of one loss."""
        o, model = self.options, self.model
        with torch.no_grad():
            loss = float(loss_fn(model))
        top = top_eigenvalues(
            loss_fn, model, k=o.top_k, iters=o.lanczos_steps, seed=self.seed, which="largest"
        )
        assert isinstance(top, Tensor)  # no vectors asked for
        trace = hessian_trace(loss_fn, model, samples=o.trace_samples, seed=self.seed + 1)
        dens = spectral_density(
            loss_fn,
            model,
            runs=o.density_runs,
            steps=o.density_steps,
            seed=self.seed + 2,
            sigma_rel=o.density_sigma,
            grid_points=o.density_points,
        )
        out = {
            "loss": loss,
            "eigenvalues": top.numpy(),
            "density_grid": dens.grid,
            "density": dens.density,
            "slq_nodes": dens.nodes,
            "slq_weights": dens.weights,
            "attrs": {
                "trace": trace.mean,
                "trace_stderr": trace.stderr,
                "density_sigma": dens.sigma,
                "top_eigenvalue": float(top[0]),
            },
        }
        if o.layers:
            out.update(self.layer_records(loss_fn))
        return out

    def layer_records(self, loss_fn: LossFn) -> dict[str, Any]:
        """The per-layer records of one loss (module docstring), as label arrays."""
        o, model = self.options, self.model
        sizes = dict(named_params(model))
        out: dict[str, Any] = {}
        steps = o.lanczos_steps
        assert steps is not None  # SpectrumOptions.resolved in __init__ sets it
        for layer, names in parameter_blocks(model).items():
            size = sum(sizes[n].numel() for n in names)
            k = min(o.top_k, size)
            top = top_eigenvalues(
                loss_fn,
                model,
                k=k,
                iters=max(k, min(int(steps), size)),
                seed=self.seed,
                which="largest",
                names=names,
            )
            assert isinstance(top, Tensor)
            trace = hessian_trace(
                loss_fn, model, samples=o.trace_samples, seed=self.seed + 1, names=names
            )
            prefix = f"layers/{layer}/"
            out[prefix + "eigenvalues"] = top.numpy()
            out[prefix + "trace"] = trace.mean
            out[prefix + "trace_stderr"] = trace.stderr
            out[prefix + "size"] = float(size)
        return out

    def __call__(self, indices: Sequence[int]) -> list[Values]:
        return [{self.labels[int(i)]: self.record(self.losses[int(i)])} for i in indices]
