"""``slopes``: the relaxation's own landscape, the variable the paper's tightest method changes.

At the checkpoint's fixed weights theta, on the scan's fixed samples and eps, the certified loss
runs along a path of lower slopes through the policies ``p_0, ..., p_{K-1}`` of
``--slope-path`` (:data:`common.names.SLOPES`). With ``a_p`` the lower slopes policy ``p`` gives
at theta (one ``[B, *shape]`` tensor per ReLU layer, :attr:`bounds.BoundResult.slopes`) and
``s`` in ``[0, K - 1]``, ``k = min(floor(s), K - 2)``, ``f = s - k``:

    a(s) = (1 - f) a_{p_k} + f a_{p_{k+1}}          in every ReLU layer,

so ``s = k`` is policy ``p_k`` itself. Each ``a_p`` is computed once: the ``j``-th occurrence of a
random policy (``uniform``, ``binary``; ``tightest``'s random start) in the path is drawn from
the seed ``--seed + j`` (a path ``uniform,uniform`` runs from one draw to another; every first
occurrence is the draw the plain loss makes), a searched one (``tightest``, ``optimized``) is
searched on the margins once and detached. Any ``a(s)`` lies in ``[0, 1]``, so every point is a
sound bound (:attr:`bounds.BoundSpec.lower_slopes`).

Stored at each point, per scanned loss (a bound method with ReLU lines: ``crown-ibp``,
``crown``, ``cap``, ``tightest``; ``ibp`` has none): ``loss`` = L(s), the scanned method's
certified loss ``kappa CE + (1 - kappa) robust CE`` at its beta with the lower slopes ``a(s)``;
``cosine`` = cos(grad_theta L(s), grad_theta L(0)); ``grad_norm`` = ``|grad_theta L(s)|``. The
path is the root attribute ``slope_path`` (and an identifying argument), its seeds
``slope_seeds``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from common.names import DEFAULT_SLOPE_PATH, SCAN_KINDS, SCAN_LOSSES, SLOPES, TRAIN_METHODS
from landscape.scan_kinds.base import Built, KindInputs, KindPlan, KindRunner

if TYPE_CHECKING:
    import torch

    from bounds.bound_spec import BoundSpec
    from landscape.scan_losses import LossClosure
    from landscape.scan_request import ScanRequest

__all__ = [
    "SlopesKind",
    "KIND",
    "DEFAULT_PATH",
    "FIELDS",
    "parse_path",
    "path_seeds",
    "path_coords",
    "path_slopes",
    "own_bound",
    "refuse_without_slopes",
    "SlopePath",
    "SlopesEvaluator",
]

DEFAULT_PATH: tuple[str, ...] = DEFAULT_SLOPE_PATH
"""The path of a slopes scan without ``--slope-path`` (:data:`common.names.DEFAULT_SLOPE_PATH`)."""

FIELDS: tuple[str, ...] = ("loss", "cosine", "grad_norm")
"""What a slopes scan stores at every point, per scanned loss."""


def parse_path(value: str | Sequence[str] | None) -> list[str]:
    """``--slope-path``: comma-separated (or listed) names of :data:`common.names.SLOPES`, at
    least two (None: :data:`DEFAULT_PATH`); one ValueError naming the bad value."""
    if value is None:
        return list(DEFAULT_PATH)
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value)
    for name in names:
        if name not in SLOPES:
            raise ValueError(
                f"--slope-path: unknown slope {name!r}; choose from {', '.join(SLOPES)}"
            )
    if len(names) < 2:
        raise ValueError(f"--slope-path: give at least two policies, got {','.join(names)!r}")
    return names


def path_seeds(path: Sequence[str], seed: int) -> list[int]:
    """The seed of each policy of ``path``: ``seed + j`` for its ``j``-th occurrence (0-based)."""
    seen: dict[str, int] = {}
    out = []
    for name in path:
        out.append(int(seed) + seen.get(name, 0))
        seen[name] = seen.get(name, 0) + 1
    return out


def path_coords(n_policies: int, points: int | None) -> np.ndarray:
    """The grid ``s`` ``[n]``: ``points`` (default: the kind's) evenly spaced values from 0 to
    ``K - 1``, values within ``1e-9 (K - 1)`` of an integer made that integer, every integer
    added (each policy is a point), sorted without repeats."""
    hi = float(n_policies - 1)
    n = int(points) if points is not None else SCAN_KINDS["slopes"].points
    s = np.linspace(0.0, hi, n) if n > 1 else np.zeros(1)
    near = np.round(s)
    s = np.where(np.abs(s - near) <= 1e-9 * hi, near, s)
    return np.unique(np.concatenate([s, np.arange(n_policies, dtype=np.float64)]))


def refuse_without_slopes(labels: Sequence[str]) -> None:
    """One ValueError for a scanned loss whose bound has no lower slopes to move (``ibp``,
    ``natural``, the attack-based ``sabr`` and ``mtl-ibp``, the clean and PGD losses)."""
    for label in labels:
        info = TRAIN_METHODS.get(label)
        if label in SCAN_LOSSES or info is None or info.bound in (None, "ibp") or info.attack:
            relaxing = [m for m, i in TRAIN_METHODS.items() if i.bound not in (None, "ibp")]
            raise ValueError(
                f"--kind slopes: {label} has no lower ReLU slopes to move; scan one of "
                f"{', '.join(relaxing)}"
            )


def own_bound(closure: LossClosure) -> BoundSpec:
    """The bound of a certified scan loss (:meth:`landscape.scan_losses.LossClosure.loss_bound`);
    ValueError for a loss without one (refused before: :func:`refuse_without_slopes`)."""
    bound = closure.loss_bound()
    if bound is None:
        raise ValueError(f"--kind slopes: {closure.label} has no bound whose slopes could move")
    return bound


def path_slopes(closure: LossClosure, policy: str, seed: int) -> list[torch.Tensor]:
    """The lower slopes ``[B, *shape]`` per ReLU layer that ``policy`` gives the bound of
    ``closure`` (a certified :class:`landscape.scan_losses.LossClosure`) on its batch at the
    model's current parameters: drawn from a generator seeded ``seed`` (on the CPU, as the loss
    seeds its own), searched on the margins ``margin_spec(y)`` as the unfused loss searches
    them; detached."""
    import dataclasses

    import torch

    from bounds import bound_model, margin_spec

    bound = dataclasses.replace(own_bound(closure), slope=policy, fused=False)
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    with torch.no_grad():
        n_out = int(closure.model(closure.x[:1]).shape[-1])
        C = margin_spec(closure.y, n_out).to(dtype=closure.x.dtype, device=closure.x.device)
        res = bound_model(
            closure.model, closure.x, closure.spec.eps, bound, C, generator=gen, need_upper=False
        )
    return [a.detach() for a in res.slopes or []]


class SlopePath:
    """The lower slopes of one batch's certified loss (``closure``) at every policy of ``path``
    (seeds ``seeds``), and the loss at any ``s`` of the path (module doc)."""

    def __init__(self, closure: LossClosure, path: Sequence[str], seeds: Sequence[int]) -> None:
        self.closure = closure
        self.ends = [path_slopes(closure, p, seed) for p, seed in zip(path, seeds)]

    def slopes(self, s: float) -> list[torch.Tensor]:
        """``a(s)`` per ReLU layer: ``(1 - f) a_k + f a_{k+1}``, exactly ``a_k`` at an integer."""
        k = min(int(math.floor(s)), len(self.ends) - 2)
        f = float(s) - k
        if f == 0.0:
            return self.ends[k]
        if f == 1.0:
            return self.ends[k + 1]
        return [(1.0 - f) * a + f * b for a, b in zip(self.ends[k], self.ends[k + 1])]

    def loss(self, model: torch.nn.Module, s: float) -> torch.Tensor:
        """The certified loss (scalar, with its parameter gradient) with the slopes ``a(s)``."""
        import dataclasses

        bound = dataclasses.replace(own_bound(self.closure), lower_slopes=self.slopes(s))
        return self.closure.certified(model, bound)


class SlopesEvaluator:
    """Point indices -> ``{label: {loss, cosine, grad_norm}}`` along the slope path ``coords``.

    ``closures``: one certified loss per label, a :class:`landscape.scan_losses.LossClosure` or a
    :class:`landscape.scan_losses.BatchedLoss` (each batch has its own slopes; the loss and its
    gradient are the batches' weighted sums). The gradient at ``s = 0`` is computed here."""

    def __init__(
        self,
        model: torch.nn.Module,
        closures: Sequence[Any],
        labels: Sequence[str],
        coords: np.ndarray,
        path: Sequence[str],
        seeds: Sequence[int],
    ) -> None:
        self.model, self.coords = model, np.asarray(coords, dtype=np.float64)
        self.paths = {}
        for label, fn in zip(labels, closures):
            parts = getattr(fn, "parts", None) or [(1.0, fn)]
            self.paths[label] = [(float(w), SlopePath(c, path, seeds)) for w, c in parts]
        self.grad0 = {label: self.gradient(label, 0.0)[1] for label in self.paths}

    def gradient(self, label: str, s: float) -> tuple[float, torch.Tensor]:
        """``(L(s), grad_theta L(s))`` of ``label``, the gradient flat, float64 ``[n_params]``."""
        import torch

        from common.tensors import flatten
        from landscape.directions import gradient_direction

        loss, grad = 0.0, None
        for w, path in self.paths[label]:
            value, grads = gradient_direction(functools.partial(path.loss, s=s), self.model)
            g = flatten(grads).to(torch.float64)
            loss += w * float(value)
            grad = w * g if grad is None else grad + w * g
        assert grad is not None
        return loss, grad

    def __call__(self, indices: Sequence[int]) -> list[dict[str, dict[str, float]]]:
        out = []
        for i in indices:
            s = float(self.coords[int(i)])
            values = {}
            for label, g0 in self.grad0.items():
                loss, g = self.gradient(label, s)
                norm, norm0 = float(g.norm()), float(g0.norm())
                cos = float(g @ g0) / (norm * norm0) if norm > 0 and norm0 > 0 else float("nan")
                values[label] = {"loss": loss, "cosine": cos, "grad_norm": norm}
            out.append(values)
        return out


class SlopesKind(KindRunner):
    """One axis, ``s``, along the slope path; the weights do not move (module doc)."""

    own_options = ("slope_path",)
    takes_fields = False

    def check(self, req: ScanRequest) -> None:
        parse_path(req.slope_path)
        if req.methods is not None:
            refuse_without_slopes([m.strip() for m in req.methods])
        if req.loss != "certified":
            refuse_without_slopes([req.loss])
        for given, why in (
            (req.slope is not None, "--slope: the policies of --kind slopes are --slope-path's"),
            (
                req.range is not None,
                "--range: --kind slopes runs over s in [0, K - 1] (K "
                "policies of --slope-path); choose its resolution with --points",
            ),
            (bool(req.fused), "--fused: --kind slopes scans the margin bound's loss"),
        ):
            if given:
                raise ValueError(why)

    def coords(
        self, req: ScanRequest, ranges: Sequence[tuple[float, float]] | None = None
    ) -> dict[str, np.ndarray]:
        return {"s": path_coords(len(parse_path(req.slope_path)), req.points)}

    def plan(
        self, req: ScanRequest, model: torch.nn.Module, lr: float, labels: Sequence[str]
    ) -> KindPlan:
        refuse_without_slopes(labels)
        path = parse_path(req.slope_path)
        plan = super().plan(req, model, lr, labels)
        plan.fields = list(FIELDS)
        plan.args["slope_path"] = path
        plan.attrs.update(slope_path=path, slope_seeds=path_seeds(path, req.seed))
        return plan

    def build(self, inputs: KindInputs) -> Built:
        req, plan = inputs.request, inputs.plan
        path = plan.args["slope_path"]
        evaluator = SlopesEvaluator(
            inputs.model,
            inputs.closures,
            inputs.labels,
            plan.coords["s"],
            path,
            path_seeds(path, req.seed),
        )
        return Built(evaluator)


KIND = SlopesKind()
