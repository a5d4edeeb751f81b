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
objective. :func:`pgd_margin` gives the smallest margin the evaluation attack finds.

:func:`pgd_box` is the one attack of the losses that contain one: one restart from a uniform
start in a box, ascent on the cross-entropy, the last iterate returned, the model in eval mode.
:func:`pgd_last_iterate` runs it on the ball (the adversarial loss of Madry et al., which the
scans evaluate), SABR's and MTL-IBP's losses on their boxes (:mod:`train.mixed_losses`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bounds.interval import input_bounds
from bounds.relaxations import rand_rows

__all__ = [
    "OBJECTIVES",
    "margin_objective",
    "per_sample_eps",
    "pgd_attack",
    "uniform_in_box",
    "pgd_box",
    "pgd_last_iterate",
    "pgd_margin",
]

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
        raise ValueError(
            f"eps must be a number or one value per sample ([{x.shape[0]}]), got shape {tuple(e.shape)}"
        )
    if bool((e < 0).any()) or not bool(torch.isfinite(e).all()):
        raise ValueError("eps must be finite and >= 0")
    return e.view(-1, *([1] * (x.dim() - 1)))


def _pgd_restart(
    model: nn.Module,
    xs: torch.Tensor,
    ys: torch.Tensor,
    box: tuple[torch.Tensor, torch.Tensor],
    a: torch.Tensor,
    steps: int,
    objective: str,
    random_start: bool,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One restart of :func:`pgd_attack` on the samples still unbroken: signed-gradient steps of
    size ``a`` projected on ``box`` (ball ∩ domain). Returns the first misclassified iterate of
    each sample, else its best by margin, that iterate's margin and whether it broke the sample."""
    lo, hi = box
    if random_start:
        u = torch.rand(xs.shape, generator=generator, dtype=xs.dtype, device="cpu").to(xs.device)
        cur = lo + u * (hi - lo)
    else:
        cur = xs.clone()
    found = torch.zeros(len(xs), dtype=torch.bool, device=xs.device)
    adv = xs.clone()
    adv_obj = torch.full((len(xs),), float("-inf"), device=xs.device)
    for it in range(steps + 1):
        cur = cur.detach().requires_grad_(it < steps)
        with torch.enable_grad() if it < steps else torch.no_grad():
            logits = model(cur)
            marg = margin_objective(logits, ys)
            if it < steps:
                obj = (
                    marg if objective == "margin" else F.cross_entropy(logits, ys, reduction="none")
                )
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
    return adv, adv_obj, found


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
        raise ValueError(
            f"unknown PGD objective {objective!r}; choose one of {', '.join(OBJECTIVES)}"
        )
    if steps < 0 or restarts < 1:
        raise ValueError(
            f"PGD needs steps >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}"
        )
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
        adv, adv_obj, found = _pgd_restart(
            model, xs, ys, (lo, hi), a, steps, objective, random_start, generator
        )
        with torch.no_grad():
            improve = found | (adv_obj > best_obj[todo])
            idx = todo[improve]
            best[idx] = adv[improve]
            best_obj[idx] = adv_obj[improve]
            success[todo] = found
    return best.detach(), success


def uniform_in_box(
    lo: torch.Tensor, hi: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """``lo + U (hi - lo)``, ``U ~ U[0, 1)`` of ``lo``'s shape drawn from ``generator`` on its
    own device (the same start on any device for a CPU generator; a shard's rows of the whole
    batch's draw for a :class:`bounds.relaxations.ShardGenerator`, as distributed training
    hands out, :func:`bounds.relaxations.rand_rows`)."""
    device = generator.device if generator is not None else lo.device
    u = rand_rows(lo.shape, generator, dtype=lo.dtype, device=device).to(lo.device)
    return lo + u * (hi - lo)


def pgd_box(
    model: nn.Module,
    y: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    steps: int,
    step_size: torch.Tensor | float,
    generator: torch.Generator | None = None,
    decay_at: Sequence[int] = (),
) -> torch.Tensor:
    """PGD ascent on ``sum_i CE(f(x'_i), y_i)`` inside the box ``[lo, hi]`` (``[B, *shape]``).

    ``x'_0 ~ U[lo, hi]``; ``x'_{k+1} = clip_[lo, hi](x'_k + a_k sign(grad_x' CE))`` for
    ``k < steps``, with ``a_k = step_size * 0.1^(number of d in decay_at with d <= k)``
    (``step_size`` a number or ``[B, 1, ..., 1]``). Returns the last iterate, detached. The model
    runs in eval mode and is put back as it was.
    """
    if int(steps) < 0:
        raise ValueError(f"PGD needs steps >= 0, got {steps}")
    cur = uniform_in_box(lo, hi, generator).detach()
    was_training = model.training
    model.eval()
    try:
        for k in range(int(steps)):
            a = step_size * 0.1 ** sum(1 for d in decay_at if d <= k)
            cur = cur.requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(model(cur), y, reduction="sum")
                (g,) = torch.autograd.grad(loss, cur)
            cur = torch.max(torch.min(cur.detach() + a * g.sign(), hi), lo)
    finally:
        model.train(was_training)
    return cur.detach()


def pgd_last_iterate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    domain: tuple[float, float] | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The last iterate of ``steps`` steps of L-inf PGD ascent on ``CE(f(x'), y)`` in the ball
    ``[x - eps, x + eps] ∩ domain`` (detached; the parameters get no gradient): :func:`pgd_box`
    with step size ``a = 2.5 eps / steps`` from a uniform start drawn from ``generator``.
    ``x`` itself for ``eps = 0``.
    """
    x = x.detach()
    if eps == 0:
        return x
    lo, hi = input_bounds(x, eps, domain)
    return pgd_box(model, y, lo, hi, steps, 2.5 * eps / steps, generator)


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
    x_adv, _ = pgd_attack(
        model,
        x,
        y,
        eps,
        steps=steps,
        restarts=restarts,
        objective="margin",
        domain=None if domain is None else tuple(domain),
        generator=gen,
    )
    with torch.no_grad():
        return -margin_objective(model(x_adv), y)
