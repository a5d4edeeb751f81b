"""Curvature: the top Hessian eigenvalue of a loss by power iteration.

Hessian-vector products by double backward (Pearlmutter): with g(theta) = grad L(theta) built
with ``create_graph=True``, H v = grad_theta <g(theta), v>. Power iteration
v_{k+1} = H v_k / ||H v_k|| converges to the eigenvector of the eigenvalue of largest
magnitude; its Rayleigh quotient lambda_k = <v_k, H v_k> is returned once
|lambda_k - lambda_{k-1}| <= tol * (|lambda_{k-1}| + 1e-12).

:class:`HessianOperator` keeps the gradient graph of one evaluation of the loss and applies H to
as many vectors as wanted (as lists of tensors or as flat vectors of length P, the number of
parameters); :mod:`landscape.hessian` builds Lanczos, Hutchinson and the spectral density on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import Tensor, nn

from landscape.directions import named_params

__all__ = ["HessianOperator", "loss_parts", "hessian_vector_product", "top_hessian_eigenvalue"]


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return cast(Tensor, sum((x * y).sum() for x, y in zip(a, b)))


def _gradient_graph(
    loss_fn: Callable[[nn.Module], Tensor], params: Sequence[Tensor], model: nn.Module
) -> list[Tensor] | None:
    """grad L(theta) with its graph (for double backward); None when it is constant (H = 0).
    Call under ``torch.enable_grad()``."""
    raw = torch.autograd.grad(loss_fn(model), params, create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, raw)]
    return grads if any(g.requires_grad for g in grads) else None


def _hvp(grads: list[Tensor], params: Sequence[Tensor], v: list[Tensor]) -> list[Tensor]:
    hv = torch.autograd.grad(_dot(grads, v), params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(params, hv)]


def loss_parts(
    loss_fn: Callable[[nn.Module], Tensor],
) -> list[tuple[float, Callable[[nn.Module], Tensor]]]:
    """``[(w_b, L_b)]``: a loss that is a weighted sum of mini-batch losses
    (:class:`landscape.scan_losses.BatchedLoss`, attribute ``parts``) split into them, so that its
    gradient and Hessian-vector products can be accumulated one batch at a time; any other loss
    is one part of weight 1."""
    parts = getattr(loss_fn, "parts", None)
    if parts is None:
        return [(1.0, loss_fn)]
    return [(float(w), fn) for w, fn in parts]


class HessianOperator:
    """The Hessian H = d^2 L / d theta^2 of ``loss_fn(model)`` at the parameters the model has
    when the operator is made, as a linear map on directions.

    The loss and its gradient graph are built once, here; every product reuses them, so the
    operator goes stale if the parameters change afterwards. Parameters and ``.grad`` are never
    written. ``P`` is the number of parameters (``model.named_parameters()`` order).

    - ``op(v)``: ``v`` a list of tensors shaped like the parameters -> ``H v``, the same shapes;
    - ``op.matvec(v)``: ``v`` a flat vector ``[P]`` of any floating dtype -> ``H v`` ``[P]`` in
      ``v``'s dtype and device (the product itself runs in the parameters' dtype).

    ``zero`` is True when the gradient does not depend on the parameters (H = 0); ``products``
    counts the products taken.

    ``names``: the parameters (names of ``model.named_parameters()``, in that order) of a block
    ``B``; the operator is then the block ``H_BB`` of the Hessian (a principal submatrix: the
    second derivatives with respect to those parameters only), and ``P`` their size.

    A loss made of mini-batch parts (:func:`loss_parts`, more than one) is never held as one
    graph: every product builds the graph of one batch at a time,
    ``H v = sum_b w_b H_b v``, so memory stays that of one batch whatever the number of samples
    (at the price of one gradient evaluation per batch and product).
    """

    def __init__(
        self,
        loss_fn: Callable[[nn.Module], Tensor],
        model: nn.Module,
        names: list[str] | None = None,
    ) -> None:
        named = named_params(model)
        if names is not None:
            wanted = set(names)
            unknown = wanted - {n for n, _ in named}
            if unknown or not wanted:
                raise ValueError(
                    f"unknown or no parameters for a Hessian block: {sorted(unknown) or names}"
                )
            named = [(n, p) for n, p in named if n in wanted]
        self.model = model
        self.params = [p for _, p in named]
        self.shapes = [tuple(p.shape) for p in self.params]
        self.size = sum(p.numel() for p in self.params)
        self.products = 0
        self.parts = loss_parts(loss_fn)
        with torch.enable_grad():
            if len(self.parts) == 1:
                self.grads = _gradient_graph(self.parts[0][1], self.params, model)
                self._zero = self.grads is None
            else:  # built per product; whether H = 0 is a property of the loss, checked on the first batch
                self.grads = None
                self._zero = _gradient_graph(self.parts[0][1], self.params, model) is None

    @property
    def zero(self) -> bool:
        return self._zero

    def __call__(self, v: list[Tensor]) -> list[Tensor]:
        if len(v) != len(self.params) or any(tuple(a.shape) != s for a, s in zip(v, self.shapes)):
            raise ValueError("a direction must have one tensor per parameter, shaped like it")
        self.products += 1
        if self._zero:
            return [torch.zeros_like(p) for p in self.params]
        v = [a.to(device=p.device, dtype=p.dtype) for a, p in zip(v, self.params)]
        with torch.enable_grad():
            if self.grads is not None:
                return _hvp(self.grads, self.params, v)
            total = [torch.zeros_like(p) for p in self.params]
            for w, fn in self.parts:
                grads = _gradient_graph(fn, self.params, self.model)
                if grads is not None:
                    for acc, h in zip(total, _hvp(grads, self.params, v)):
                        acc.add_(h, alpha=w)
                del grads
            return total

    def matvec(self, v: Tensor) -> Tensor:
        if v.dim() != 1 or v.numel() != self.size:
            raise ValueError(
                f"need a flat vector of {self.size} entries, got shape {tuple(v.shape)}"
            )
        parts, start = [], 0
        for p in self.params:
            parts.append(v[start : start + p.numel()].reshape(p.shape))
            start += p.numel()
        hv = self(parts)
        return torch.cat([h.reshape(-1) for h in hv]).to(device=v.device, dtype=v.dtype)


def hessian_vector_product(
    loss_fn: Callable[[nn.Module], Tensor], model: nn.Module, v: list[Tensor]
) -> list[Tensor]:
    """H v for the Hessian of ``loss_fn(model)`` with respect to the parameters."""
    params = [p for _, p in named_params(model)]
    with torch.enable_grad():
        grads = _gradient_graph(loss_fn, params, model)
        if grads is None:
            return [torch.zeros_like(p) for p in params]
        return _hvp(grads, params, v)


def top_hessian_eigenvalue(
    loss_fn: Callable[[nn.Module], Tensor],
    model: nn.Module,
    iters: int = 50,
    tol: float = 1e-4,
    seed: int = 0,
) -> tuple[float, list[Tensor]]:
    """``(lambda_max, v)``: the Hessian eigenvalue of largest magnitude of ``loss_fn(model)``
    and its unit eigenvector (one tensor per parameter), by power iteration (see module doc).

    The loss graph and its gradient are built once and reused for every product.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    params = [p for _, p in named_params(model)]
    gen = torch.Generator().manual_seed(int(seed))
    v = [torch.randn(p.shape, generator=gen).to(p) for p in params]
    norm = torch.sqrt(_dot(v, v))
    v = [x / norm for x in v]
    eig = None
    with torch.enable_grad():
        grads = _gradient_graph(loss_fn, params, model)
        if grads is None:  # the gradient is constant: H = 0
            return 0.0, v
        for _ in range(iters):
            hv = _hvp(grads, params, v)
            new_eig = float(_dot(hv, v))
            hv_norm = float(torch.sqrt(_dot(hv, hv)))
            if hv_norm == 0.0:
                return 0.0, v
            v = [h / hv_norm for h in hv]
            if eig is not None and abs(new_eig - eig) <= tol * (abs(eig) + 1e-12):
                eig = new_eig
                break
            eig = new_eig
    assert eig is not None  # iters >= 1
    return float(eig), v
