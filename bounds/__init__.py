"""Bound propagation: certified bounds on a network's outputs over an L-inf ball.

Public API::

    from bounds import compute_bounds, margin_spec, margin_ce, robust_cross_entropy, BoundResult, Normalize
    from bounds import Residual             # a residual block: branch(x) + shortcut(x)
    from bounds import METHODS, SLOPES      # the names of common.names
    from bounds import BoundSpec, bound_model, robust_loss   # the same, with the settings in one object
    from bounds import training_bound       # the BoundSpec of a training method

Modules (one job each): ``names`` (every name the toolkit knows; torch-free), ``network``
(validate the Sequential and list its layer operations), ``interval`` (IBP), ``relaxations``
(one function per lower-slope policy), ``linear`` (the backward linear pass),
``slope_search`` (``tightest`` and ``optimized``), ``compute`` (``compute_bounds``), ``fused``
(the fused certified loss), ``robust_ce`` (``robust_cross_entropy``), ``spec`` (the margin
specification, its cross-entropy and the argument checks), ``bound_spec`` (``BoundSpec``, the
settings of a bound), ``mode`` (the execution mode: eager, compiled or vmap) and ``compiled``
(the element-wise bodies and their compiled kernels).

The torch modules load on first use of one of their names, so ``import common.names`` (what
the command line and ``figures`` need) never loads torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from common.names import BOUND_METHODS as METHODS
from common.names import SLOPES

_LAZY = {
    "BoundResult": "bounds.compute",
    "BoundSpec": "bounds.bound_spec",
    "training_bound": "bounds.bound_spec",
    "bound_model": "bounds.compute",
    "robust_loss": "bounds.robust_ce",
    "compute_bounds": "bounds.compute",
    "Normalize": "bounds.layers",
    "Residual": "bounds.layers",
    "robust_cross_entropy": "bounds.robust_ce",
    "margin_spec": "bounds.spec",
    "margin_ce": "bounds.spec",
}

__all__ = ["METHODS", "SLOPES", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bounds' has no attribute {name!r}")
