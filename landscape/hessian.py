"""The Hessian of a loss beyond its top eigenvalue: top-k eigenpairs, trace and spectral density.

Everything here works for any loss closure ``loss_fn(model) -> scalar tensor`` whose graph can
be differentiated twice: the clean loss and every certified loss of
:func:`train.objective.certified_loss` / :class:`landscape.scan_losses.LossClosure` (the bound
engine supports double backward, see ``docs/design.md``). ``H`` is the ``P x P`` Hessian of the
loss with respect to the model's parameters (``model.named_parameters()`` order, flattened as
:func:`common.tensors.flatten` does; ``P`` parameters in all). Only Hessian-vector
products are used (:class:`landscape.curvature.HessianOperator`: double backward, one loss graph
per call). Parameters and ``.grad`` are left untouched.

**Lanczos** (:func:`lanczos`). From a unit vector ``q_1``, ``m`` steps build an orthonormal basis
``Q = [q_1 .. q_m]`` of the Krylov space span{q_1, H q_1, ..., H^{m-1} q_1} and the tridiagonal
``T = Q^T H Q`` (diagonal ``alpha`` [m], off-diagonal ``beta`` [m - 1])::

    w = H q_j - alpha_j q_j - beta_{j-1} q_{j-1},   alpha_j = <q_j, H q_j>
    w <- w - Q (Q^T w)   twice (full reorthogonalisation against every earlier q)
    beta_j = ||w||,  q_{j+1} = w / beta_j

The basis and ``T`` are kept in float64 on the CPU (``m * P * 8`` bytes: 40 steps on a
million parameters take 320 MB); the products run on the model's device and dtype. When
``beta_j`` falls to ``tol`` times the largest |alpha| or beta so far, the Krylov space is
invariant: the run stops there, or, with a ``restart`` generator, goes on from a fresh random
vector orthogonal to ``Q`` (``beta_j = 0``), which lets repeated eigenvalues show their
multiplicity. The eigenvalues of ``T`` (Ritz values) approximate those of ``H``, the extreme
ones first.

**Top-k eigenpairs** (:func:`top_eigenvalues`). The ``k`` Ritz values of ``m`` Lanczos steps
that are largest (``which="largest"``, algebraically) or largest in magnitude
(``which="magnitude"``), returned sorted by value, largest first; the Ritz vectors ``Q s`` are
the eigenvector estimates. With ``m = P`` (and no breakdown) they are exact up to rounding.

**Trace** (:func:`hessian_trace`, Hutchinson). With ``z_i`` Rademacher vectors (entries +-1
with probability 1/2, so ``E[z z^T] = I``)::

    tr H ~ mean_i z_i^T H z_i,       stderr = std_i(z_i^T H z_i) / sqrt(n)   (ddof = 1)

**Spectral density** (:func:`spectral_density`, stochastic Lanczos quadrature, Ubaru, Chen and
Saad 2017; Ghorbani et al. 2019). For each run ``r`` a Rademacher vector scaled to unit norm
starts ``m`` Lanczos steps; ``T_r = S diag(theta) S^T`` gives the nodes ``theta_{r,j}`` and
weights ``tau_{r,j} = S[0, j]^2`` (they sum to 1 per run). The density on a grid ``t`` is::

    phi(t) = 1/R sum_r sum_j tau_{r,j} N(t; theta_{r,j}, sigma^2)

divided by its trapezoidal integral over the grid, so it integrates to 1 there. The grid
spans ``[min theta - margin, max theta + margin]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from common.tensors import LossFn, unflatten
from landscape.curvature import HessianOperator

__all__ = [
    "LanczosResult",
    "TraceEstimate",
    "SpectralDensity",
    "lanczos",
    "top_eigenvalues",
    "hessian_trace",
    "spectral_density",
    "dense_hessian",
    "parameter_blocks",
    "hessian_linear_operator",
]

WHICH = ("largest", "magnitude")


@dataclass
class LanczosResult:
    """``alpha`` [m] and ``beta`` [m - 1] (float64): the tridiagonal ``T = Q^T H Q``; ``basis``
    [m, n] (float64): the orthonormal rows ``q_1 .. q_m``. ``m`` can be less than the steps
    asked for when the run stopped at an invariant subspace."""

    alpha: Tensor
    beta: Tensor
    basis: Tensor

    def tridiagonal(self) -> Tensor:
        """``T`` as a dense [m, m] float64 matrix."""
        return torch.diag(self.alpha) + torch.diag(self.beta, 1) + torch.diag(self.beta, -1)

    def ritz(self) -> tuple[Tensor, Tensor]:
        """``(theta, S)``: the eigenvalues of ``T`` in ascending order [m] and its eigenvectors
        as columns [m, m] (``T = S diag(theta) S^T``)."""
        return torch.linalg.eigh(self.tridiagonal())


@dataclass
class TraceEstimate:
    """Hutchinson's estimate: ``mean`` of ``samples`` [n] (each ``z^T H z``) and its standard
    error ``stderr`` (NaN for one sample)."""

    mean: float
    stderr: float
    samples: np.ndarray


@dataclass
class SpectralDensity:
    """``grid`` [G] and ``density`` [G] (float64; trapezoidal integral 1 over ``grid``);
    ``nodes`` and ``weights`` [R, m]: the Ritz values and squared first components of each run
    (a run that stopped early is padded with NaN nodes of weight 0); ``sigma``: the Gaussian
    width used."""

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float


def _orthogonalise(w: Tensor, basis: list[Tensor]) -> Tensor:
    """w minus its projection on the rows of ``basis``, done twice (classical Gram-Schmidt
    repeated, which is as accurate as modified Gram-Schmidt)."""
    if not basis:
        return w
    q = torch.stack(basis)
    for _ in range(2):
        w = w - q.T @ (q @ w)
    return w


def lanczos(
    matvec: Callable[[Tensor], Tensor],
    v0: Tensor,
    steps: int,
    tol: float = 1e-10,
    restart: torch.Generator | None = None,
) -> LanczosResult:
    """``steps`` Lanczos steps with full reorthogonalisation on the symmetric map ``matvec``
    (a flat vector [n] -> [n]) from ``v0`` [n] (normalised here); see the module docstring.

    ``tol``: relative size of ``beta`` below which the Krylov space counts as invariant.
    ``restart``: None to stop there; a generator to go on from a random vector orthogonal to
    the basis (at most ``n`` steps are taken in all).
    """
    if v0.dim() != 1 or v0.numel() == 0:
        raise ValueError(
            f"the start vector must be a non-empty flat vector, got shape {tuple(v0.shape)}"
        )
    n = v0.numel()
    steps = min(int(steps), n)
    if steps < 1:
        raise ValueError(f"Lanczos needs at least one step, got {steps}")
    q = v0.detach().to(torch.float64).cpu()
    norm = torch.linalg.vector_norm(q)
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("the Lanczos start vector must be finite and non-zero")
    q = q / norm
    basis, alphas, betas = [q], [], []
    scale, beta_prev = 0.0, 0.0
    for j in range(steps):
        w = matvec(q).detach().to(torch.float64).cpu()
        a = float(q @ w)
        alphas.append(a)
        w = w - a * q
        if j > 0:
            w = w - beta_prev * basis[-2]
        w = _orthogonalise(w, basis)
        b = float(torch.linalg.vector_norm(w))
        scale = max(scale, abs(a), b)
        if j == steps - 1:
            break
        if b <= tol * scale:
            if restart is None:
                break
            w = _orthogonalise(torch.randn(n, generator=restart, dtype=torch.float64), basis)
            w_norm = float(torch.linalg.vector_norm(w))
            if w_norm == 0.0:
                break
            b, w = 0.0, w / w_norm
        else:
            w = w / b
        betas.append(b)
        beta_prev, q = b, w
        basis.append(q)
    m = len(alphas)
    return LanczosResult(
        torch.tensor(alphas, dtype=torch.float64),
        torch.tensor(betas[: m - 1], dtype=torch.float64),
        torch.stack(basis[:m]),
    )


def top_eigenvalues(
    loss_fn: LossFn,
    model: nn.Module,
    k: int = 1,
    iters: int | None = None,
    seed: int = 0,
    which: str = "largest",
    return_vectors: bool = False,
    names: list[str] | None = None,
) -> Tensor | tuple[Tensor, list[list[Tensor]]]:
    """The ``k`` top Hessian eigenvalues of ``loss_fn(model)`` by ``iters`` Lanczos steps.

    Args:
        k: how many eigenvalues (1 <= k <= P).
        iters: Lanczos steps (default ``min(P, max(2 k + 20, 40))``; at least ``k``, at most P).
        seed: seeds the Gaussian start vector (and the restarts after an invariant subspace).
        which: ``"largest"`` (algebraically largest) or ``"magnitude"`` (largest |lambda|).
        return_vectors: also return the unit eigenvectors.
        names: the parameters of a block (see :class:`~landscape.curvature.HessianOperator`):
            the eigenvalues of the block ``H_BB`` (P is then the block's size).

    Returns:
        ``values``: float64 tensor [k], sorted by value, largest first; with ``return_vectors``,
        ``(values, vectors)``, ``vectors[i]`` the eigenvector of ``values[i]`` as a list of
        tensors shaped like the parameters (unit norm over all of them, see
        :mod:`landscape.directions`).
    """
    if which not in WHICH:
        raise ValueError(f"unknown which {which!r}; choose one of {', '.join(WHICH)}")
    op = HessianOperator(loss_fn, model, names)
    if not 1 <= int(k) <= op.size:
        raise ValueError(f"k must be in [1, {op.size}] (the number of parameters), got {k}")
    k = int(k)
    steps = min(op.size, max(2 * k + 20, 40)) if iters is None else int(iters)
    if not k <= steps:
        raise ValueError(f"iters must be at least k = {k}, got {iters}")
    gen = torch.Generator().manual_seed(int(seed))
    v0 = torch.randn(op.size, generator=gen, dtype=torch.float64)
    res = lanczos(op.matvec, v0, steps, restart=gen)
    theta, s = res.ritz()
    key = theta.abs() if which == "magnitude" else theta
    chosen = torch.argsort(key, descending=True, stable=True)[:k]
    chosen = chosen[torch.argsort(theta[chosen], descending=True, stable=True)]
    values = theta[chosen].clone()
    if not return_vectors:
        return values
    vectors = []
    for i in chosen.tolist():
        y = res.basis.T @ s[:, i]
        vectors.append(unflatten(y / torch.linalg.vector_norm(y), op.params))
    return values, vectors


def _rademacher(n: int, gen: torch.Generator) -> Tensor:
    return torch.randint(0, 2, (n,), generator=gen, dtype=torch.int64).to(torch.float64) * 2.0 - 1.0


def hessian_trace(
    loss_fn: LossFn,
    model: nn.Module,
    samples: int = 100,
    seed: int = 0,
    deflate: int = 0,
    names: list[str] | None = None,
) -> TraceEstimate:
    """Hutchinson's estimate of ``tr H`` from ``samples`` Rademacher vectors drawn from
    ``torch.Generator().manual_seed(seed)`` (see the module docstring). The loss graph is
    built once; each sample costs one Hessian-vector product.

    ``deflate = d > 0`` reduces the variance (as Hutch++ does, Meyer et al. 2021, with a
    Krylov basis instead of a random sketch): ``d`` Lanczos steps from a seeded Gaussian vector
    give an orthonormal ``Q`` [d, P] that holds the extreme eigendirections, and::

        tr H = tr(Q H Q^T) + tr(R H R),   R = I - Q^T Q,   tr(Q H Q^T) = sum_j alpha_j

    The first term is exact (the diagonal of Lanczos' ``T``); the second is Hutchinson's with
    ``z <- R z``. ``mean`` is their sum; ``stderr`` and ``samples`` are the second term's (the
    first has none). Unbiased for every ``d``; ``d + samples`` products in all.

    ``names``: the trace of the block ``H_BB`` of those parameters (the sum of the block traces
    over a partition of the parameters is ``tr H``).
    """
    if int(samples) < 1:
        raise ValueError(f"need at least one sample, got {samples}")
    op = HessianOperator(loss_fn, model, names)
    if not 0 <= int(deflate) < op.size:
        raise ValueError(f"deflate must be in [0, {op.size - 1}], got {deflate}")
    gen = torch.Generator().manual_seed(int(seed))
    exact, q = 0.0, None
    if int(deflate) > 0:
        res = lanczos(
            op.matvec, torch.randn(op.size, generator=gen, dtype=torch.float64), int(deflate)
        )
        exact, q = float(res.alpha.sum()), res.basis
    values = np.empty(int(samples), dtype=np.float64)
    for i in range(int(samples)):
        z = _rademacher(op.size, gen)
        if q is not None:
            z = z - q.T @ (q @ z)
        values[i] = float(z @ op.matvec(z))
    stderr = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
    return TraceEstimate(mean=exact + float(values.mean()), stderr=stderr, samples=values)


def spectral_density(
    loss_fn: LossFn,
    model: nn.Module,
    runs: int = 10,
    steps: int = 40,
    seed: int = 0,
    sigma: float | None = None,
    sigma_rel: float = 0.01,
    grid_points: int = 1000,
    margin: float | None = None,
) -> SpectralDensity:
    """The Hessian eigenvalue density by stochastic Lanczos quadrature (module docstring).

    Args:
        runs: independent Lanczos runs R, each from its own Rademacher vector (one seeded stream).
        steps: Lanczos steps m per run (at most P; a run stops early at an invariant subspace).
        sigma: width of the Gaussian around each node; default ``sigma_rel`` times the spread
            ``w = max theta - min theta`` of the nodes (``max(|theta|, 1)`` when ``w = 0``).
        grid_points: size G of the grid.
        margin: added on both sides of ``[min theta, max theta]``; default ``0.05 w + 5 sigma``.
    """
    if int(runs) < 1 or int(steps) < 1 or int(grid_points) < 2:
        raise ValueError(
            f"need runs >= 1, steps >= 1 and grid_points >= 2, got {runs}, {steps}, {grid_points}"
        )
    op = HessianOperator(loss_fn, model)
    m = min(int(steps), op.size)
    gen = torch.Generator().manual_seed(int(seed))
    nodes = np.full((int(runs), m), np.nan)
    weights = np.zeros((int(runs), m))
    for r in range(int(runs)):
        res = lanczos(op.matvec, _rademacher(op.size, gen), m)
        theta, s = res.ritz()
        nodes[r, : len(theta)] = theta.numpy()
        weights[r, : len(theta)] = (s[0] ** 2).numpy()
    lo, hi = float(np.nanmin(nodes)), float(np.nanmax(nodes))
    spread = hi - lo if hi > lo else max(abs(hi), 1.0)
    sigma = float(sigma_rel * spread if sigma is None else sigma)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    margin = 0.05 * spread + 5.0 * sigma if margin is None else float(margin)
    grid = np.linspace(lo - margin, hi + margin, int(grid_points))
    ok = weights > 0
    diff = (grid[:, None] - nodes[ok][None, :]) / sigma
    density = (np.exp(-0.5 * diff**2) * weights[ok][None, :]).sum(axis=1) / (
        int(runs) * sigma * math.sqrt(2 * math.pi)
    )
    total = float(((density[1:] + density[:-1]) * 0.5 * np.diff(grid)).sum())  # trapezoid rule
    if not total > 0:
        raise ValueError("the spectral density vanishes on its grid; give a larger sigma or margin")
    return SpectralDensity(
        grid=grid, density=density / total, nodes=nodes, weights=weights, sigma=sigma
    )


def parameter_blocks(model: nn.Module) -> dict[str, list[str]]:
    """The parameter blocks of per-layer curvature: ``{layer: [parameter names]}``, a layer
    being the module that owns the parameters (``"1.weight"``, ``"1.bias"`` -> ``"1"``), in
    parameter order. The blocks partition the parameters."""
    blocks: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        layer = name.rsplit(".", 1)[0] if "." in name else name
        blocks.setdefault(layer, []).append(name)
    return blocks


def dense_hessian(loss_fn: LossFn, model: nn.Module, names: list[str] | None = None) -> Tensor:
    """The full Hessian [P, P] (float64), column by column from P Hessian-vector products;
    for small models (and tests). ``names``: only the block of those parameters."""
    op = HessianOperator(loss_fn, model, names)
    eye = torch.eye(op.size, dtype=torch.float64)
    return torch.stack([op.matvec(eye[i]) for i in range(op.size)], dim=1)


def hessian_linear_operator(loss_fn: LossFn, model: nn.Module):
    """A ``scipy.sparse.linalg.LinearOperator`` [P, P] (float64) of the Hessian, for SciPy's
    solvers (``eigsh`` and friends); the loss graph is built once, here."""
    from scipy.sparse.linalg import LinearOperator

    op = HessianOperator(loss_fn, model)

    def matvec(v: np.ndarray) -> np.ndarray:
        return op.matvec(torch.from_numpy(np.asarray(v, dtype=np.float64).reshape(-1))).numpy()

    return LinearOperator((op.size, op.size), matvec=matvec, rmatvec=matvec, dtype=np.float64)
