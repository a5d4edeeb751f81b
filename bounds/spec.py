"""The margin specification, the cross-entropy of margin bounds, and the argument checks
shared by the public entry points.

Value checks (finite inputs, labels in range, non-negative radii) need the values on the host.
They run for CPU tensors only, where that costs nothing; on an accelerator they are skipped so
that a bound computation never waits for the device (shapes and dtypes are checked everywhere).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from common import names


def host_checks(t: torch.Tensor) -> bool:
    """Whether the value checks run for ``t`` (CPU tensors only; see the module doc)."""
    return t.device.type == "cpu"


def all_finite(t: torch.Tensor) -> bool:
    """Every entry of ``t`` is finite. One reduction: a sum (in float64) is finite only if every
    term is, since an infinity or a NaN propagates; only a sum that overflows is checked entry by
    entry."""
    total = t.sum(dtype=torch.float64)
    return bool(torch.isfinite(total)) or bool(torch.isfinite(t).all())


def margin_spec(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Margin specification ``C`` ``[B, n_classes - 1, n_classes]`` (float32).

    Row ``k`` of sample ``b`` is ``e_{y_b} - e_{j_k}`` where ``j_0 < j_1 < ...`` are the classes
    other than ``y_b``, so ``(C f)_k = f_y - f_{j_k}`` (the margin; positive means correct).
    """
    if (
        not isinstance(y, torch.Tensor)
        or y.dim() != 1
        or y.dtype.is_floating_point
        or y.dtype == torch.bool
    ):
        raise ValueError("y must be a 1-D integer tensor of class labels")
    n = int(n_classes)
    if n < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    if y.numel() and host_checks(y) and (int(y.min()) < 0 or int(y.max()) >= n):
        raise ValueError(
            f"labels must lie in [0, {n - 1}], got values in [{int(y.min())}, {int(y.max())}]"
        )
    y = y.long()
    idx = torch.arange(n - 1, device=y.device).unsqueeze(0)  # [1, n-1]
    others = idx + (idx >= y.unsqueeze(1)).long()  # [B, n-1]: skip y
    eye = torch.eye(n, device=y.device)
    return eye[y].unsqueeze(1) - eye[others]


def margin_ce(lower: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    """Robust cross-entropy of margin lower bounds ``lower`` ``[B, S]`` (rows of
    :func:`margin_spec`, ``S = n_classes - 1``).

    Since ``f_j - f_y <= -lower_j`` over the ball, ``CE(f(x'), y) <= CE([0, -lower], 0) =
    log(1 + sum_j exp(-lower_j))`` for every ``x'`` in it (Wong & Kolter 2018; Gowal et al.
    2018). Computed as a cross-entropy of the logits ``[0, -lower]`` against class 0, so the
    value is the same whichever order the other classes come in. ``reduction``: ``none``
    (``[B]``), ``mean`` or ``sum``.
    """
    z = torch.cat([torch.zeros_like(lower[:, :1]), -lower], dim=1)
    target = torch.zeros(lower.shape[0], dtype=torch.long, device=lower.device)
    return F.cross_entropy(z, target, reduction=reduction)


def check_x(x: torch.Tensor) -> None:
    """``x``: a floating tensor ``[B, *input_shape]`` with finite entries."""
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        raise ValueError("x must be a floating-point tensor [batch, *input_shape]")
    if x.dim() < 2:
        raise ValueError(
            f"x must have a batch dimension and an input shape, got shape {list(x.shape)}"
        )
    if host_checks(x) and not all_finite(x):
        raise ValueError("x contains NaN or infinite values")


def check_eps(eps: float | torch.Tensor, batch: int) -> float | torch.Tensor:
    """``eps``: a finite float >= 0 or a tensor ``[]`` / ``[B]`` of them. Returns float or ``[B]`` tensor."""
    if isinstance(eps, torch.Tensor):
        if eps.dim() == 0 and not host_checks(eps):
            eps = eps.reshape(1).expand(batch)  # stays on the device
        elif eps.dim() == 0:
            eps = float(eps)
        elif eps.shape != (batch,):
            raise ValueError(
                f"eps as a tensor must have shape [{batch}] (one radius per sample), got {list(eps.shape)}"
            )
        else:
            if host_checks(eps) and (not all_finite(eps) or bool((eps < 0).any())):
                raise ValueError("eps must be finite and non-negative")
            return eps
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"eps must be a number or a tensor, got {type(eps).__name__}") from None
    if not math.isfinite(e) or e < 0:
        raise ValueError(f"eps must be finite and non-negative, got {eps}")
    return e


def check_domain(domain: Sequence[float] | None) -> tuple[float, float] | None:
    if domain is None:
        return None
    try:
        lo, hi = (float(v) for v in domain)
    except (TypeError, ValueError):
        raise ValueError(f"domain must be None or a pair (low, high), got {domain!r}") from None
    if not (lo <= hi) or math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"domain must satisfy low <= high, got {domain!r}")
    return lo, hi


def check_method_slope(method: str, slope: str | None) -> str:
    """Validate the pair; returns the slope to use (see :func:`common.names.bound_slope`)."""
    return names.bound_slope(method, slope)


def check_opt(opt_steps: int, opt_lr: float) -> tuple[int, float]:
    """``optimized``'s Adam settings: ``opt_steps >= 0`` and ``opt_lr > 0``; returns them as int and float."""
    steps, lr = int(opt_steps), float(opt_lr)
    if steps < 0 or not lr > 0:
        raise ValueError(f"opt_steps must be >= 0 and opt_lr > 0, got {opt_steps} and {opt_lr}")
    return steps, lr


def check_beta(beta: float) -> float:
    b = float(beta)
    if not (0.0 <= b <= 1.0):
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    return b


def check_C(C: torch.Tensor | None, batch: int, n_out: int, x: torch.Tensor) -> torch.Tensor | None:
    """``C``: ``[B, S, n_out]`` (or ``[S, n_out]``, shared by all samples); cast to x's dtype/device."""
    if C is None:
        return None
    if not isinstance(C, torch.Tensor):
        raise ValueError("C must be a tensor [batch, n_spec, n_outputs]")
    if C.dim() == 2:
        C = C.unsqueeze(0).expand(batch, *C.shape)
    if C.dim() != 3 or C.shape[0] != batch or C.shape[2] != n_out or C.shape[1] < 1:
        raise ValueError(f"C must have shape [{batch}, n_spec, {n_out}], got {list(C.shape)}")
    C = C.to(dtype=x.dtype, device=x.device)
    if host_checks(C) and not all_finite(C):
        raise ValueError("C contains NaN or infinite values")
    return C
