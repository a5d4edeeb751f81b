"""How the engine runs its element-wise work: one execution mode, set once per computation.

Modes:

- ``eager`` (the default): the fast paths. The ReLU step of the backward pass, the ReLU of
  interval propagation, the upper line of the relaxation and the transposed convolution are
  custom autograd functions with hand-written backward passes; image-shaped tensors are kept
  channels-last.
- ``compiled``: the same fast paths, with the element-wise work of the three ReLU operations
  run as kernels that ``torch.compile`` generated from the bodies of :mod:`bounds.compiled`
  (:class:`bounds.compiled.Kernels`).
- ``vmap``: standard out-of-place tensor operations only (those bodies run eagerly, plain
  ``F.conv_transpose2d``, no custom autograd functions, no layout tricks), which
  ``torch.func.vmap`` can batch, so that a landscape scan evaluates several parameter sets in
  one pass (:class:`landscape.evaluators.DirectionEvaluator`). The values equal the fast
  paths' to float rounding (``tests/test_scan_batched.py``). It is meant for evaluation
  without gradients and is slower than the fast paths when not batched; the slope searches
  (``tightest``, ``optimized``), the random policies and ``crown``'s data-dependent neuron
  selection cannot run under vmap.

The mode is one context variable. The engine's entry points (:func:`bounds.compute.bound_model`
and :func:`bounds.robust_ce.robust_loss`, hence ``compute_bounds`` and
``robust_cross_entropy``) set it from :attr:`bounds.BoundSpec.compile` (:func:`engine`); a
caller that runs the engine under vmap wraps the calls in :func:`vmappable`, which wins over
``compile``. Nothing below the entry points takes the mode as an argument: the operations read
it (:func:`active_kernels`, :func:`vmapped`), and an autograd function keeps the kernels of its
forward for its backward pass.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

from bounds import compiled


@dataclass(frozen=True)
class Mode:
    """An execution mode: ``name`` (``eager``, ``compiled`` or ``vmap``) and, when compiled,
    its kernels."""

    name: str
    kernels: compiled.Kernels | None = None


EAGER = Mode("eager")
VMAP = Mode("vmap")

_CURRENT: contextvars.ContextVar[Mode] = contextvars.ContextVar("bounds_mode", default=EAGER)


def current() -> Mode:
    """The mode the engine runs in."""
    return _CURRENT.get()


def active_kernels() -> compiled.Kernels | None:
    """The compiled kernels of the current mode (None: not compiled)."""
    return _CURRENT.get().kernels


def vmapped() -> bool:
    """Whether the engine runs with standard operations only (the ``vmap`` mode)."""
    return _CURRENT.get() is VMAP


@contextlib.contextmanager
def _running(mode: Mode) -> Iterator[None]:
    token = _CURRENT.set(mode)
    try:
        yield
    finally:
        _CURRENT.reset(token)


@contextlib.contextmanager
def vmappable() -> Iterator[None]:
    """Run the engine with standard operations only inside the block (see the module doc)."""
    with _running(VMAP):
        yield


@contextlib.contextmanager
def engine(compile: bool) -> Iterator[None]:
    """The mode of one engine call: ``compiled`` if ``compile`` (the kernels are created, and
    the disk cache configured, on first use: :func:`bounds.compiled.kernels`), else ``eager``;
    inside a :func:`vmappable` block it stays ``vmap``."""
    kernels = compiled.kernels(compile)
    if vmapped():
        mode = VMAP
    elif kernels is not None:
        mode = Mode("compiled", kernels)
    else:
        mode = EAGER
    with _running(mode):
        yield
