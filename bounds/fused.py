"""The fused certified loss (docs/fused-loss.md): an upper bound of the worst-case cross-entropy with
one backward row per sample.

With ``d_j = f_j - f_y`` (``j != y``) and IBP intervals ``[l_j, u_j]`` of ``d_j``, shift by
``m = max(0, max_j u_j)`` (detached; the result does not depend on it). ``exp`` is convex, so on
``[l_j, u_j]`` it lies under its chord:

    exp(d_j - m) <= s_j d_j + t_j,   s_j = (e^{u_j - m} - e^{l_j - m}) / (u_j - l_j),
                                      t_j = e^{l_j - m} - s_j l_j

(``s_j = e^{l_j - m}``, the tangent, when ``u_j = l_j``; computed as ``e^{l_j-m} expm1(d)/d``
for small widths ``d``). Summing: ``sum_j exp(d_j - m) <= w . f + T`` with
``w = sum_j s_j (e_j - e_y)`` ``[B, n]`` and ``T = sum_j t_j``. One backward pass on the row
``-w`` gives ``U >= w . f`` over the ball, and

    CE(f(x'), y) = m + log(e^{-m} + sum_j exp(d_j - m)) <= m + log(e^{-m} + U + T).

In the code ``e^{-m}`` is replaced by ``floor = max(e^{-m}, tiny)`` and the argument of the log
is clamped from below at ``floor`` (raising it keeps an upper bound; the true argument is at
least ``e^{-m}``), so nothing is NaN or infinite.

Per method: ``ibp`` uses the IBP bound ``S_ibp = sum_j e^{u_j - m}`` (equal to the unfused IBP
loss); ``crown`` uses the chord bound ``S_lin = U + T``; ``crown-ibp`` mixes the two
bounds on the sum of exponentials, ``beta S_lin + (1 - beta) S_ibp`` (a convex combination
of upper bounds is one). ``tightest``/``optimized`` search the slopes on this fused loss.

``keep_ibp=True`` (``robust_cross_entropy(..., fused="min")``) takes, per sample, the smaller of
that bound and the IBP bound: ``S = min(S_method, S_ibp)``. Both are upper bounds of the same
sum, so the minimum is one too; the loss is then never above IBP's and equals the chord bound
wherever that is the tighter one. It is not smooth where the two cross (its gradient switches
from one bound to the other), which is why it is an option and not the fused loss itself
(``docs/fused-loss.md``). The slope searches of ``tightest``/``optimized`` still minimise the
fused bound (where IBP is the smaller one, the slopes do not matter), so the result is exactly
the per-sample minimum of ``fused=True`` and IBP for every policy.
"""

from __future__ import annotations

import torch

from bounds.bound_spec import BoundSpec
from bounds.compute import Prepared, final_relaxations, prepare
from bounds.interval import ibp, input_box
from bounds.network import LayerOp, cut_graph
from bounds.relaxations import Relaxation
from bounds.spec import margin_spec


def chord(l: torch.Tensor, u: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Chord ``exp(d - m) <= s d + t`` on ``[l, u]`` (all ``[B, k]``, ``m`` ``[B, 1]``), stably.

    ``s = e^{l-m} expm1(u - l) / (u - l)`` for ``u - l < 1`` (``e^{l-m}`` when ``u = l``), else
    ``(e^{u-m} - e^{l-m}) / (u - l)``; ``t = e^{l-m} - s l``.
    """
    width = (u - l).clamp(min=0)
    el = torch.exp(l - m)
    eu = torch.exp(u - m)
    small = width < 1
    w_small = torch.where(small & (width > 0), width, torch.ones_like(width))
    ratio = torch.where(width > 0, torch.expm1(w_small) / w_small, torch.ones_like(width))
    s_small = el * ratio
    s_large = (eu - el) / torch.where(small, torch.ones_like(width), width)
    s = torch.where(small, s_small, s_large)
    t = el - s * l
    return s, t


def fused_loss(
    ops: list[LayerOp],
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    spec: BoundSpec,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample fused upper bound ``[B]`` of ``max_{x'} CE(f(x'), y)`` (arguments validated,
    in the current mode), by ``spec``'s method, slope and beta.

    ``spec.loss_fn`` (optional): a function of the per-sample fused losses ``[B]`` that the
    slope search of ``tightest``/``optimized`` minimises instead of their sum.
    ``spec.fused == "min"``: the per-sample minimum with the IBP bound (module doc).
    """
    n = ops[-1].out_shape[0]
    C = margin_spec(y, n).to(dtype=x.dtype, device=x.device)  # rows e_y - e_j
    use_linear = spec.linear_pass
    if use_linear:
        prep = prepare(ops, x, eps, spec, C, generator)
        res = prep.ibp
    else:  # the IBP bound needs no relaxations
        res = ibp(ops, *input_box(x, eps, spec.domain), C)
    lo_d, up_d = -res.upper, -res.lower  # bounds of d_j = f_j - f_y, [B, n-1]
    m = up_d.detach().amax(1, keepdim=True).clamp(min=0)  # [B, 1]
    tiny = torch.finfo(x.dtype).tiny
    floor = torch.exp(-m).clamp(min=tiny)
    s_ibp = torch.exp(up_d - m).sum(1, keepdim=True)
    if not use_linear:
        return (m + torch.log(floor + s_ibp)).squeeze(1)

    s, t = chord(lo_d, up_d, m)
    row = (s.unsqueeze(-1) * C).sum(1, keepdim=True)  # = -w, [B, 1, n]
    T = t.sum(1, keepdim=True)
    beta, loss_fn = spec.beta, spec.loss_fn

    def total(
        p: Prepared,
        relax: dict[int, Relaxation],
        s_ibp=s_ibp,
        row=row,
        T=T,
        m=m,
        floor=floor,
        keep_ibp=spec.fused == "min",
    ) -> torch.Tensor:
        neg_u, _ = p.final_pass(row, relax)  # lower bound of -w.f, [B, 1]
        s_lin = -neg_u + T
        s_all = beta * s_lin + (1.0 - beta) * s_ibp if spec.method == "crown-ibp" else s_lin
        if keep_ibp:
            s_all = torch.minimum(s_all, s_ibp)
        return (m + torch.log(torch.maximum(floor + s_all, floor))).squeeze(1)

    def objective(det: Prepared, relax: dict[int, Relaxation]) -> torch.Tensor:
        per_sample = total(
            det,
            relax,
            cut_graph(s_ibp),
            cut_graph(row),
            cut_graph(T),
            cut_graph(m),
            cut_graph(floor),
            False,
        )
        return (loss_fn(per_sample) if loss_fn is not None else per_sample).sum()

    relax = final_relaxations(prep, spec, objective)
    return total(prep, relax)
