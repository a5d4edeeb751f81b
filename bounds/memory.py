"""What full CROWN's intermediate passes cost in memory, checked before they allocate.

``crown`` bounds every ReLU layer's input by backward passes over identity rows
(:func:`bounds.compute._layer_bounds`); when the bounds are differentiated, autograd keeps every
chunk's coefficients until the backward pass, so the memory grows with the batch times the
unstable neurons times the widths of the layers below. On the paper code's model_small at batch
80 that is tens of GiB: :func:`check_crown_memory` refuses such a call with one clear error
instead of letting the operating system kill the process.
"""

from __future__ import annotations

import torch

from bounds.network import LayerOp, affine_layers_before, relu_indices, shape_at

__all__ = ["CROWN_OVERHEAD", "crown_memory_estimate", "available_memory", "check_crown_memory"]

#: bytes kept per byte of the backward-pass coefficients, measured on model_small at batch 2 and 4
#: (peak RSS 1.51 and 2.73 GiB; the coefficients and the tensors autograd saves beside them)
CROWN_OVERHEAD = 1.25


def crown_memory_estimate(
    ops: list[LayerOp], preact: dict[int, tuple[torch.Tensor, torch.Tensor]], center: torch.Tensor
) -> int:
    """Bytes that ``crown``'s intermediate passes keep for autograd: for every ReLU layer ``k``
    with more than one affine layer before it, ``B x 2 n_k x sum_{p <= k} |shape_p| x itemsize x``
    :data:`CROWN_OVERHEAD`, ``n_k`` the neurons IBP leaves unstable in some sample (``preact``:
    IBP bounds ``[B, *shape_k]``; a layer with one affine layer before it keeps its IBP bounds).
    Every chunk's coefficients are kept when the bounds are differentiated; otherwise one chunk
    at a time (about 64 MiB)."""
    B, item = center.shape[0], center.element_size()
    total = 0.0
    for k in relu_indices(ops):
        if affine_layers_before(ops, k) <= 1:
            continue
        l, u = preact[k]
        n_k = int(((l.reshape(B, -1) < 0) & (u.reshape(B, -1) > 0)).any(0).sum())
        widths = sum(int(torch.Size(shape_at(ops, p)).numel()) for p in range(k + 1))
        total += B * 2.0 * n_k * widths * item * CROWN_OVERHEAD
    return int(total)


def available_memory(device: torch.device) -> int | None:
    """Free memory of ``device`` in bytes (CUDA: the driver's free memory; CPU: Linux's
    MemAvailable), or None where it cannot be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_crown_memory(
    ops: list[LayerOp], preact: dict[int, tuple[torch.Tensor, torch.Tensor]], center: torch.Tensor
) -> None:
    """MemoryError naming the estimate and the alternatives when ``crown``'s differentiable
    intermediate passes would need more memory than the device has (see
    :func:`crown_memory_estimate`); nothing when the bounds are not differentiated."""
    keeps_graph = torch.is_grad_enabled() and (
        center.requires_grad
        or any(t is not None and t.requires_grad for op in ops for t in (op.weight, op.bias))
    )
    if not keeps_graph:
        return
    need = crown_memory_estimate(ops, preact, center)
    have = available_memory(center.device)
    if have is not None and need > have:
        raise MemoryError(
            f"full CROWN bounds of this network at batch {center.shape[0]} would keep about {need / 2**30:.1f} GiB "
            f"for the backward pass, more than the {have / 2**30:.1f} GiB available; use method='crown-ibp' "
            f"(CROWN-IBP, e.g. with slope='same-slope' as the 'cap' method does), a smaller batch, or bounds "
            f"without gradients (torch.no_grad())"
        )
