"""Projected gradient descent (PGD) attacks in the L-inf ball (Madry et al. 2018).

Each restart starts at ``x + delta``, ``delta ~ U[-eps, eps]`` (or at ``x``), and repeats

    x' <- clip_domain( clip_ball( x' + alpha * sign(grad_x' objective(x')) ) )

for ``steps`` iterations, where ``clip_ball`` projects onto ``[x - eps, x + eps]`` and
``clip_domain`` onto the data domain (e.g. [0, 1]). Objectives (maximised):

* ``margin``: ``max_{j != y} f_j(x') - f_y(x')`` (Carlini-Wagner style; > 0 means misclassified),
* ``ce``: ``CE(f(x'), y)``.

:func:`pgd_attack` is the evaluation attack: a sample is a *success* when some iterate (or the
clean input) is misclassified; later restarts only run on samples not yet broken; the returned
example is the first misclassified iterate found, else the one with the largest margin
objective. :func:`pgd_last_iterate` is the adversarial-training loss's attack (Madry et al.):
one restart, ascent on the mean cross-entropy, the last iterate returned. :func:`pgd_margin`
gives the smallest margin the evaluation attack finds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bounds.relaxations import rand_rows

__all__ = ["OBJECTIVES", "margin_objective", "per_sample_eps", "pgd_attack", "pgd_last_iterate", "pgd_margin"]

OBJECTIVES = ("margin", "ce")


def margin_objective(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample ``max_{j != y} f_j - f_y`` (``[B]``); positive iff misclassified (up to ties)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return others.max(dim=1).values - true


def per_sample_eps(eps: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``eps`` (a number or ``[B]``) as ``[B, 1, ..., 1]``, broadcasting against ``x`` ``[B, *shape]``;
    ValueError for another shape, a negative or a non-finite radius."""
    e = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if e.dim() == 0:
        e = e.expand(x.shape[0])
    if e.shape != (x.shape[0],):
        raise ValueError(f"eps must be a number or one value per sample ([{x.shape[0]}]), got shape {tuple(e.shape)}")
    if bool((e < 0).any()) or not bool(torch.isfinite(e).all()):
        raise ValueError("eps must be finite and >= 0")
    return e.view(-1, *([1] * (x.dim() - 1)))


def pgd_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    steps: int = 20,
    restarts: int = 1,
    step_size: float | None = None,
    objective: str = "margin",
    domain: tuple[float, float] | None = (0.0, 1.0),
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-restart L-inf PGD.

    Args:
        model: classifier mapping ``[B, *shape]`` to logits ``[B, n]``.
        x, y: inputs (in ``domain``) and int64 labels.
        eps: radius, a number or ``[B]``.
        steps: iterations per restart (0: only the clean input / random start is tried).
        restarts: number of restarts (>= 1).
        step_size: ``alpha``; default ``2.5 * eps / steps``.
        objective: ``margin`` or ``ce``.
        domain: ``(lo, hi)`` box the examples stay in, or ``None``.
        random_start: start at a uniform point of the ball (else at ``x``).
        generator: random source of the starts.

    Returns:
        ``(x_adv, success)``: ``[B, *shape]`` examples inside ball ∩ domain, ``[B]`` bool.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown PGD objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if steps < 0 or restarts < 1:
        raise ValueError(f"PGD needs steps >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}")
    x = x.detach()
    e = per_sample_eps(eps, x)
    lo_box, hi_box = x - e, x + e
    if domain is not None:
        lo_box, hi_box = lo_box.clamp(min=domain[0]), hi_box.clamp(max=domain[1])
    with torch.no_grad():
        best_obj = margin_objective(model(x), y)
    success = best_obj > 0
    best = x.clone()
    alpha = e * 2.5 / max(steps, 1) if step_size is None else torch.full_like(e, float(step_size))

    for _ in range(restarts):
        todo = (~success).nonzero().squeeze(1)
        if todo.numel() == 0 or float(e.max()) == 0.0:
            break
        xs, ys, lo, hi, a = x[todo], y[todo], lo_box[todo], hi_box[todo], alpha[todo]
        if random_start:
            u = torch.rand(xs.shape, generator=generator, dtype=xs.dtype, device="cpu").to(xs.device)
            cur = lo + u * (hi - lo)
        else:
            cur = xs.clone()
        found = torch.zeros(len(todo), dtype=torch.bool, device=x.device)
        adv = xs.clone()
        adv_obj = torch.full((len(todo),), float("-inf"), device=x.device)
        for it in range(steps + 1):
            cur = cur.detach().requires_grad_(it < steps)
            with torch.enable_grad() if it < steps else torch.no_grad():
                logits = model(cur)
                marg = margin_objective(logits, ys)
                if it < steps:
                    obj = marg if objective == "margin" else F.cross_entropy(logits, ys, reduction="none")
                    (grad,) = torch.autograd.grad(obj.sum(), cur)
            with torch.no_grad():
                m = marg.detach()
                newly = (m > 0) & ~found
                better = ~found & (m > adv_obj)
                adv[better | newly] = cur.detach()[better | newly]
                adv_obj = torch.where(better, m, adv_obj)
                found |= newly
                if it < steps:
                    cur = torch.max(torch.min(cur + a * grad.sign(), hi), lo)
        with torch.no_grad():
            improve = found | (adv_obj > best_obj[todo])
            idx = todo[improve]
            best[idx] = adv[improve]
            best_obj[idx] = adv_obj[improve]
            success[todo] = found
    return best.detach(), success


def pgd_last_iterate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    domain: tuple[float, float] | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The last iterate of ``steps`` steps of L-inf PGD ascent on the mean ``CE(f(x'), y)``
    (detached; the parameters get no gradient).

    ``x' <- clip(x' + a sign(grad_x' CE), ball ∩ domain)``, ``a = 2.5 eps / steps``, from a
    uniform start in the ball drawn on the CPU from ``generator`` (the same start on any device).
    """
    x = x.detach()
    if eps == 0:
        return x
    lo, hi = x - eps, x + eps
    if domain is not None:
        lo, hi = lo.clamp(min=domain[0]), hi.clamp(max=domain[1])
    u = rand_rows(x.shape, generator, dtype=x.dtype).to(x.device)  # a shard's rows of the batch's draw
    cur = lo + u * (hi - lo)
    alpha = 2.5 * eps / steps
    params = list(model.parameters())
    req = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        for _ in range(steps):
            cur = cur.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(model(cur), y)
                (g,) = torch.autograd.grad(loss, cur)
            cur = torch.max(torch.min(cur.detach() + alpha * g.sign(), hi), lo)
    finally:
        for p, r in zip(params, req):
            p.requires_grad_(r)
    return cur.detach()


def pgd_margin(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 20,
    restarts: int = 1,
    domain: tuple[float, float] | None = (0.0, 1.0),
    seed: int = 0,
) -> torch.Tensor:
    """Per-sample smallest margin ``min_{j != y} (f_y - f_j)(x_adv)`` at the point the margin
    attack :func:`pgd_attack` returns (an upper bound of the true worst margin), ``[B]``."""
    gen = torch.Generator().manual_seed(int(seed))  # pgd_attack draws its starts on the CPU
    x_adv, _ = pgd_attack(model, x, y, eps, steps=steps, restarts=restarts, objective="margin",
                          domain=None if domain is None else tuple(domain), generator=gen)
    with torch.no_grad():
        return -margin_objective(model(x_adv), y)
