"""A ReLU network as affine maps between its ReLU layers (:func:`affine_net`), and the engine's
bounds the exact program of :mod:`bounds.milp` needs (:func:`milp_inputs`).

Imports numpy and scipy at load; torch only inside the functions that need it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["AffineNet", "UnsupportedLayerError", "affine_net", "milp_inputs"]


class UnsupportedLayerError(ValueError):
    """The model has a layer the complete verifier cannot write as an affine map or a ReLU."""


@dataclass
class AffineNet:
    """A ReLU network as affine maps: ``weights[k]`` ``[n_{k+1}, n_k]`` (CSR) and ``biases[k]``
    ``[n_{k+1}]``; a ReLU between consecutive maps, none after the last. ``input_shape``: the
    per-sample input shape (``x`` is flattened row-major, as ``torch.reshape``)."""

    weights: list[sp.csr_matrix]
    biases: list[np.ndarray]
    input_shape: tuple[int, ...]

    @property
    def n_relu_layers(self) -> int:
        return len(self.weights) - 1

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Logits ``[B, n_out]`` of flattened inputs ``x`` ``[B, n_in]`` (float64)."""
        a = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            a = (w @ a.T).T + b
            if k < len(self.weights) - 1:
                a = np.maximum(a, 0.0)
        return a


def affine_net(model: Any, input_shape: Sequence[int]) -> AffineNet:
    """``model`` (an ``nn.Sequential`` the engine accepts) as :class:`AffineNet`, in float64.

    Every op between two ReLU layers (Normalize, Linear, Conv2d, AvgPool2d, eval-mode BatchNorm,
    Flatten) is affine, so the segment is ``g(v) = M v + c`` with ``c = g(0)`` and column ``i`` of
    ``M`` equal to ``g(e_i) - c``: pushed through the ops on the identity basis, kept sparse.
    Raises :class:`UnsupportedLayerError` (one message) for residual blocks and training-mode
    BatchNorm, and the engine's ValueError for any layer it does not know.
    """
    import torch

    from bounds.network import STACK_KINDS, clean_forward, layer_ops

    shape = tuple(int(s) for s in input_shape)
    ops = layer_ops(model, shape, torch.float64)
    for op in ops:
        if op.kind in STACK_KINDS:
            raise UnsupportedLayerError(
                f"layer {op.index} (Residual) is not supported by the complete verifier; "
                "it handles Normalize, Linear, Conv2d, AvgPool2d, BatchNorm (eval), "
                "Flatten and ReLU"
            )
        if op.kind == "scale" and op.weight is None:
            raise UnsupportedLayerError(
                f"layer {op.index} (BatchNorm in training mode) is not supported by the "
                "complete verifier; put the model in eval mode"
            )
    segments: list[list[Any]] = [[]]
    seg_shapes = [shape]
    for op in ops:
        if op.kind == "relu":
            segments.append([])
            seg_shapes.append(op.out_shape)
        else:
            segments[-1].append(op)
    weights, biases = [], []
    with torch.no_grad():
        for seg, in_shape in zip(segments, seg_shapes):
            n_in = int(np.prod(in_shape))
            zero = torch.zeros(1, *in_shape, dtype=torch.float64)
            c = _run(seg, zero, clean_forward).reshape(-1)
            cols = []
            for start in range(0, n_in, 1024):  # the identity basis in chunks
                stop = min(n_in, start + 1024)
                basis = torch.zeros(stop - start, n_in, dtype=torch.float64)
                basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
                out = (
                    _run(seg, basis.reshape(-1, *in_shape), clean_forward).reshape(stop - start, -1)
                    - c
                )
                cols.append(sp.csr_matrix(out.numpy()))
            weights.append(sp.vstack(cols).T.tocsr())
            biases.append(c.numpy().copy())
    return AffineNet(weights, biases, shape)


def _run(seg: list[Any], z: Any, clean_forward: Any) -> Any:
    for op in seg:
        z = clean_forward(op, z)
    return z


def milp_inputs(
    model: Any,
    x: Any,
    y: Any,
    eps: float,
    domain: Sequence[float] | None = (0.0, 1.0),
    opt_steps: int = 20,
) -> tuple[np.ndarray, np.ndarray, list[list[tuple[np.ndarray, np.ndarray]]], np.ndarray]:
    """What :func:`exact_min_margin` needs for a batch, from the engine's tightest bounds: CROWN
    with ``optimized`` slopes on the margin specification, in float64.

    ``model``: a float64 ``nn.Sequential``; ``x`` ``[B, *shape]``, ``y`` ``[B]``. Returns the input
    boxes ``lo, hi`` ``[B, n_in]``, per sample the per-ReLU-layer bounds ``(l, u)`` ``[n_k]``, and
    the margin lower bounds ``[B, n_out]`` (``+inf`` at the label's own column)."""
    import torch

    from bounds.compute import compute_bounds
    from bounds.interval import input_bounds
    from bounds.spec import margin_spec

    x = x.to(torch.float64)
    with torch.no_grad():
        n_out = int(model(x[:1]).shape[1])
        spec = margin_spec(y, n_out).to(torch.float64)
        res = compute_bounds(
            model,
            x,
            eps,
            method="crown",
            slope="optimized",
            C=spec,
            y=y,
            domain=domain,
            need_upper=False,
            opt_steps=opt_steps,
        )
        lo_t, hi_t = input_bounds(x, eps, None if domain is None else tuple(domain))
    B = x.shape[0]
    lo = lo_t.reshape(B, -1).detach().numpy()
    hi = hi_t.reshape(B, -1).detach().numpy()
    pre = [
        [
            (l[b].detach().reshape(-1).numpy(), u[b].detach().reshape(-1).numpy())
            for l, u in res.preact
        ]
        for b in range(B)
    ]
    low = res.lower.detach().numpy()
    full = np.full((B, n_out), np.inf)
    for b in range(B):
        others = [j for j in range(n_out) if j != int(y[b])]
        full[b, others] = low[b]
    return lo, hi, pre, full
