"""Random networks with BatchNorm, AvgPool2d and residual blocks, and independent references.

Like ``bounds_helpers``, nothing here uses the engine's own layer handling, so a bug there cannot
hide itself:

- ``bn_cases``: a hypothesis strategy of tiny networks of four kinds -- ``mlp-bn`` (Linear,
  BatchNorm1d, ReLU), ``cnn-bn`` (Conv2d, BatchNorm2d, ReLU, AvgPool2d), ``res`` (a residual
  block with an identity or 1x1-conv shortcut, BatchNorm inside) and ``res-mlp`` -- in eval mode,
  with random running statistics and affine parameters (negative gammas included), sometimes
  ending with a BatchNorm1d on the logits;
- ``relu_inputs_hooked``: every ReLU's input at ``x``, in forward order, nested ReLUs included;
- ``fold_bn``: the same function with every eval-mode BatchNorm folded into the Linear/Conv2d
  in front of it (``W' = w W``, ``b' = w b + c`` with ``w = gamma / sqrt(var + eps)``);
- ``batch_stat_copy``: a copy of a training-mode network whose BatchNorms are eval-mode with the
  clean batch's mean and biased variance as running statistics (the affine map the engine bounds).
"""

from __future__ import annotations

import copy
import math

import torch
from bounds_helpers import EPS_CHOICES, Case
from hypothesis import strategies as st
from torch import nn

from bounds import Normalize
from bounds.layers import Residual

BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def randomize(model: nn.Module, gen: torch.Generator, weight_scale: float = 1.0) -> nn.Module:
    """Random weights (``N(0, ws^2 / fan_in)``), biases and BatchNorm statistics and affine
    parameters (gamma in [-1.5, 1.5], running var in [0.3, 2]) for every layer of ``model``."""

    def u(shape, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.copy_(
                    torch.randn(m.weight.shape, generator=gen, dtype=torch.float64)
                    * weight_scale
                    / math.sqrt(m.weight[0].numel())
                )
                if m.bias is not None:
                    m.bias.copy_(u(m.bias.shape, -0.5, 0.5))
            elif isinstance(m, BN):
                m.running_mean.copy_(u(m.running_mean.shape, -0.5, 0.5))
                m.running_var.copy_(u(m.running_var.shape, 0.3, 2.0))
                m.weight.copy_(u(m.weight.shape, -1.5, 1.5))
                m.bias.copy_(u(m.bias.shape, -0.5, 0.5))
    return model


def make_net(
    kind: str,
    seed: int,
    n_classes: int = 3,
    pool: bool = True,
    shortcut: bool = False,
    weight_scale: float = 1.0,
) -> tuple[nn.Sequential, tuple[int, ...]]:
    """A random float64 eval-mode network of ``kind`` (module doc) and its per-sample input shape."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "mlp-bn":
        layers = [
            Normalize([0.4, 0.5, 0.3], [0.5, 0.3, 0.8]),
            nn.Linear(3, 5),
            nn.BatchNorm1d(5),
            nn.ReLU(),
            nn.Linear(5, 4),
            nn.BatchNorm1d(4),
            nn.ReLU(),
            nn.Linear(4, n_classes),
        ]
        shape: tuple[int, ...] = (3,)
    elif kind == "cnn-bn":
        layers = [
            Normalize([0.4], [0.5]),
            nn.Conv2d(1, 2, 3, padding=1),
            nn.BatchNorm2d(2),
            nn.ReLU(),
        ]
        layers += [nn.AvgPool2d(2)] if pool else [nn.Conv2d(2, 2, 2, stride=2)]
        layers += [
            nn.Conv2d(2, 2, 3, padding=1),
            nn.BatchNorm2d(2),
            nn.ReLU(),
            nn.AvgPool2d(3, stride=1, padding=1),
            nn.Flatten(),
            nn.Linear(8, 4),
            nn.BatchNorm1d(4),
            nn.ReLU(),
            nn.Linear(4, n_classes),
        ]
        shape = (1, 4, 4)
    elif kind == "res":
        branch = nn.Sequential(
            nn.Conv2d(2, 2, 3, padding=1),
            nn.BatchNorm2d(2),
            nn.ReLU(),
            nn.Conv2d(2, 2, 3, padding=1),
        )
        short = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)) if shortcut else None
        layers = [
            Normalize([0.4], [0.5]),
            nn.Conv2d(1, 2, 3, padding=1),
            nn.ReLU(),
            Residual(branch, short),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(8, n_classes),
        ]
        shape = (1, 4, 4)
    elif kind == "res-mlp":
        branch = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 4))
        layers = [
            nn.Linear(2, 4),
            nn.ReLU(),
            Residual(branch, nn.Linear(4, 4) if shortcut else None),
            nn.ReLU(),
            Residual(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))),
            nn.Linear(4, n_classes),
        ]
        shape = (2,)
    else:
        raise ValueError(kind)
    model = nn.Sequential(*layers).to(torch.float64)
    return randomize(model, gen, weight_scale).eval(), shape


@st.composite
def bn_cases(
    draw: st.DrawFn,
    kinds=("mlp-bn", "cnn-bn", "res", "res-mlp"),
    dtype: torch.dtype = torch.float64,
    eps_choices=EPS_CHOICES,
    max_batch: int = 3,
) -> Case:
    """A random network of ``kinds`` with a batch of inputs, labels, radius (float or per sample)
    and domain (None or [0, 1])."""
    kind = draw(st.sampled_from(list(kinds)))
    seed = draw(st.integers(0, 2**31 - 1))
    n_classes = draw(st.integers(2, 4))
    pool, shortcut = draw(st.booleans()), draw(st.booleans())
    ws = draw(st.sampled_from([0.5, 1.0, 2.0]))
    model, shape = make_net(kind, seed, n_classes, pool=pool, shortcut=shortcut, weight_scale=ws)
    tail = draw(st.booleans())
    if tail:  # the network ends with a BatchNorm1d (no last Linear to merge with C)
        model.append(
            randomize(
                nn.BatchNorm1d(n_classes).double(), torch.Generator().manual_seed(seed)
            ).eval()
        )
    gen = torch.Generator().manual_seed(seed + 1)
    batch = draw(st.integers(1, max_batch))
    domain = draw(st.sampled_from([None, (0.0, 1.0)]))
    x = torch.rand((batch, *shape), generator=gen, dtype=torch.float64)
    if domain is None:
        x = x * 2.0 - 0.5
    y = torch.randint(0, n_classes, (batch,), generator=gen)
    if draw(st.booleans()):
        eps: float | torch.Tensor = torch.tensor(
            [draw(st.sampled_from(list(eps_choices))) for _ in range(batch)], dtype=dtype
        )
    else:
        eps = float(draw(st.sampled_from(list(eps_choices))))
    desc = f"{kind} seed={seed} pool={pool} shortcut={shortcut} ws={ws} bn_tail={tail}"
    return Case(model.to(dtype), x.to(dtype), y, eps, domain, n_classes, desc)


def relu_inputs_hooked(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The input of every ``nn.ReLU`` module of ``model`` at ``x``, in the order they run."""
    acts: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: acts.append(inp[0]))
        for m in model.modules()
        if isinstance(m, nn.ReLU)
    ]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return acts


def fold_bn(model: nn.Sequential) -> nn.Sequential:
    """``model`` (top-level Linear/Conv2d -> eval BatchNorm pairs) with each BatchNorm folded into
    the layer in front of it and removed."""
    out: list[nn.Module] = []
    for layer in model:
        if isinstance(layer, BN):
            prev = copy.deepcopy(out.pop())
            assert isinstance(prev, (nn.Linear, nn.Conv2d)), (
                "fold_bn needs a Linear/Conv2d before every BatchNorm"
            )
            w = layer.weight / torch.sqrt(layer.running_var + layer.eps)
            with torch.no_grad():
                bias = prev.bias if prev.bias is not None else torch.zeros_like(w)
                new_bias = w * (bias - layer.running_mean) + layer.bias
                prev.weight.mul_(w.view(-1, *([1] * (prev.weight.dim() - 1))))
                prev.bias = nn.Parameter(new_bias.detach().clone())
            out.append(prev)
        else:
            out.append(copy.deepcopy(layer))
    return nn.Sequential(*out)


def batch_stat_copy(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """An eval-mode copy of ``model`` whose BatchNorms use the mean and biased variance of the
    clean batch ``x`` at their input (computed from a training-mode forward of another copy, so
    ``model``'s own running statistics are untouched)."""
    probe = copy.deepcopy(model).train()
    stats: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(mod: nn.Module, inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
        z = inp[0]
        dims = [0, *range(2, z.dim())]
        stats.append((z.mean(dims).detach(), z.var(dims, unbiased=False).detach()))

    hooks = [m.register_forward_hook(hook) for m in probe.modules() if isinstance(m, BN)]
    with torch.no_grad():
        probe(x)
    for h in hooks:
        h.remove()
    fixed = copy.deepcopy(model).eval()
    with torch.no_grad():
        for m, (mean, var) in zip([m for m in fixed.modules() if isinstance(m, BN)], stats):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
    return fixed
