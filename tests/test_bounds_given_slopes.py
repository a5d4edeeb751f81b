"""Lower slopes given outright (``BoundSpec.lower_slopes``): the engine hook of ``scan --kind
slopes``.

- Given slopes equal to a policy's (``BoundResult.slopes``) reproduce that policy's bound
  exactly, for every policy under CROWN-IBP and the non-searched ones under CROWN (where a
  searched policy's intermediate passes use adaptive lines, while given slopes serve in every
  pass).
- Any slopes in [0, 1] give sound lines, so the bounds of interpolated slopes
  ``a(f) = (1 - f) a_p + f a_q`` between two policies contain every margin sampling and PGD find
  in the ball, on a small MLP and a small CNN (float64, so a violation is not rounding).
- Bad slopes (count, shape, range, NaN, a mapping) are one ValueError; the field stays out of
  the spec's equality and hash.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from bounds_helpers import (
    ALL_SLOPES,
    assert_le,
    empirical_margin_range,
    input_box,
    make_cnn,
    make_mlp,
    tolerance,
)

from bounds import BoundSpec, bound_model, compute_bounds, margin_spec, robust_loss
from common.names import SEARCHED_SLOPES

EPS = 0.08
DOMAIN = (0.0, 1.0)


def _problem(kind: str) -> tuple[torch.nn.Sequential, torch.Tensor, torch.Tensor, int]:
    """A small random network (float64), a batch of 3 inputs in [0, 1] and their labels."""
    gen = torch.Generator().manual_seed(11)
    if kind == "mlp":
        model, shape = make_mlp(6, [7, 5], 4, seed=3)
    else:
        shape = (1, 6, 6)
        model = make_cnn(shape, [(3, 3, 1, 1), (0, 2, 2, 0), (4, 3, 1, 0)], [6], 4, seed=5)
    x = torch.rand((3, *shape), generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (3,), generator=gen)
    return model.eval(), x, y, 4


def _policy(model, x, y, n, method: str, slope: str, beta: float = 1.0):
    """The bound of ``slope`` on the margins (seeded), with the spec it was computed with."""
    spec = BoundSpec(method, slope, beta, DOMAIN, opt_steps=3)
    C = margin_spec(y, n).to(x.dtype)
    res = bound_model(model, x, EPS, spec, C, generator=torch.Generator().manual_seed(7))
    return res, spec, C


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("method", ["crown-ibp", "crown"])
def test_a_policys_slopes_given_back_reproduce_its_bound(kind: str, method: str) -> None:
    model, x, y, n = _problem(kind)
    for slope in ALL_SLOPES:
        if method == "crown" and slope in SEARCHED_SLOPES:
            continue  # their intermediate passes use adaptive lines (BoundSpec doc)
        for beta in (1.0, 0.4) if method == "crown-ibp" else (1.0,):
            res, spec, C = _policy(model, x, y, n, method, slope, beta)
            given = dataclasses.replace(spec, lower_slopes=res.slopes)
            again = bound_model(model, x, EPS, given, C)
            assert torch.equal(again.lower, res.lower), (method, slope, beta)
            assert torch.equal(again.upper, res.upper), (method, slope, beta)
            for a, b in zip(again.slopes, res.slopes):
                assert torch.equal(a, b)


def test_given_slopes_reproduce_the_certified_loss() -> None:
    """The robust cross-entropy (no upper pass) of given tightest slopes is tightest's."""
    model, x, y, n = _problem("cnn")
    res, spec, _ = _policy(model, x, y, n, "crown-ibp", "tightest")
    plain = robust_loss(model, x, y, EPS, spec, torch.Generator().manual_seed(7))
    given = robust_loss(model, x, y, EPS, dataclasses.replace(spec, lower_slopes=res.slopes))
    assert torch.equal(plain, given)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("method,beta", [("crown-ibp", 1.0), ("crown-ibp", 0.6), ("crown", 1.0)])
def test_interpolated_slopes_give_sound_bounds(kind: str, method: str, beta: float) -> None:
    """Sampled points, corners and PGD in the ball never beat the bounds of the margins."""
    model, x, y, n = _problem(kind)
    lo, hi = input_box(x, EPS, DOMAIN)
    C = margin_spec(y, n).to(x.dtype)
    vmin, vmax = empirical_margin_range(model, C, lo, hi, n_uniform=24, n_corners=24, pgd_steps=20)
    for p, q in (("zero", "tightest"), ("uniform", "one"), ("adaptive", "binary")):
        a_p = _policy(model, x, y, n, method, p, beta)[0].slopes
        a_q = _policy(model, x, y, n, method, q, beta)[0].slopes
        for f in (0.0, 0.3, 0.5, 0.77, 1.0):
            slopes = [(1 - f) * s + f * t for s, t in zip(a_p, a_q)]
            spec = BoundSpec(method, None, beta, DOMAIN, lower_slopes=slopes)
            res = bound_model(model, x, EPS, spec, C)
            tol = tolerance(x.dtype, vmin, vmax, res.lower, res.upper)
            where = f"{kind} {method} beta {beta}: {p} -> {q} at {f}"
            assert_le(res.lower, vmin, tol, f"lower bound, {where}")
            assert_le(vmax, res.upper, tol, f"upper bound, {where}")


def test_bad_slopes_are_one_clear_error() -> None:
    model, x, y, n = _problem("mlp")
    res, spec, C = _policy(model, x, y, n, "crown-ibp", "adaptive")
    a0, a1 = res.slopes

    def bound(slopes):
        return bound_model(model, x, EPS, dataclasses.replace(spec, lower_slopes=slopes), C)

    with pytest.raises(ValueError, match=r"one tensor per ReLU layer \(2\), got 1"):
        bound([a0])
    with pytest.raises(ValueError, match=r"lower_slopes\[1\]: expected a tensor of shape"):
        bound([a0, a1[:2]])
    with pytest.raises(ValueError, match=r"lower_slopes\[0\]: every slope must lie in \[0, 1\]"):
        bound([a0 + 0.5, a1])
    with pytest.raises(ValueError, match=r"lower_slopes\[1\]: every slope must lie in \[0, 1\]"):
        bound([a0, torch.full_like(a1, float("nan"))])
    with pytest.raises(ValueError, match="a sequence of tensors"):
        BoundSpec(lower_slopes={0: a0, 1: a1})
    with pytest.raises(ValueError, match="a sequence of tensors"):
        compute_bounds(model, x, EPS, lower_slopes=a0)


def test_given_slopes_leave_the_specs_equality_alone() -> None:
    a = (torch.zeros(2, 3),)
    assert BoundSpec("crown-ibp", lower_slopes=a) == BoundSpec("crown-ibp")
    assert hash(BoundSpec("crown-ibp", lower_slopes=a)) == hash(BoundSpec("crown-ibp"))
    assert not BoundSpec("crown-ibp", "tightest", lower_slopes=a).searched
    assert BoundSpec("crown-ibp", "tightest").searched
    assert "lower_slopes" not in repr(BoundSpec("crown-ibp", lower_slopes=a))
