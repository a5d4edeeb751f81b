"""Bound propagation: certified bounds on a network's outputs over an L-inf ball."""

from bounds.layers import Normalize

__all__ = ["Normalize"]
