"""Shared helpers for the bound-engine tests: random networks, boxes, attacks, exact enumeration.

Everything here is independent of the engine under test (it imports only ``bounds.Normalize``),
so that a bug in ``bounds`` cannot hide itself by also being in the reference:

- ``cases``: a hypothesis strategy of random small networks of the zoo's layer types
  (``Normalize``, ``Linear``, ``Conv2d``, ``ReLU``, ``Flatten``) with inputs, labels, radii and
  domains.
- ``input_box``: the perturbation set ``{x' : |x' - x|_inf <= eps} ∩ domain`` as a box ``[lo, hi]``.
- ``empirical_margin_range``: the smallest / largest value of each row of ``C f(x')`` found over
  the box by uniform samples, random corners and a projected sign-gradient attack (PGD);
  every sound lower bound is ``<=`` the minimum found, every upper bound ``>=`` the maximum.
- ``empirical_max_ce``: the largest cross-entropy found over the box (samples, corners, PGD).
- ``exact_margin_range``: the true min / max of each margin over the box, by enumerating the
  activation patterns of the ReLUs. On the region where a pattern ``p`` holds the network is
  affine, ``f(x) = W_p x + b_p``, and the region is the polytope
  ``{x in box : sign constraints of every pre-activation}``; each margin's extremum over it is
  a linear program (``scipy.optimize.linprog``, HiGHS). Patterns are explored depth-first,
  neuron by neuron, and a branch is cut as soon as its polytope is empty, so only the feasible
  patterns (at most the number of cells of the hyperplane arrangement) are visited.
- ``milp_margin_range``: the same true extrema by a big-M mixed-integer program, used only to
  cross-check the enumeration.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from hypothesis import strategies as st
from scipy.optimize import linprog
from torch import nn

from bounds import Normalize

#: every (method, slope) pair the engine accepts; cap takes only same-slope
ALL_SLOPES = ["adaptive", "zero", "one", "same-slope", "uniform", "binary", "optimized", "tightest"]
COMBOS = (
    [("ibp", "adaptive")]
    + [("crown-ibp", s) for s in ALL_SLOPES]
    + [("crown", s) for s in ALL_SLOPES]
    + [("cap", "same-slope")]
)

# --------------------------------------------------------------------------------------------
# random networks
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    """One random test problem: a network, a batch of inputs with labels, a radius and a domain."""

    model: nn.Sequential
    x: torch.Tensor
    y: torch.Tensor
    eps: float | torch.Tensor
    domain: tuple[float, float] | None
    n_classes: int
    description: str = ""

    def __repr__(self) -> str:  # hypothesis prints this on failure
        eps = self.eps.tolist() if isinstance(self.eps, torch.Tensor) else self.eps
        return (
            f"Case({self.description}, x.shape={tuple(self.x.shape)}, dtype={self.x.dtype}, "
            f"eps={eps}, domain={self.domain}, y={self.y.tolist()},\n model={self.model})"
        )


def _init_affine(
    layer: nn.Module, gen: torch.Generator, weight_scale: float, bias_scale: float
) -> None:
    """Fill a Linear/Conv2d with ``N(0, weight_scale^2 / fan_in)`` weights and ``N(0, bias_scale^2)`` biases."""
    w = layer.weight
    fan_in = w[0].numel()
    with torch.no_grad():
        w.copy_(
            torch.randn(w.shape, generator=gen, dtype=torch.float64)
            * weight_scale
            / math.sqrt(fan_in)
        )
        if layer.bias is not None:
            layer.bias.copy_(
                torch.randn(layer.bias.shape, generator=gen, dtype=torch.float64) * bias_scale
            )


def make_mlp(
    n_in: int,
    hidden: Sequence[int],
    n_out: int,
    *,
    seed: int = 0,
    normalize: bool = True,
    image: bool = False,
    weight_scale: float = 1.0,
    bias_scale: float = 0.3,
    bias: bool = True,
    dtype: torch.dtype = torch.float64,
) -> tuple[nn.Sequential, tuple[int, ...]]:
    """A random ``[Normalize] -> [Flatten] -> (Linear -> ReLU)* -> Linear`` network.

    With ``image=True`` the input is ``[1, n_in, 1]``-shaped per sample (one channel), so a
    ``Flatten`` sits in front; else the input is flat ``[n_in]``. Returns ``(model, input_shape)``.
    """
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    input_shape: tuple[int, ...] = (1, n_in, 1) if image else (n_in,)
    if normalize:
        n_ch = 1 if image else n_in
        mean = (torch.rand(n_ch, generator=gen) * 0.6 + 0.2).tolist()
        std = (torch.rand(n_ch, generator=gen) * 0.8 + 0.2).tolist()
        layers.append(Normalize(mean, std))
    if image:
        layers.append(nn.Flatten())
    width = n_in
    for h in hidden:
        lin = nn.Linear(width, h, bias=bias)
        _init_affine(lin, gen, weight_scale, bias_scale)
        layers += [lin, nn.ReLU()]
        width = h
    out = nn.Linear(width, n_out, bias=bias)
    _init_affine(out, gen, weight_scale, bias_scale)
    layers.append(out)
    return nn.Sequential(*layers).to(dtype), input_shape


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def make_cnn(
    in_shape: tuple[int, int, int],
    convs: Sequence[tuple],
    hidden: Sequence[int],
    n_out: int,
    *,
    seed: int = 0,
    normalize: bool = True,
    weight_scale: float = 1.0,
    bias_scale: float = 0.3,
    dtype: torch.dtype = torch.float64,
) -> nn.Sequential:
    """A random ``[Normalize] -> (Conv2d -> ReLU [-> AvgPool2d])* -> Flatten -> (Linear -> ReLU)* -> Linear``
    network.

    ``convs`` lists ``(out_channels, kernel, stride, padding)`` per layer, each window argument
    an int or a ``(height, width)`` pair (rectangular kernels and strides); ``out_channels = 0``
    makes the layer an ``AvgPool2d(kernel, stride, padding)`` (channels unchanged, no ReLU).
    """
    gen = torch.Generator().manual_seed(seed)
    c, h, w = in_shape
    layers: list[nn.Module] = []
    if normalize:
        mean = (torch.rand(c, generator=gen) * 0.6 + 0.2).tolist()
        std = (torch.rand(c, generator=gen) * 0.8 + 0.2).tolist()
        layers.append(Normalize(mean, std))
    for oc, k, s, p in convs:
        (kh, kw), (sh, sw), (ph, pw) = _pair(k), _pair(s), _pair(p)
        if oc == 0:
            layers.append(nn.AvgPool2d((kh, kw), stride=(sh, sw), padding=(ph, pw)))
        else:
            conv = nn.Conv2d(c, oc, (kh, kw), stride=(sh, sw), padding=(ph, pw))
            _init_affine(conv, gen, weight_scale, bias_scale)
            layers += [conv, nn.ReLU()]
            c = oc
        h = (h + 2 * ph - kh) // sh + 1
        w = (w + 2 * pw - kw) // sw + 1
    layers.append(nn.Flatten())
    width = c * h * w
    for hd in hidden:
        lin = nn.Linear(width, hd)
        _init_affine(lin, gen, weight_scale, bias_scale)
        layers += [lin, nn.ReLU()]
        width = hd
    out = nn.Linear(width, n_out)
    _init_affine(out, gen, weight_scale, bias_scale)
    layers.append(out)
    return nn.Sequential(*layers).to(dtype)


EPS_CHOICES = (0.0, 1e-3, 0.01, 0.02, 0.05, 0.1, 0.1, 0.3, 1.5)


@st.composite
def conv_specs(draw: st.DrawFn, h: int, w: int) -> list[tuple]:
    """1-2 small conv layers, each sometimes followed by an AvgPool2d, whose output stays at least
    1x1. Kernels, strides and paddings are drawn per dimension, so windows are often rectangular
    (a bound that mixes up height and width, e.g. a pool's ``1 / kh^2`` for ``1 / (kh kw)``, fails)."""
    specs = []

    def window(max_k: int, pool: bool) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        k = (draw(st.integers(1, max_k)), draw(st.integers(1, max_k)))
        st_ = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        p = tuple(draw(st.integers(0, (kk // 2) if pool else (1 if kk > 1 else 0))) for kk in k)
        return k, st_, p  # type: ignore[return-value]

    def out(h: int, w: int, k, s, p) -> tuple[int, int]:
        return (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1

    for _ in range(draw(st.integers(1, 2))):
        k, s, p = window(3, pool=False)
        nh, nw = out(h, w, k, s, p)
        if nh < 1 or nw < 1:
            break
        specs.append((draw(st.integers(1, 2)), k, s, p))
        h, w = nh, nw
        if draw(st.booleans()):
            k, s, p = window(3, pool=True)
            nh, nw = out(h, w, k, s, p)
            if nh >= 1 and nw >= 1:
                specs.append((0, k, s, p))
                h, w = nh, nw
    return specs


@st.composite
def cases(
    draw: st.DrawFn,
    kinds: Sequence[str] = ("mlp", "mlp-image", "cnn"),
    dtype: torch.dtype = torch.float64,
    max_batch: int = 3,
    eps_choices: Sequence[float] = EPS_CHOICES,
    domains: Sequence[tuple[float, float] | None] = (None, (0.0, 1.0)),
    allow_tensor_eps: bool = True,
    n_in_range: tuple[int, int] = (1, 5),
    hidden_layers: tuple[int, int] = (0, 3),
    max_width: int = 6,
    n_classes_range: tuple[int, int] = (2, 4),
) -> Case:
    """A random tiny network of the zoo's layer types with a batch of inputs, labels, eps, domain."""
    kind = draw(st.sampled_from(list(kinds)))
    seed = draw(st.integers(0, 2**31 - 1))
    n_classes = draw(st.integers(*n_classes_range))
    normalize = draw(st.booleans())
    weight_scale = draw(st.sampled_from([0.5, 1.0, 2.0]))
    bias_scale = draw(st.sampled_from([0.0, 0.3, 1.0]))
    if kind == "cnn":
        c_in = draw(st.integers(1, 2))
        h = draw(st.integers(4, 6))
        w = draw(st.integers(4, 6))
        convs = draw(conv_specs(h, w))
        hidden = draw(st.lists(st.integers(2, 6), min_size=0, max_size=1))
        model = make_cnn(
            (c_in, h, w),
            convs,
            hidden,
            n_classes,
            seed=seed,
            normalize=normalize,
            weight_scale=weight_scale,
            bias_scale=bias_scale,
            dtype=dtype,
        )
        input_shape: tuple[int, ...] = (c_in, h, w)
        desc = f"cnn in={input_shape} convs={convs} hidden={hidden}"
    else:
        n_in = draw(st.integers(*n_in_range))
        hidden = draw(
            st.lists(
                st.integers(1, max_width), min_size=hidden_layers[0], max_size=hidden_layers[1]
            )
        )
        bias = draw(st.sampled_from([True, True, False]))
        model, input_shape = make_mlp(
            n_in,
            hidden,
            n_classes,
            seed=seed,
            normalize=normalize,
            image=(kind == "mlp-image"),
            weight_scale=weight_scale,
            bias_scale=bias_scale,
            bias=bias,
            dtype=dtype,
        )
        desc = f"{kind} n_in={n_in} hidden={hidden}"
    desc += f" seed={seed} normalize={normalize} ws={weight_scale} bs={bias_scale}"
    batch = draw(st.integers(1, max_batch))
    domain = draw(st.sampled_from(list(domains)))
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.rand((batch, *input_shape), generator=gen, dtype=torch.float64)
    if domain is None:
        x = x * 2.0 - 0.5
    else:
        snap = torch.rand(x.shape, generator=gen, dtype=torch.float64)
        x = torch.where(
            snap < 0.1, torch.zeros_like(x), torch.where(snap > 0.9, torch.ones_like(x), x)
        )
    x = x.to(dtype)
    y = torch.randint(0, n_classes, (batch,), generator=gen)
    if allow_tensor_eps and draw(st.booleans()):
        eps: float | torch.Tensor = torch.tensor(
            [draw(st.sampled_from(list(eps_choices))) for _ in range(batch)], dtype=dtype
        )
    else:
        eps = float(draw(st.sampled_from(list(eps_choices))))
    return Case(model.eval(), x, y, eps, domain, n_classes, desc)


# --------------------------------------------------------------------------------------------
# boxes, margins, forward passes
# --------------------------------------------------------------------------------------------


def input_box(
    x: torch.Tensor, eps: float | torch.Tensor, domain: tuple[float, float] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[lo, hi]`` of the ball ``|x' - x|_inf <= eps`` intersected with ``domain`` (None: no clip)."""
    e = torch.as_tensor(eps, dtype=x.dtype)
    if e.dim() > 0:
        e = e.view(-1, *([1] * (x.dim() - 1)))
    lo, hi = x - e, x + e
    if domain is not None:
        lo = lo.clamp(min=domain[0])
        hi = hi.clamp(max=domain[1])
    return lo, hi


def margin_matrix(
    y: torch.Tensor, n_classes: int, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Reference ``C``: rows ``e_y - e_j`` for ``j != y`` in increasing ``j`` -> ``[B, n-1, n]``."""
    rows = []
    for yb in y.tolist():
        eye = torch.eye(n_classes, dtype=dtype)
        rows.append(torch.stack([eye[yb] - eye[j] for j in range(n_classes) if j != yb]))
    return torch.stack(rows)


def spec_values(model: nn.Module, xs: torch.Tensor, C: torch.Tensor | None) -> torch.Tensor:
    """``C f(x')`` for points ``xs [B, K, *in]`` -> ``[B, K, S]`` (``C=None``: the logits)."""
    b, k = xs.shape[:2]
    out = model(xs.reshape(b * k, *xs.shape[2:])).reshape(b, k, -1)
    if C is None:
        return out
    return torch.einsum("bsn,bkn->bks", C.to(out.dtype), out)


def relu_inputs(model: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """The input of every ReLU of ``model`` at ``x`` (the pre-activations), in order."""
    acts = []
    h = x
    for layer in model:
        if isinstance(layer, nn.ReLU):
            acts.append(h)
        h = layer(h)
    return acts


def uniform_points(
    lo: torch.Tensor, hi: torch.Tensor, k: int, gen: torch.Generator
) -> torch.Tensor:
    """``k`` uniform points per sample of the box -> ``[B, k, *in]``."""
    u = torch.rand((lo.shape[0], k, *lo.shape[1:]), generator=gen, dtype=torch.float64).to(lo.dtype)
    return lo.unsqueeze(1) + u * (hi - lo).unsqueeze(1)


def corner_points(lo: torch.Tensor, hi: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """``k`` random vertices per sample of the box -> ``[B, k, *in]``."""
    bits = torch.rand((lo.shape[0], k, *lo.shape[1:]), generator=gen) < 0.5
    return torch.where(bits, hi.unsqueeze(1), lo.unsqueeze(1))


def pgd_minimise(
    fn: Callable[[torch.Tensor], torch.Tensor],
    lo: torch.Tensor,
    hi: torch.Tensor,
    *,
    steps: int = 30,
    restarts: int = 2,
    gen: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise ``fn`` (``[N, *in] -> [N]``, independent per row) over the boxes ``[lo, hi]`` (``[N, *in]``).

    Projected sign-gradient descent: ``x <- clip(x - a_t * sign(grad), lo, hi)`` with the step
    ``a_t`` decaying geometrically from ``(hi - lo) / 2`` to ``(hi - lo) / 200``; the first
    restart starts at the centre, later ones at uniform random points. Returns the best value
    seen per row and the point attaining it.
    """
    gen = gen or torch.Generator().manual_seed(0)
    width = hi - lo
    best_val = torch.full((lo.shape[0],), math.inf, dtype=lo.dtype)
    best_x = lo.clone()
    for r in range(restarts):
        if r == 0:
            x = (lo + hi) / 2
        else:
            x = lo + torch.rand(lo.shape, generator=gen, dtype=torch.float64).to(lo.dtype) * width
        for t in range(steps + 1):
            x = x.detach().requires_grad_(True)
            val = fn(x)
            with torch.no_grad():
                better = val < best_val
                best_val = torch.where(better, val, best_val)
                best_x[better] = x[better]
            if t == steps:
                break
            (grad,) = torch.autograd.grad(val.sum(), x)
            a = 0.5 * (0.01 ** (t / max(steps - 1, 1)))
            with torch.no_grad():
                x = torch.minimum(torch.maximum(x - a * width * grad.sign(), lo), hi)
    return best_val.detach(), best_x.detach()


def empirical_margin_range(
    model: nn.Module,
    C: torch.Tensor | None,
    lo: torch.Tensor,
    hi: torch.Tensor,
    *,
    n_uniform: int = 32,
    n_corners: int = 32,
    pgd_steps: int = 30,
    restarts: int = 2,
    seed: int = 0,
    return_points: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Smallest and largest value of every row of ``C f(x')`` found in the box -> two ``[B, S]``.

    Combines uniform samples, random corners, the box centre and a PGD attack per row and per
    direction (``restarts`` PGD runs: the centre, then random starts). With ``return_points`` also
    returns every point tried, ``[B, K, *in]``.
    """
    gen = torch.Generator().manual_seed(seed)
    pts = torch.cat(
        [
            ((lo + hi) / 2).unsqueeze(1),
            uniform_points(lo, hi, n_uniform, gen),
            corner_points(lo, hi, n_corners, gen),
        ],
        dim=1,
    )
    with torch.no_grad():
        vals = spec_values(model, pts, C)  # [B, K, S]
    vmin, vmax = vals.min(dim=1).values, vals.max(dim=1).values
    b, s = vmin.shape
    in_shape = lo.shape[1:]
    rows = C if C is not None else torch.eye(s, dtype=lo.dtype).expand(b, s, s)
    rows = rows.to(lo.dtype).reshape(b * s, -1)
    lo_r = lo.unsqueeze(1).expand(b, s, *in_shape).reshape(b * s, *in_shape)
    hi_r = hi.unsqueeze(1).expand(b, s, *in_shape).reshape(b * s, *in_shape)
    extra = []
    if pgd_steps > 0:
        for sign in (1.0, -1.0):
            val, xs = pgd_minimise(
                lambda z: sign * (model(z) * rows).sum(-1),
                lo_r,
                hi_r,
                steps=pgd_steps,
                restarts=restarts,
                gen=gen,
            )
            val = sign * val.view(b, s)
            vmin = torch.minimum(vmin, val) if sign > 0 else vmin
            vmax = torch.maximum(vmax, val) if sign < 0 else vmax
            extra.append(xs.view(b, s, *in_shape))
    if return_points:
        return vmin, vmax, torch.cat([pts, *extra], dim=1)
    return vmin, vmax


def cross_entropy_at(model: nn.Module, xs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``CE(f(x'), y)`` for points ``xs [B, K, *in]`` -> ``[B, K]``."""
    b, k = xs.shape[:2]
    logits = model(xs.reshape(b * k, *xs.shape[2:]))
    return torch.nn.functional.cross_entropy(logits, y.repeat_interleave(k), reduction="none").view(
        b, k
    )


def empirical_max_ce(
    model: nn.Module,
    y: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    *,
    n_uniform: int = 32,
    n_corners: int = 32,
    pgd_steps: int = 30,
    restarts: int = 2,
    seed: int = 0,
) -> torch.Tensor:
    """Largest cross-entropy found in the box per sample (samples, corners, PGD ascent) -> ``[B]``."""
    gen = torch.Generator().manual_seed(seed)
    pts = torch.cat(
        [
            ((lo + hi) / 2).unsqueeze(1),
            uniform_points(lo, hi, n_uniform, gen),
            corner_points(lo, hi, n_corners, gen),
        ],
        dim=1,
    )
    with torch.no_grad():
        best = cross_entropy_at(model, pts, y).max(dim=1).values
    if pgd_steps > 0:
        val, _ = pgd_minimise(
            lambda z: -torch.nn.functional.cross_entropy(model(z), y, reduction="none"),
            lo,
            hi,
            steps=pgd_steps,
            restarts=restarts,
            gen=gen,
        )
        best = torch.maximum(best, -val)
    return best


def tolerance(dtype: torch.dtype, *refs: torch.Tensor) -> torch.Tensor:
    """Rounding allowance for comparing a bound with a value: ``rtol * (1 + max |ref|)``.

    ``rtol`` is 1e-8 for float64 (so real unsoundness is never hidden) and 1e-5 for float32.
    """
    rtol = 1e-8 if dtype == torch.float64 else 1e-5
    scale = torch.ones(())
    for r in refs:
        scale = torch.maximum(
            scale, r.detach().abs().to(torch.float64).max() if r.numel() else scale
        )
    return rtol * (1.0 + scale)


def assert_le(a: torch.Tensor, b: torch.Tensor, tol: float | torch.Tensor, what: str) -> None:
    """Assert ``a <= b + tol`` element-wise, reporting the worst violation and where it is."""
    a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)
    viol = a64 - b64 - torch.as_tensor(tol, dtype=torch.float64)
    if viol.numel() and bool((viol > 0).any()):
        idx = np.unravel_index(int(viol.argmax()), tuple(viol.shape))
        raise AssertionError(
            f"{what}: violated by {float((a64 - b64)[idx]):.6g} (tol {float(tol):.3g}) at index {idx}: "
            f"{float(a64[idx]):.10g} > {float(b64[idx]):.10g}; "
            f"{int((viol > 0).sum())} of {viol.numel()} entries violated"
        )


def assert_close(a: torch.Tensor, b: torch.Tensor, tol: float | torch.Tensor, what: str) -> None:
    """Assert ``|a - b| <= tol`` element-wise, reporting the worst difference."""
    assert a.shape == b.shape, f"{what}: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}"
    assert_le(a, b, tol, what + " (a <= b)")
    assert_le(b, a, tol, what + " (b <= a)")


# --------------------------------------------------------------------------------------------
# exact extrema by activation-pattern enumeration
# --------------------------------------------------------------------------------------------


def affine_pieces(
    model: nn.Sequential, input_shape: Sequence[int]
) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """The network as alternating dense affine maps ``(W, b)`` (float64, flat) and ``None`` (ReLU).

    Every maximal run of non-ReLU layers (Normalize, Linear, Conv2d, Flatten) is affine; its
    matrix is read off by evaluating it at 0 and at the unit vectors.
    """
    pieces: list[tuple[np.ndarray, np.ndarray] | None] = []
    run: list[nn.Module] = []
    shape = tuple(input_shape)

    def flush() -> None:
        nonlocal shape
        n = int(np.prod(shape))
        basis = torch.cat([torch.zeros(1, n), torch.eye(n)]).to(torch.float64).view(n + 1, *shape)
        h = basis
        with torch.no_grad():
            for layer in run:
                h = _run64(layer, h)
        out_shape = tuple(h.shape[1:])
        h = h.reshape(n + 1, -1)
        b = h[0].numpy().copy()
        w = (h[1:] - h[0]).T.numpy().copy()
        pieces.append((w, b))
        shape = out_shape
        run.clear()

    for layer in model:
        if isinstance(layer, nn.ReLU):
            flush()
            pieces.append(None)
        else:
            run.append(layer)
    flush()
    return pieces


def _run64(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Apply ``layer`` in float64 without changing the original module."""
    import copy

    return copy.deepcopy(layer).to(torch.float64)(h)


def _lp(
    c: np.ndarray, a_ub: list[np.ndarray], b_ub: list[float], bounds: list[tuple[float, float]]
):
    res = linprog(
        c,
        A_ub=np.array(a_ub) if a_ub else None,
        b_ub=np.array(b_ub) if b_ub else None,
        bounds=bounds,
        method="highs",
    )
    return res


@dataclasses.dataclass
class ExactResult:
    """True extrema of every spec row over the box, and the points attaining them."""

    minimum: np.ndarray  # [S]
    maximum: np.ndarray  # [S]
    argmin: np.ndarray  # [S, n_in]
    argmax: np.ndarray  # [S, n_in]
    regions: int  # number of feasible activation patterns visited
    lps: int  # number of linear programs solved


def exact_margin_range(
    model: nn.Sequential,
    lo: torch.Tensor,
    hi: torch.Tensor,
    C: torch.Tensor | None,
    *,
    max_regions: int = 20000,
) -> ExactResult:
    """True min and max over the box ``[lo, hi]`` (one sample, ``[*in]``) of every row of ``C f(x)``.

    Depth-first over the ReLUs in network order. A node carries the polytope
    ``P = {x in box : s_k (w_k x + c_k) >= 0 for every decided neuron k}`` and the affine
    expression of the current layer's pre-activations in ``x``. For the next neuron ``z = w x + c``
    the branch "active" (``z >= 0``) is kept iff ``max_P z >= 0`` and "inactive" iff
    ``min_P z <= 0`` (each an LP, skipped when interval arithmetic over the box already decides
    it). At a leaf the network is ``W x + b`` on ``P`` and each spec row's extremum over ``P`` is
    an LP. Returns the extrema over all leaves.
    """
    in_shape = tuple(lo.shape)
    pieces = affine_pieces(model, in_shape)
    lo_np = lo.detach().to(torch.float64).reshape(-1).numpy()
    hi_np = hi.detach().to(torch.float64).reshape(-1).numpy()
    bounds = list(zip(lo_np.tolist(), hi_np.tolist()))
    n_in = lo_np.size
    tol = 1e-9
    stats = {"lps": 0, "regions": 0}

    def lp_min(c_vec: np.ndarray, a_ub, b_ub):
        stats["lps"] += 1
        res = _lp(c_vec, a_ub, b_ub, bounds)
        if res.status == 2:  # infeasible
            return None, None
        assert res.status == 0, f"linprog failed: {res.message}"
        return float(res.fun), np.asarray(res.x)

    # compose the leading affine piece
    assert pieces[0] is not None
    w0, b0 = pieces[0]
    results: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def leaf(wf: np.ndarray, bf: np.ndarray, a_ub, b_ub) -> None:
        stats["regions"] += 1
        if stats["regions"] > max_regions:
            raise RuntimeError("too many activation regions for exact enumeration")
        if C is None:
            rows = np.eye(wf.shape[0])
        else:
            rows = C.detach().to(torch.float64).numpy()
        mins, maxs = np.empty(rows.shape[0]), np.empty(rows.shape[0])
        amin, amax = np.empty((rows.shape[0], n_in)), np.empty((rows.shape[0], n_in))
        for s, r in enumerate(rows):
            g, h = r @ wf, float(r @ bf)
            v, xv = lp_min(g, a_ub, b_ub)
            if v is None:  # the region became empty within tolerance: skip it
                return
            mins[s], amin[s] = v + h, xv
            v, xv = lp_min(-g, a_ub, b_ub)
            if v is None:
                return
            maxs[s], amax[s] = -v + h, xv
        results.append((mins, maxs, amin, amax))

    def visit(
        piece_idx: int, wz: np.ndarray, bz: np.ndarray, j: int, pattern: list[bool], a_ub, b_ub
    ) -> None:
        """``wz x + bz``: pre-activations of the ReLU layer at ``pieces[piece_idx]``; ``j``: next neuron."""
        if j == wz.shape[0]:
            mask = np.array(pattern, dtype=np.float64)
            wa, ba = wz * mask[:, None], bz * mask
            nxt = pieces[piece_idx + 1]
            assert nxt is not None
            wn, bn = nxt[0] @ wa, nxt[0] @ ba + nxt[1]
            if piece_idx + 2 < len(pieces):  # another ReLU layer follows
                visit(piece_idx + 2, wn, bn, 0, [], a_ub, b_ub)
            else:
                leaf(wn, bn, a_ub, b_ub)
            return
        w, c = wz[j], float(bz[j])
        # interval arithmetic over the box (a superset of the polytope)
        zmin = c + float(np.minimum(w * lo_np, w * hi_np).sum())
        zmax = c + float(np.maximum(w * lo_np, w * hi_np).sum())
        can_active = zmax >= -tol
        can_dead = zmin <= tol
        if can_active and can_dead:
            v, _ = lp_min(-w, a_ub, b_ub)  # max z = -v + c
            if v is None:
                return
            can_active = -v + c >= -tol
            v, _ = lp_min(w, a_ub, b_ub)
            can_dead = v is not None and v + c <= tol
        if can_active:  # z >= 0  <=>  -w x <= c
            visit(piece_idx, wz, bz, j + 1, pattern + [True], a_ub + [-w], b_ub + [c])
        if can_dead:  # z <= 0  <=>  w x <= -c
            visit(piece_idx, wz, bz, j + 1, pattern + [False], a_ub + [w], b_ub + [-c])

    if len(pieces) == 1:
        leaf(w0, b0, [], [])
    else:
        assert pieces[1] is None
        visit(1, w0, b0, 0, [], [], [])
    assert results, "no feasible activation region found (the box is empty?)"
    mins = np.min([r[0] for r in results], axis=0)
    maxs = np.max([r[1] for r in results], axis=0)
    imin = np.argmin([r[0] for r in results], axis=0)
    imax = np.argmax([r[1] for r in results], axis=0)
    argmin = np.stack([results[i][2][s] for s, i in enumerate(imin)])
    argmax = np.stack([results[i][3][s] for s, i in enumerate(imax)])
    return ExactResult(mins, maxs, argmin, argmax, stats["regions"], stats["lps"])


def exact_batch(
    model: nn.Sequential, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, list[ExactResult]]:
    """``exact_margin_range`` for every sample of a batch -> ``(min [B, S], max [B, S], results)``."""
    res = [
        exact_margin_range(model, lo[b], hi[b], None if C is None else C[b])
        for b in range(lo.shape[0])
    ]
    mins = torch.tensor(np.stack([r.minimum for r in res]))
    maxs = torch.tensor(np.stack([r.maximum for r in res]))
    return mins, maxs, res


def milp_margin_range(
    model: nn.Sequential, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor | None
) -> tuple[np.ndarray, np.ndarray]:
    """True min / max of every spec row over the box by a big-M MILP (cross-check only).

    Variables: the input ``x``, and per ReLU layer the pre-activations ``z``, activations
    ``a`` and binaries ``d``. With interval bounds ``l <= z <= u`` (computed here by plain
    interval arithmetic, which is sound): ``a >= z``, ``a >= 0``, ``a <= z - l (1 - d)``,
    ``a <= u d``; exact for ``d`` binary.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    pieces = affine_pieces(model, tuple(lo.shape))
    lo_np = lo.detach().to(torch.float64).reshape(-1).numpy()
    hi_np = hi.detach().to(torch.float64).reshape(-1).numpy()
    # variable layout: x, then per relu layer (z, a, d)
    var_lo, var_hi, integrality = list(lo_np), list(hi_np), [0] * lo_np.size
    cur_idx = list(range(lo_np.size))
    cur_lo, cur_hi = lo_np.copy(), hi_np.copy()
    n_vars = lo_np.size
    constraints = []
    for k, piece in enumerate(pieces):
        if piece is None:
            continue
        w, b = piece
        pos, neg = np.maximum(w, 0), np.minimum(w, 0)
        zl = b + pos @ cur_lo + neg @ cur_hi
        zu = b + pos @ cur_hi + neg @ cur_lo
        m = w.shape[0]
        z_idx = list(range(n_vars, n_vars + m))
        n_vars += m
        var_lo += zl.tolist()
        var_hi += zu.tolist()
        integrality += [0] * m
        for r in range(m):  # z = w x_prev + b
            row = {z_idx[r]: 1.0}
            for cidx, val in zip(cur_idx, w[r]):
                row[cidx] = row.get(cidx, 0.0) - val
            constraints.append((row, b[r], b[r]))
        is_last = k == len(pieces) - 1
        if is_last:
            out_idx = z_idx
            break
        a_idx = list(range(n_vars, n_vars + m))
        n_vars += m
        var_lo += [0.0] * m
        var_hi += np.maximum(zu, 0).tolist()
        integrality += [0] * m
        d_idx = list(range(n_vars, n_vars + m))
        n_vars += m
        var_lo += [0.0] * m
        var_hi += [1.0] * m
        integrality += [1] * m
        for r in range(m):
            constraints.append(({a_idx[r]: 1.0, z_idx[r]: -1.0}, 0.0, np.inf))  # a >= z
            # a <= z - l (1 - d)  <=>  a - z - l d <= -l
            constraints.append(({a_idx[r]: 1.0, z_idx[r]: -1.0, d_idx[r]: -zl[r]}, -np.inf, -zl[r]))
            # a <= u d
            constraints.append(({a_idx[r]: 1.0, d_idx[r]: -max(zu[r], 0.0)}, -np.inf, 0.0))
        cur_idx = a_idx
        cur_lo, cur_hi = np.maximum(zl, 0), np.maximum(zu, 0)
    a_mat = np.zeros((len(constraints), n_vars))
    lb = np.empty(len(constraints))
    ub = np.empty(len(constraints))
    for r, (row, l_, u_) in enumerate(constraints):
        for cidx, val in row.items():
            a_mat[r, cidx] += val
        lb[r], ub[r] = l_, u_
    spec = np.eye(len(out_idx)) if C is None else C.detach().to(torch.float64).numpy()
    mins, maxs = np.empty(spec.shape[0]), np.empty(spec.shape[0])
    for s, rrow in enumerate(spec):
        c = np.zeros(n_vars)
        c[out_idx] = rrow
        for sign, store in ((1.0, mins), (-1.0, maxs)):
            res = milp(
                sign * c,
                constraints=LinearConstraint(a_mat, lb, ub),
                integrality=np.array(integrality),
                bounds=Bounds(np.array(var_lo), np.array(var_hi)),
            )
            assert res.status == 0, f"milp failed: {res.message}"
            store[s] = sign * res.fun
    return mins, maxs


# --------------------------------------------------------------------------------------------
# reference interval bound propagation
# --------------------------------------------------------------------------------------------


def _affine_interval(
    layer: nn.Module, lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact interval image of the box ``[lo, hi]`` under one affine layer: ``W+ lo + W- hi + b``."""
    f = torch.nn.functional
    if isinstance(layer, nn.Linear):
        wp, wn = layer.weight.clamp(min=0), layer.weight.clamp(max=0)
        return f.linear(lo, wp, layer.bias) + f.linear(hi, wn), f.linear(
            hi, wp, layer.bias
        ) + f.linear(lo, wn)
    if isinstance(layer, nn.Conv2d):
        wp, wn = layer.weight.clamp(min=0), layer.weight.clamp(max=0)
        kw = dict(
            stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups
        )
        return (
            f.conv2d(lo, wp, layer.bias, **kw) + f.conv2d(hi, wn, None, **kw),
            f.conv2d(hi, wp, layer.bias, **kw) + f.conv2d(lo, wn, None, **kw),
        )
    if isinstance(layer, (Normalize, nn.Flatten, nn.AvgPool2d)):  # increasing in every coordinate
        return layer(lo), layer(hi)
    raise TypeError(f"not an affine layer: {layer}")


def reference_ibp(
    model: nn.Sequential, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Plain interval arithmetic through ``model`` over ``[lo, hi]``; the last Linear is merged with ``C``.

    Returns ``(lower [B, S], upper [B, S], [(l, u) per ReLU input])``.
    """
    preact = []
    layers = list(model)
    for k, layer in enumerate(layers):
        last = k == len(layers) - 1
        if isinstance(layer, nn.ReLU):
            preact.append((lo, hi))
            lo, hi = lo.clamp(min=0), hi.clamp(min=0)
        elif last and isinstance(layer, nn.Linear) and C is not None:
            w = torch.matmul(C.to(lo.dtype), layer.weight)  # [B, S, n]
            b = torch.matmul(C.to(lo.dtype), layer.bias) if layer.bias is not None else 0.0
            wp, wn = w.clamp(min=0), w.clamp(max=0)
            low = (wp @ lo.unsqueeze(-1) + wn @ hi.unsqueeze(-1)).squeeze(-1) + b
            up = (wp @ hi.unsqueeze(-1) + wn @ lo.unsqueeze(-1)).squeeze(-1) + b
            return low, up, preact
        else:
            lo, hi = _affine_interval(layer, lo, hi)
    if C is not None:
        cp, cn = C.clamp(min=0), C.clamp(max=0)
        return (
            (cp @ lo.unsqueeze(-1) + cn @ hi.unsqueeze(-1)).squeeze(-1),
            (cp @ hi.unsqueeze(-1) + cn @ lo.unsqueeze(-1)).squeeze(-1),
            preact,
        )
    return lo, hi, preact


# --------------------------------------------------------------------------------------------
# reference CROWN backward pass (dense matrices)
# --------------------------------------------------------------------------------------------


def reference_slopes(slope: str, l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Lower slope of a deterministic policy on unstable neurons (docs/design.md)."""
    if slope == "adaptive":
        return (u >= -l).to(l.dtype)
    if slope == "zero":
        return torch.zeros_like(l)
    if slope == "one":
        return torch.ones_like(l)
    if slope == "same-slope":
        den = torch.where((l < 0) & (u > 0), u - l, torch.ones_like(u))
        return (u / den).clamp(0, 1)
    raise ValueError(f"{slope} is not deterministic")


def reference_crown(
    model: nn.Sequential,
    lo: torch.Tensor,
    hi: torch.Tensor,
    C: torch.Tensor,
    preact: Sequence[tuple[torch.Tensor, torch.Tensor]],
    slopes: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower bound ``[B, S]`` of ``C f(x')`` over ``[lo, hi]`` by one CROWN backward pass, and the
    input coefficients ``[B, S, n_in]``.

    ``preact[k] = (l, u)`` and ``slopes[k]`` (the lower slope, used on unstable neurons only) per
    ReLU layer. Lines: ``a z <= relu(z) <= s (z - l)`` with ``s = u / (u - l)`` when ``l < 0 < u``;
    exact (slope 1 or 0, intercept 0) otherwise. Dense float64 matrices from ``affine_pieces``.
    """
    pieces = affine_pieces(model, tuple(lo.shape[1:]))
    b = lo.shape[0]
    A = C.to(torch.float64)
    bias = torch.zeros(A.shape[:2], dtype=torch.float64)
    relu_k = len(preact) - 1
    for piece in reversed(pieces):
        if piece is None:
            l, u = (t.detach().to(torch.float64).reshape(b, -1) for t in preact[relu_k])
            a = slopes[relu_k].detach().to(torch.float64).reshape(b, -1)
            unst = (l < 0) & (u > 0)
            act = (l >= 0).to(torch.float64)
            den = torch.where(unst, u - l, torch.ones_like(u))
            s = torch.where(unst, u / den, act)
            t = torch.where(unst, -(u / den) * l, torch.zeros_like(u))
            a = torch.where(unst, a, act)
            pos, neg = A.clamp(min=0), A.clamp(max=0)
            bias = bias + torch.einsum("bsn,bn->bs", neg, t)
            A = pos * a.unsqueeze(1) + neg * s.unsqueeze(1)
            relu_k -= 1
        else:
            w, c = (torch.from_numpy(v) for v in piece)
            bias = bias + A @ c
            A = A @ w
    lo_f = lo.detach().to(torch.float64).reshape(b, 1, -1)
    hi_f = hi.detach().to(torch.float64).reshape(b, 1, -1)
    lower = torch.minimum(A * lo_f, A * hi_f).sum(-1) + bias
    return lower, A
