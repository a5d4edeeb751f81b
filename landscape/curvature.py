"""Curvature: the top Hessian eigenvalue of a loss by power iteration.

Hessian-vector products by double backward (Pearlmutter): with g(theta) = grad L(theta) built
with ``create_graph=True``, H v = grad_theta <g(theta), v>. Power iteration
v_{k+1} = H v_k / ||H v_k|| converges to the eigenvector of the eigenvalue of largest
magnitude; its Rayleigh quotient lambda_k = <v_k, H v_k> is returned once
|lambda_k - lambda_{k-1}| <= tol * (|lambda_{k-1}| + 1e-12).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from landscape.directions import named_params

__all__ = ["hessian_vector_product", "top_hessian_eigenvalue"]


def _dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def _gradient_graph(
    loss_fn: Callable[[nn.Module], Tensor], params: list[Tensor], model: nn.Module
) -> list[Tensor] | None:
    """grad L(theta) with its graph (for double backward); None when it is constant (H = 0).
    Call under ``torch.enable_grad()``."""
    grads = torch.autograd.grad(loss_fn(model), params, create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    return grads if any(g.requires_grad for g in grads) else None


def _hvp(grads: list[Tensor], params: list[Tensor], v: list[Tensor]) -> list[Tensor]:
    hv = torch.autograd.grad(_dot(grads, v), params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(params, hv)]


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
    return float(eig), v
