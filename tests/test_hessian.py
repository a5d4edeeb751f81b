"""landscape.hessian against exact answers: quadratics whose Hessian is known, and a tiny MLP whose
dense Hessian (torch.autograd.functional.hessian) gives the exact eigenvalues and trace, for the
clean loss and certified losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from common.tensors import flatten
from landscape import hessian
from landscape.curvature import HessianOperator, top_hessian_eigenvalue
from landscape.directions import get_params
from landscape.scan_losses import make_loss
from train.models import build_model


class Quadratic(nn.Module):
    """L(theta) = 1/2 theta^T A theta + c^T theta over two parameter tensors (P = 12 + 5 = 17)."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(5, dtype=torch.float64))
        self.register_buffer("a", a)
        self.register_buffer("c", torch.randn(17, dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        theta = torch.cat([self.w.reshape(-1), self.b])
        return 0.5 * theta @ self.a @ theta + self.c @ theta


def quad_loss(model: Quadratic) -> torch.Tensor:
    return model()


def rotated(eigs: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A = U diag(eigs) U^T with a seeded random orthogonal U."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=gen, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ u.T, u


EIGS = [-9.0, -2.0, -0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 3.5, 4.5, 6.0, 8.0]


def test_hessian_operator_is_the_quadratics_matrix():
    a, _ = rotated(EIGS)
    model = Quadratic(a)
    v = torch.randn(17, dtype=torch.float64)
    op = HessianOperator(quad_loss, model)
    torch.testing.assert_close(op.matvec(v), a @ v)
    torch.testing.assert_close(op.matvec(v.float()), (a @ v).float())  # returned in v's dtype
    torch.testing.assert_close(hessian.dense_hessian(quad_loss, model), a)
    with pytest.raises(ValueError, match="flat vector of 17"):
        op.matvec(torch.zeros(16))


def test_top_k_exact_on_a_quadratic():
    a, u = rotated(EIGS)
    model = Quadratic(a)
    vals, vecs = hessian.top_eigenvalues(quad_loss, model, k=3, iters=17, return_vectors=True)
    np.testing.assert_allclose(vals.numpy(), [8.0, 6.0, 4.5], rtol=1e-10)
    for i, col in enumerate((16, 15, 14)):  # eigenvectors up to sign, unit norm over all tensors
        assert [tuple(t.shape) for t in vecs[i]] == [(3, 4), (5,)]
        assert abs(float(flatten(vecs[i]) @ u[:, col])) == pytest.approx(1.0, abs=1e-10)
    mag = hessian.top_eigenvalues(quad_loss, model, k=3, iters=17, which="magnitude")
    np.testing.assert_allclose(mag.numpy(), [8.0, 6.0, -9.0], rtol=1e-10)  # by value, largest first
    few = hessian.top_eigenvalues(quad_loss, model, k=1, iters=12)  # fewer steps than P
    assert float(few[0]) == pytest.approx(8.0, rel=1e-6)
    with pytest.raises(ValueError, match="k must be"):
        hessian.top_eigenvalues(quad_loss, model, k=18)
    with pytest.raises(ValueError, match="which"):
        hessian.top_eigenvalues(quad_loss, model, which="smallest")


def test_repeated_eigenvalues_keep_their_multiplicity():
    """Lanczos from one vector sees a repeated eigenvalue once; the restart after the invariant
    subspace finds its other copies."""
    eigs = [5.0, 5.0, 5.0] + [1.0] * 7 + [-1.0] * 7
    a, _ = rotated(eigs, seed=3)
    vals = hessian.top_eigenvalues(quad_loss, Quadratic(a), k=4, iters=17)
    np.testing.assert_allclose(vals.numpy(), [5.0, 5.0, 5.0, 1.0], rtol=1e-9)


def test_lanczos_basis_is_orthonormal_and_tridiagonalises():
    a, _ = rotated(EIGS)
    res = hessian.lanczos(lambda v: a @ v, torch.ones(17, dtype=torch.float64), 10)
    q = res.basis
    torch.testing.assert_close(q @ q.T, torch.eye(10, dtype=torch.float64))
    torch.testing.assert_close(q @ a @ q.T, res.tridiagonal())


def test_hutchinson_on_quadratics():
    a, _ = rotated(EIGS)
    est = hessian.hessian_trace(quad_loss, Quadratic(a), samples=400, seed=1)
    exact = sum(EIGS)
    assert est.samples.shape == (400,) and est.stderr > 0
    assert abs(est.mean - exact) <= 3 * est.stderr
    assert est.mean == pytest.approx(exact, abs=0.1 * sum(abs(e) for e in EIGS))
    again = hessian.hessian_trace(quad_loss, Quadratic(a), samples=400, seed=1)
    assert again.mean == est.mean  # seeded
    # with a diagonal Hessian a Rademacher z gives z^T A z = tr A exactly: no variance at all
    diag = hessian.hessian_trace(
        quad_loss, Quadratic(torch.diag(torch.tensor(EIGS, dtype=torch.float64))), samples=5
    )
    assert diag.mean == pytest.approx(exact, abs=1e-12) and diag.stderr == pytest.approx(
        0.0, abs=1e-12
    )
    # deflating part of the spectrum keeps the estimate unbiased and shrinks its error
    defl = hessian.hessian_trace(quad_loss, Quadratic(a), samples=400, seed=1, deflate=8)
    assert defl.stderr < est.stderr and abs(defl.mean - exact) <= 3 * defl.stderr


def test_spectral_density_integrates_to_one_and_peaks_at_the_eigenvalues():
    """Diagonal A with multiplicities 5, 4, 4, 4: each run's Lanczos stops after 4 steps with the
    exact eigenvalues as nodes, and (Rademacher start) the weights are exactly multiplicity / P."""
    values, mult = [-2.0, 0.5, 3.0, 7.0], [5, 4, 4, 4]
    a = torch.diag(torch.tensor(np.repeat(values, mult), dtype=torch.float64))
    sd = hessian.spectral_density(
        quad_loss, Quadratic(a), runs=3, steps=10, seed=0, grid_points=4001
    )
    grid, dens = sd.grid, sd.density
    assert grid.shape == dens.shape == (4001,) and (dens >= 0).all()
    assert float(((dens[1:] + dens[:-1]) * 0.5 * np.diff(grid)).sum()) == pytest.approx(
        1.0, abs=1e-12
    )
    assert sd.nodes.shape == sd.weights.shape == (3, 10)
    np.testing.assert_allclose(np.nansum(sd.weights, axis=1), 1.0)
    assert (
        np.isnan(sd.nodes[:, 4:]).all() and (sd.weights[:, 4:] == 0).all()
    )  # stopped after 4 steps
    spread = values[-1] - values[0]
    assert sd.sigma == pytest.approx(0.01 * spread)
    assert grid[0] == pytest.approx(values[0] - 0.05 * spread - 5 * sd.sigma)
    assert grid[-1] == pytest.approx(values[-1] + 0.05 * spread + 5 * sd.sigma)
    peaks = [i for i in range(1, len(dens) - 1) if dens[i] > dens[i - 1] and dens[i] >= dens[i + 1]]
    np.testing.assert_allclose(grid[peaks], values, atol=grid[1] - grid[0])
    for v, k in zip(values, mult):  # mass of each peak = multiplicity / P
        win = np.abs(grid - v) <= 6 * sd.sigma
        mass = float(((dens[win][1:] + dens[win][:-1]) * 0.5 * np.diff(grid[win])).sum())
        assert mass == pytest.approx(k / 17, abs=1e-6)


# ----------------------------------------------------------------------------- a tiny MLP


@pytest.fixture(scope="module")
def mlp():
    """mlp 4 -> 4 -> 3 -> 3 on 2x2 inputs (47 parameters), in float64, and a batch of 16."""
    torch.manual_seed(0)
    model = build_model("mlp", (1, 2, 2), 3, [0.5], [0.25], widths=[4, 3]).double()
    x = torch.rand(16, 1, 2, 2, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    return model, x, y


def dense_reference(closure, model) -> torch.Tensor:
    """The exact Hessian by torch.autograd.functional.hessian of theta -> L(theta) (independent of
    the Hessian-vector products under test)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def f(theta):
        params, start = {}, 0
        for n, s in zip(names, shapes):
            params[n] = theta[start : start + s.numel()].view(s)
            start += s.numel()
        return closure.functional(params)

    return torch.autograd.functional.hessian(f, flatten(get_params(model)))


LOSSES = [
    dict(kind="clean"),
    dict(kind="certified", method="crown-ibp"),
    dict(kind="certified", method="ibp"),
]


@pytest.mark.parametrize("spec", LOSSES, ids=lambda s: s.get("method", s["kind"]))
def test_tiny_mlp_against_the_dense_hessian(mlp, spec):
    from scipy.sparse.linalg import eigsh

    model, x, y = mlp
    closure = make_loss(model, x, y, eps=0.1, **spec)
    h = dense_reference(closure, model)
    torch.testing.assert_close(h, h.T)
    exact = torch.linalg.eigvalsh(h).flip(0)  # descending
    before = get_params(model)
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)

    top, vecs = hessian.top_eigenvalues(closure, model, k=3, return_vectors=True)
    np.testing.assert_allclose(top.numpy(), exact[:3].numpy(), rtol=1e-2)
    v = flatten(vecs[0])  # H v = lambda v
    torch.testing.assert_close(h @ v, top[0] * v, atol=1e-6 * float(exact.abs().max()), rtol=0)
    lo = hessian.hessian_linear_operator(closure, model)
    ref = np.sort(eigsh(lo, k=3, which="LA", return_eigenvectors=False))[::-1]
    np.testing.assert_allclose(top.numpy(), ref, rtol=1e-2)
    power, _ = top_hessian_eigenvalue(closure, model, iters=200, tol=1e-10)
    mag = hessian.top_eigenvalues(closure, model, k=1, which="magnitude")
    assert float(mag[0]) == pytest.approx(power, rel=1e-2)

    trace = float(h.trace())
    plain = hessian.hessian_trace(closure, model, samples=200, seed=0)
    assert abs(plain.mean - trace) <= 3 * plain.stderr
    deflated = hessian.hessian_trace(closure, model, samples=50, seed=0, deflate=24)
    assert deflated.mean == pytest.approx(trace, rel=1e-2)

    sd = hessian.spectral_density(closure, model, runs=2, steps=20)
    assert float(
        ((sd.density[1:] + sd.density[:-1]) * 0.5 * np.diff(sd.grid)).sum()
    ) == pytest.approx(1.0)
    assert sd.grid[0] < float(exact[-1]) and sd.grid[-1] > float(exact[0])

    after = get_params(model)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())


def test_float32_model_matches_the_float64_hessian(mlp):
    """The toolkit's models are float32: products run in the parameters' dtype, Lanczos in float64."""
    model, x, y = mlp
    h = dense_reference(
        make_loss(model, x, y, kind="certified", method="crown-ibp", eps=0.1), model
    )
    small = build_model("mlp", (1, 2, 2), 3, [0.5], [0.25], widths=[4, 3])
    small.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    closure = make_loss(small, x.float(), y, kind="certified", method="crown-ibp", eps=0.1)
    top = hessian.top_eigenvalues(closure, small, k=2)
    np.testing.assert_allclose(top.numpy(), torch.linalg.eigvalsh(h).flip(0)[:2].numpy(), rtol=1e-3)


# ----------------------------------------------------------------------------- per-layer blocks and mini-batches


def _block_slices(model) -> dict[str, slice]:
    """Where each layer's parameters sit in the flat parameter vector."""
    out, start = {}, 0
    for layer, names in hessian.parameter_blocks(model).items():
        size = sum(dict(model.named_parameters())[n].numel() for n in names)
        out[layer] = slice(start, start + size)
        start += size
    return out


@pytest.mark.parametrize("spec", LOSSES, ids=lambda s: s.get("method", s["kind"]))
def test_per_layer_curvature_is_the_dense_block_hessian(mlp, spec):
    """Each layer's record (top eigenvalues, trace) equals that of the principal block of the
    dense Hessian on its parameters; the block tops interlace below the whole model's, and the
    block traces sum to the whole trace."""
    from landscape.spectrum import SpectrumEvaluator, SpectrumOptions

    model, x, y = mlp
    closure = make_loss(model, x, y, eps=0.1, **spec)
    h = dense_reference(closure, model)
    blocks = hessian.parameter_blocks(model)
    assert list(blocks) == ["2", "4", "6"] and sum(len(v) for v in blocks.values()) == len(
        list(model.parameters())
    )
    ev = SpectrumEvaluator(
        model,
        [closure],
        ["L"],
        SpectrumOptions(
            top_k=3, trace_samples=400, density_runs=1, density_steps=5, density_points=50
        ),
    )
    rec = ev.record(closure)
    whole_top = float(torch.linalg.eigvalsh(h)[-1])
    assert rec["eigenvalues"][0] == pytest.approx(whole_top, rel=1e-6)
    block_traces = 0.0
    for layer, sl in _block_slices(model).items():
        hb = h[sl, sl]
        exact = torch.linalg.eigvalsh(hb).flip(0)
        got = rec[f"layers/{layer}/eigenvalues"]
        assert rec[f"layers/{layer}/size"] == hb.shape[0]
        np.testing.assert_allclose(
            got, exact[:3].numpy(), rtol=1e-6, atol=1e-9 * float(exact.abs().max())
        )
        # the HVP restricted to the block is the block of the full Hessian (not the block of H^2 etc.)
        torch.testing.assert_close(
            hessian.dense_hessian(closure, model, names=blocks[layer]), hb, rtol=1e-9, atol=1e-12
        )
        assert float(exact[0]) <= whole_top + 1e-9 * abs(
            whole_top
        )  # Cauchy interlacing, exact matrices
        assert got[0] <= rec["eigenvalues"][0] + 1e-6 * abs(rec["eigenvalues"][0])
        t, se = rec[f"layers/{layer}/trace"], rec[f"layers/{layer}/trace_stderr"]
        assert abs(t - float(hb.trace())) <= 4 * se + 1e-12
        block_traces += float(hb.trace())
    assert block_traces == pytest.approx(float(h.trace()), rel=1e-9)


def test_block_eigenvalues_on_a_quadratic_are_those_of_the_principal_submatrix():
    """On L = 1/2 theta^T A theta + c^T theta the block of ``w`` (the first 12 coordinates) has
    Hessian A[:12, :12] exactly, and that of ``b`` A[12:, 12:]; both tops lie below A's."""
    a, _ = rotated(EIGS)
    model = Quadratic(a)
    for names, sl in ((["w"], slice(0, 12)), (["b"], slice(12, 17))):
        exact = torch.linalg.eigvalsh(a[sl, sl]).flip(0)
        top = hessian.top_eigenvalues(quad_loss, model, k=3, names=names)
        np.testing.assert_allclose(top.numpy(), exact[:3].numpy(), rtol=1e-9, atol=1e-9)
        assert float(top[0]) <= max(EIGS) + 1e-9
        tr = hessian.hessian_trace(quad_loss, model, samples=2000, seed=0, names=names)
        assert abs(tr.mean - float(a[sl, sl].trace())) <= 4 * tr.stderr
    with pytest.raises(ValueError, match="unknown or no parameters"):
        hessian.top_eigenvalues(quad_loss, model, names=["nope"])


@pytest.mark.parametrize("spec", LOSSES, ids=lambda s: s.get("method", s["kind"]))
def test_minibatch_hessian_products_equal_the_whole_batch(mlp, spec):
    """A loss split into mini-batches (weights n_b / N) has the whole batch's loss, gradient and
    Hessian-vector products (every loss here is a mean over samples), computed one batch at a
    time."""
    from landscape.directions import gradient_direction
    from landscape.scan_losses import BatchedLoss, make_closure

    model, x, y = mlp
    whole = make_loss(model, x, y, eps=0.1, **spec)
    batched = make_closure(model, x, y, whole.spec, batch_size=5)  # 5 + 5 + 5 + 1: unequal weights
    assert isinstance(batched, BatchedLoss) and [len(p.x) for p in batched.closures] == [5, 5, 5, 1]
    with torch.no_grad():
        assert float(batched(model)) == pytest.approx(float(whole(model)), rel=1e-12)
    l1, g1 = gradient_direction(whole, model)
    l2, g2 = gradient_direction(batched, model)
    assert float(l2) == pytest.approx(float(l1), rel=1e-12)
    torch.testing.assert_close(flatten(g2), flatten(g1), rtol=1e-10, atol=1e-12)
    op1, op2 = HessianOperator(whole, model), HessianOperator(batched, model)
    assert op2.grads is None  # no graph is held between products
    v = torch.randn(op1.size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(op2.matvec(v), op1.matvec(v), rtol=1e-10, atol=1e-12)
    top1 = hessian.top_eigenvalues(whole, model, k=2)
    top2 = hessian.top_eigenvalues(batched, model, k=2)
    np.testing.assert_allclose(top2.numpy(), top1.numpy(), rtol=1e-8)
    assert make_closure(model, x, y, whole.spec, batch_size=16) is not None
    assert not isinstance(make_closure(model, x, y, whole.spec, batch_size=16), BatchedLoss)


@pytest.mark.slow
def test_whole_split_hessian_in_minibatches_peaks_like_a_200_sample_one():
    """The digits training split (1,437 samples) in batches of 200 needs at most 1.5x the memory of
    a 200-sample Hessian (the peak RSS increment of the Hessian work, each in a fresh process,
    ``benchmarks/hessian_memory.py``); in one batch it needs over twice as much, so the measurement
    tells the two apart."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "hessian_memory.py"

    def run(n: str, b: int) -> dict:
        out = subprocess.run(
            [
                sys.executable,
                str(script),
                "--child",
                "--n",
                n,
                "--b",
                str(b),
                "--steps",
                "3",
                "--trace",
                "1",
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    small, batched, whole = run("200", 0), run("all", 200), run("all", 0)
    assert small["samples"] == 200 and batched["samples"] == whole["samples"] == 1437
    assert batched["top"] == pytest.approx(whole["top"], rel=1e-4)
    assert batched["increment_mib"] <= 1.5 * small["increment_mib"], (batched, small)
    assert whole["increment_mib"] > 2.0 * small["increment_mib"], (whole, small)
