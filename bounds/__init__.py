"""Bound propagation: certified bounds on a network's outputs over an L-inf ball.

Public API::

    from bounds import compute_bounds, margin_spec, robust_cross_entropy, BoundResult, Normalize
    from bounds import METHODS, SLOPES

Modules (one job each): ``network`` (validate and describe the Sequential), ``interval`` (IBP),
``relaxations`` (one function per lower-slope policy), ``linear`` (the backward linear pass),
``slope_search`` (``tightest`` and ``optimized``), ``compute`` (``compute_bounds``), ``fused``
(the fused certified loss), ``loss`` (``robust_cross_entropy``), ``spec`` (margin specification
and argument checks).
"""

from bounds.compute import BoundResult, compute_bounds
from bounds.layers import Normalize
from bounds.loss import robust_cross_entropy
from bounds.spec import METHODS, SLOPES, margin_spec

__all__ = [
    "BoundResult",
    "METHODS",
    "Normalize",
    "SLOPES",
    "compute_bounds",
    "margin_spec",
    "robust_cross_entropy",
]
