"""Directions in parameter space, and moving a model along them.

A *direction* is a list of tensors shaped like the model's parameters (in the order of
``model.named_parameters()``; buffers such as the ``Normalize`` mean/std are never moved).

Random directions follow Li et al. 2018 ("Visualizing the Loss Landscape of Neural Nets"):
draw d ~ N(0, I) and rescale

- ``norm="filter"``: every filter (slice along dim 0: a conv output channel, a linear row)
  d_i <- d_i * ||w_i|| / ||d_i||, so the direction has the scale of each filter of the weights;
  1-D tensors (biases) are rescaled as a whole, d <- d * ||w|| / ||d||;
- ``norm="layer"``: every tensor as a whole, d <- d * ||W|| / ||d||;
- ``norm="none"``: unchanged.

``ignore="biasbn"`` zeroes the direction of every 1-D parameter (biases, normalisation
scales), so only weights move. Directions are drawn on the CPU from ``torch.Generator(seed)``
in parameter order, so a seed gives the same direction on every device and process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from common.names import DIRECTION_NORMS as NORMS

__all__ = [
    "NORMS",
    "named_params",
    "params_meta",
    "get_params",
    "random_direction",
    "gradient_direction",
    "interpolation_direction",
    "set_params",
    "perturbed",
    "params_equal",
]

_EPS = 1e-10


def named_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters a scan moves: ``model.named_parameters()`` in order."""
    params = list(model.named_parameters())
    if not params:
        raise ValueError("the model has no parameters to scan")
    return params


def params_meta(model: nn.Module) -> dict[str, list]:
    """The attributes of a stored direction: the names and shapes of the parameters a scan
    moves."""
    params = named_params(model)
    return {
        "param_names": [n for n, _ in params],
        "param_shapes": [list(p.shape) for _, p in params],
    }


def get_params(model: nn.Module) -> list[Tensor]:
    """Detached copies of the model's parameters (theta)."""
    return [p.detach().clone() for _, p in named_params(model)]


def _rescale(d: Tensor, w: Tensor, norm: str) -> Tensor:
    if norm == "none":
        return d
    if norm == "layer" or d.dim() <= 1:
        return d * (w.norm() / (d.norm() + _EPS))
    # filter-wise: one scale per slice along dim 0
    d2, w2 = d.reshape(d.shape[0], -1), w.reshape(w.shape[0], -1)
    scale = w2.norm(dim=1, keepdim=True) / (d2.norm(dim=1, keepdim=True) + _EPS)
    return (d2 * scale).view_as(d)


def random_direction(
    model: nn.Module,
    norm: str = "filter",
    ignore: str | None = "biasbn",
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """A Gaussian random direction, normalised per ``norm`` (see module docstring).

    ``ignore="biasbn"`` zeroes the 1-D parameters' direction; ``ignore=None`` keeps them.
    Pass ``generator`` to draw several directions from one stream (seed is then unused).
    """
    if norm not in NORMS:
        raise ValueError(
            f"unknown direction normalisation {norm!r}; expected one of {', '.join(NORMS)}"
        )
    if ignore not in (None, "none", "biasbn"):
        raise ValueError(f"unknown ignore option {ignore!r}; expected 'biasbn' or None")
    gen = generator if generator is not None else torch.Generator().manual_seed(int(seed))
    out = []
    for _, p in named_params(model):
        w = p.detach()
        d = torch.randn(w.shape, generator=gen, dtype=torch.float32).to(
            device=w.device, dtype=w.dtype
        )
        if ignore == "biasbn" and w.dim() <= 1:
            d = torch.zeros_like(w)
        else:
            d = _rescale(d, w, norm)
        out.append(d)
    return out


def gradient_direction(
    loss_fn: Callable[[nn.Module], Tensor], model: nn.Module
) -> tuple[Tensor, list[Tensor]]:
    """``(L(theta), grad L(theta))``: the loss and its raw gradient (one tensor per parameter),
    without touching ``p.grad``. A loss made of mini-batch parts (attribute ``parts``,
    :class:`landscape.scan_losses.BatchedLoss`) is differentiated one batch at a time and the
    weighted gradients summed."""
    params = [p for _, p in named_params(model)]
    parts = getattr(loss_fn, "parts", None)
    if (
        parts is not None and len(parts) > 1
    ):  # a mini-batch loss: accumulate batch by batch (one graph at a time)
        total_loss, total = None, [torch.zeros_like(p) for p in params]
        for w, fn in parts:
            loss_b, grads_b = gradient_direction(fn, model)
            total_loss = w * loss_b if total_loss is None else total_loss + w * loss_b
            for acc, g in zip(total, grads_b):
                acc.add_(g, alpha=float(w))
        return total_loss, total
    with torch.enable_grad():
        loss = loss_fn(model)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), [
        torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)
    ]


def interpolation_direction(theta1: Sequence[Tensor], theta2: Sequence[Tensor]) -> list[Tensor]:
    """``theta2 - theta1``, so theta1 + alpha * d runs from theta1 (alpha=0) to theta2 (alpha=1)."""
    if len(theta1) != len(theta2) or any(a.shape != b.shape for a, b in zip(theta1, theta2)):
        raise ValueError("the two checkpoints have different parameter shapes; cannot interpolate")
    return [b.detach() - a.detach() for a, b in zip(theta1, theta2)]


BufferPath = list[tuple[Tensor, Tensor, Tensor, bool]]


def batchnorm_buffer_path(model: nn.Module, model2: nn.Module) -> BufferPath:
    """The BatchNorm running statistics of ``model`` to move between two checkpoints:
    ``(buffer, b1, d, is_var)`` per floating-point buffer of a BatchNorm module (``running_mean``,
    ``running_var``), with ``b1`` its value in ``model`` and ``d = b2 - b1`` (``model2``'s
    value minus it), so that ``buffer <- b1 + alpha d`` (:func:`set_buffers`) interpolates them
    as the parameters are. Empty for a model without BatchNorm."""
    from torch.nn.modules.batchnorm import _BatchNorm

    others = dict(model2.named_modules())
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, _BatchNorm):
            continue
        other = others.get(name)
        if not isinstance(other, _BatchNorm):
            raise ValueError(
                f"the second checkpoint has no BatchNorm at {name!r}; cannot interpolate"
            )
        for key in ("running_mean", "running_var"):
            b1, b2 = getattr(module, key, None), getattr(other, key, None)
            if b1 is None or b2 is None:
                continue
            if b1.shape != b2.shape:
                raise ValueError(f"BatchNorm {name!r}: {key} shapes differ; cannot interpolate")
            b1c = b1.detach().clone()
            out.append((b1, b1c, b2.detach().to(b1) - b1c, key == "running_var"))
    return out


@torch.no_grad()
def set_buffers(path: BufferPath, alpha: float) -> None:
    """In place: every buffer of ``path`` (:func:`batchnorm_buffer_path`) <- ``b1 + alpha d``
    (exactly ``b1`` at alpha = 0); a running variance is clamped at 0 (outside [0, 1] the line
    can cross it)."""
    for buffer, b1, d, is_var in path:
        value = b1 + float(alpha) * d if alpha != 0.0 else b1
        buffer.copy_(value.clamp_min(0.0) if is_var else value)


@torch.no_grad()
def set_params(
    model: nn.Module | Sequence[Tensor],
    base: Sequence[Tensor],
    directions: Sequence[Sequence[Tensor]] = (),
    coeffs: Iterable[float] = (),
) -> None:
    """In place: theta <- base + sum_k coeffs[k] * directions[k] (added in order k = 0, 1, ...;
    the same arithmetic as :func:`perturbed`, so both give bit-identical parameters).

    ``model`` may also be the list of its parameter tensors (saves walking the module tree
    when called for every grid point)."""
    coeffs = [float(c) for c in coeffs]
    if len(coeffs) != len(directions):
        raise ValueError(f"{len(directions)} directions but {len(coeffs)} coefficients")
    params = [p for _, p in named_params(model)] if isinstance(model, nn.Module) else list(model)
    if len(params) != len(base):
        raise ValueError(
            f"the model has {len(params)} parameter tensors, the base point {len(base)}"
        )
    torch._foreach_copy_(params, list(base))
    for c, d in zip(coeffs, directions):
        if c != 0.0:
            torch._foreach_add_(params, list(d), alpha=c)


def perturbed(
    base: Sequence[Tensor], directions: Sequence[Sequence[Tensor]], coeffs: Iterable[float]
) -> list[Tensor]:
    """Out of place: base + sum_k coeffs[k] * directions[k] (same arithmetic as :func:`set_params`)."""
    coeffs = [float(c) for c in coeffs]
    out = [b.detach().clone() for b in base]
    for c, d in zip(coeffs, directions):
        if c != 0.0:
            torch._foreach_add_(out, list(d), alpha=c)
    return out


def params_equal(a: Sequence[Tensor], b: Sequence[Tensor]) -> bool:
    """Exact equality of two parameter lists."""
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
