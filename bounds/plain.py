"""Plain mode: the engine with standard tensor operations only, for ``torch.func.vmap``.

The engine's fast paths -- custom autograd functions, channels-last layouts, strided views,
compiled kernels -- are not vmappable. Inside ``with plain():`` the same bounds are computed with
plain out-of-place operations (the bodies of :mod:`bounds.compiled`, ``F.conv_transpose2d``),
which ``torch.func.vmap`` batches, so that a landscape scan can evaluate several parameter sets in
one pass (:class:`landscape.evaluators.DirectionEvaluator`). The values equal the fast path's to
float rounding (``tests/test_scan_batched.py``). Plain mode is meant for evaluation without
gradients: it builds no custom backward passes and is slower than the fast path when not batched.
The slope searches (``tightest``, ``optimized``), the random policies (``uniform``, ``binary``)
and the data-dependent neuron selection of ``crown`` cannot run under vmap.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_ACTIVE = contextvars.ContextVar("bounds_plain_mode", default=False)


def active() -> bool:
    """Whether the engine runs in plain mode."""
    return _ACTIVE.get()


@contextlib.contextmanager
def plain() -> Iterator[None]:
    """Run the engine with standard operations only inside the block (see the module doc)."""
    token = _ACTIVE.set(True)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
