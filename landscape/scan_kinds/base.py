"""The interface every scan kind implements, and the lookup from a kind's name to it.

A kind is one entry of :data:`common.names.SCAN_KINDS` (torch-free: its name, summary, grid
defaults, axis label, number of axes, and where its two halves live). Its ``runner`` names the
module of its computing half, whose ``KIND`` is a :class:`KindRunner`: what it checks, its
coordinates, what its file holds besides what every scan's does (:meth:`KindRunner.plan`:
the grid, the fields at every point, the identifying arguments, attributes and arrays of its
own), what it evaluates and stores (:meth:`KindRunner.build`), how a resumed file is held to
it (:meth:`KindRunner.resumes`) and its summaries. Its ``figure`` names the drawing half, on the
side of :mod:`figures`. :func:`landscape.scan_setup.prepare_scan` does the rest, for every
kind alike.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from common.names import SCAN_KINDS

if TYPE_CHECKING:
    import torch

    from landscape.scan_request import ScanRequest

__all__ = [
    "Arrays",
    "KindPlan",
    "KindInputs",
    "Built",
    "KindRunner",
    "runner",
    "refuse_others_options",
]

Arrays = dict[str, tuple[np.ndarray, dict[str, Any]]]
"""Stored arrays: name -> (value, its attributes)."""


@dataclass
class KindPlan:
    """What a kind's file holds besides what every scan's does: the grid ``coords`` (axis name
    -> ``[n]`` values, in the order of the file's ``dims``), the ``fields`` stored at every
    point, the ``args`` entries that identify the scan besides the common ones (those an older
    kind does not use are None: ``lr``, ``norm``, ``keep_bias``, ``metrics``), root ``attrs``,
    stored ``arrays`` and its own ``state`` for :meth:`KindRunner.build` (a second model,
    directions, options)."""

    coords: dict[str, np.ndarray]
    fields: list[str]
    args: dict[str, Any] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    arrays: Arrays = field(default_factory=dict)
    state: Any = None


@dataclass
class KindInputs:
    """What the common setup hands a kind's :meth:`KindRunner.build`: the ``request``, its
    ``plan``, the ``model`` at the checkpoint, one loss closure per scanned loss (``closures``,
    named ``labels``), the step scale ``lr``, ``errors`` (the ``--fields`` values at a point, or
    None), grid points per vmap pass (``batch_points``) and the parameters' names and shapes
    (``meta``, the attributes of every stored direction)."""

    request: ScanRequest
    plan: KindPlan
    model: torch.nn.Module
    closures: list[Any]
    labels: list[str]
    lr: float
    errors: Callable[..., dict[str, float]] | None
    batch_points: int
    meta: dict[str, Any]


@dataclass
class Built:
    """A kind's evaluator (point indices -> one ``{label: values}`` per index), the arrays it
    adds to the file and the names of the per-label arrays a point sets (``label_arrays``)."""

    evaluator: Any
    arrays: Arrays = field(default_factory=dict)
    label_arrays: Sequence[str] = ()


class KindRunner:
    """The computing half of a scan kind; a subclass overrides what its kind does differently.

    ``own_options``: the request fields only this kind uses (another kind refuses them);
    ``takes_fields``: whether ``--fields`` (errors at every point) applies; ``keeps_bias``:
    whether biases move along its directions unless ``--keep-bias/--zero-bias`` says."""

    own_options: tuple[str, ...] = ()
    takes_fields: bool = True
    keeps_bias: bool = False

    def check(self, req: ScanRequest) -> None:
        """Refuse what this kind cannot scan (one ValueError naming the option)."""

    def coords(
        self, req: ScanRequest, ranges: Sequence[tuple[float, float]] | None = None
    ) -> dict[str, np.ndarray]:
        """The grid axes, axis name -> ``[n]`` values."""
        raise NotImplementedError

    def moves_bias(self, req: ScanRequest) -> bool:
        """Whether biases move along the scan's directions: ``keep_bias``, else the kind's own."""
        return bool(req.keep_bias) if req.keep_bias is not None else self.keeps_bias

    def plan(
        self, req: ScanRequest, model: torch.nn.Module, lr: float, labels: Sequence[str]
    ) -> KindPlan:
        """What the kind's file holds (:class:`KindPlan`), once the model at the checkpoint,
        the step scale ``lr`` and the scanned losses (``labels``) are known. The default: its
        grid, the loss and ``--fields`` at every point, nothing else of its own."""
        return self.common_plan(req, self.coords(req))

    def common_plan(self, req: ScanRequest, coords: dict[str, np.ndarray]) -> KindPlan:
        """The plan of a kind with grid ``coords`` and nothing of its own, which :meth:`plan`
        adds to."""
        return KindPlan(
            coords,
            ["loss", *(req.fields or ())],
            args={"lr": None, "norm": None, "keep_bias": None, "metrics": None},
            attrs={"lr": None, "norm": None},
        )

    def build(self, inputs: KindInputs) -> Built:
        """The evaluator of the points and what it stores."""
        raise NotImplementedError

    def resumes(self, out: str, arrays: Arrays) -> None:
        """Refuse to resume ``out`` when what it stores is not what this scan would compute
        (default: the identifying arguments, checked by the store, suffice)."""

    def summaries(self, built: Built, labels: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Per-label summaries stored once the scan is complete."""
        return {}


def runner(kind: str) -> KindRunner:
    """The computing half of scan kind ``kind``: ``KIND`` of the module its entry of
    :data:`common.names.SCAN_KINDS` names (``module`` or ``module:attribute``)."""
    module, _, name = SCAN_KINDS[kind].runner.partition(":")
    found = getattr(importlib.import_module(module), name or "KIND")
    if not isinstance(found, KindRunner):
        raise TypeError(f"scan kind {kind!r}: {SCAN_KINDS[kind].runner} is not a KindRunner")
    return found


def refuse_others_options(req: ScanRequest) -> None:
    """Refuse an option that only another kind uses (given: not its default), naming it."""
    import dataclasses

    from landscape.scan_request import flag_of

    defaults = {f.name: f.default for f in dataclasses.fields(req)}
    own = SCAN_KINDS[req.kind].runner
    for other, entry in SCAN_KINDS.items():
        if entry.runner == own:  # random-1d and random-2d share theirs
            continue
        for name in runner(other).own_options:
            if getattr(req, name) != defaults[name]:
                raise ValueError(f"{flag_of(name)} is only used with --kind {other}")


def flat32(tensors: Sequence[torch.Tensor]) -> np.ndarray:
    """Parameter-shaped tensors as one float32 vector ``[n_params]`` (how directions are stored)."""
    from common.tensors import flatten

    return flatten(tensors).cpu().numpy().astype(np.float32)


def same_arrays(out: str, arrays: Mapping[str, tuple[np.ndarray, Any]], close: bool) -> bool:
    """Whether the arrays stored in ``out`` equal ``arrays`` (``close``: to float rounding)."""
    from common import store

    for name, (value, _) in arrays.items():
        stored, _ = store.read_array(out, name)
        if stored.shape != value.shape:
            return False
        equal = (
            np.allclose(stored, value, rtol=1e-4, atol=1e-6)
            if close
            else np.array_equal(stored, value)
        )
        if not equal:
            return False
    return True


def grid_points(coords: Mapping[str, np.ndarray]) -> np.ndarray:
    """Every point of the grid ``coords`` as a row of its coefficients, ``[n_points, n_axes]``,
    in the file's (C) order."""
    return np.stack(np.meshgrid(*coords.values(), indexing="ij"), axis=-1).reshape(-1, len(coords))
