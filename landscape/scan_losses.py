"""The loss a scan looks at: a closure over a fixed, seeded batch of samples.

Kinds (x, y the fixed batch, f the network at the current parameters):

- ``certified``: the training loss of :func:`train.objective.certified_loss`,
  L = kappa * CE(f(x), y) + (1 - kappa) * CE([0, -lb(x, eps)], 0), with lb the margin lower
  bounds of ``method`` (any of :data:`common.names.TRAIN_METHODS`), ``slope`` and ``beta``;
  random slope policies and the attacks of ``sabr`` and ``mtl-ibp`` (their PGD start) get a
  freshly seeded generator on every call, so the same parameters always give the same loss;
  ``options`` are those of the method's loss (:meth:`train.objective.LossOptions.for_method`:
  SABR's lambda, MTL-IBP's alpha, their attack steps), recorded with the scan;
- ``clean``: CE(f(x), y);
- ``pgd``: CE(f(x_adv), y), x_adv the last iterate of ``pgd_steps`` steps of L-inf PGD ascent
  on the cross-entropy from a seeded uniform start (:func:`train.attacks.pgd_last_iterate`,
  the adversarial-training loss of Madry et al.); x_adv is recomputed at every parameter point.

A :class:`LossClosure` is called as ``loss_fn()`` or ``loss_fn(model)`` (the training callback
protocol's ``Callable[[nn.Module], Tensor]``); it returns a scalar tensor with a gradient
with respect to the parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bounds.bound_spec import BoundSpec, training_bound
from common.names import SCAN_LOSSES, resolve_method
from train.attacks import pgd_last_iterate
from train.objective import LossOptions, certified_loss

__all__ = [
    "LossSpec",
    "LossClosure",
    "BatchedLoss",
    "make_loss",
    "make_closure",
    "parse_samples",
    "select_samples",
]


@dataclass(frozen=True)
class LossSpec:
    """What to evaluate: see the module docstring. ``slope=None`` means the method's default."""

    kind: str = "certified"
    method: str = "ibp"
    slope: str | None = None
    beta: float = 1.0
    kappa: float = 0.0
    eps: float = 0.1
    domain: tuple[float, float] | None = (0.0, 1.0)
    fused: bool = False
    pgd_steps: int = 10
    seed: int = 0
    options: tuple = ()

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "options", tuple(sorted((str(k), v) for k, v in dict(self.options).items()))
        )
        if self.kind != "certified" and self.kind not in SCAN_LOSSES:
            raise ValueError(
                f"unknown loss kind {self.kind!r}; choose one of certified, {', '.join(SCAN_LOSSES)}"
            )
        if self.kind == "certified":
            resolve_method(self.method, self.slope, self.beta)  # validates method and slope
        for name, value, lo, hi in (
            ("eps", self.eps, 0.0, math.inf),
            ("beta", self.beta, 0.0, 1.0),
            ("kappa", self.kappa, 0.0, 1.0),
        ):
            if (
                not isinstance(value, (int, float))
                or not math.isfinite(value)
                or not lo <= value <= hi
            ):
                bound = f">= {lo}" if hi == math.inf else f"in [{lo}, {hi}]"
                raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
        if self.kind == "pgd" and int(self.pgd_steps) < 1:
            raise ValueError(f"pgd_steps must be >= 1, got {self.pgd_steps}")

    @property
    def label(self) -> str:
        """Name of this loss in a scan file: the method for ``certified``, else the kind."""
        return self.method if self.kind == "certified" else self.kind

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of the spec."""
        d = asdict(self)
        d["domain"] = None if self.domain is None else list(self.domain)
        if self.options:
            d["options"] = dict(self.options)
        else:  # the key of a method without options: absent, as in files written before it existed
            d.pop("options")
        return d


class LossClosure:
    """``L(theta)`` of :class:`LossSpec` ``spec`` on the fixed batch (x, y).

    ``closure(model=None)`` evaluates on ``model`` (default: the model given at construction)
    with its current parameters. ``closure.functional(params)`` evaluates with a dict of
    parameters via ``torch.func.functional_call`` (used with ``vmap`` for the clean loss).
    ``compile``: the certified loss runs the engine's compiled kernels (:mod:`bounds.compiled`;
    the same values to float rounding, so it is not part of the spec a scan file records).
    """

    def __init__(
        self, model: nn.Module, x: Tensor, y: Tensor, spec: LossSpec, compile: bool = False
    ) -> None:
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(
                f"need a non-empty batch with one label per sample, got x {tuple(x.shape)}, y {tuple(y.shape)}"
            )
        self.model = model
        self.x = x.detach()
        self.y = y.detach()
        self.spec = spec
        self.compile = bool(compile)
        self.last_stats: dict[str, float] = {}

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def vmappable(self) -> bool:
        """Whether :meth:`functional` can be vmapped over stacked parameter sets."""
        return self.spec.kind == "clean"

    def _generator(self) -> torch.Generator:
        gen = torch.Generator()  # on the CPU, like the training loop
        gen.manual_seed(int(self.spec.seed))
        return gen

    def __call__(self, model: nn.Module | None = None) -> Tensor:
        model = self.model if model is None else model
        s = self.spec
        if s.kind == "clean":
            return F.cross_entropy(model(self.x), self.y)
        if s.kind == "pgd":
            x_adv = pgd_last_iterate(
                model, self.x, self.y, s.eps, s.pgd_steps, s.domain, self._generator()
            )
            return F.cross_entropy(model(x_adv), self.y)

        return self.certified(model, self.loss_bound())

    def loss_bound(self) -> BoundSpec | None:
        """The bound this certified loss computes: :meth:`bound_spec` with the loss's
        ``fused`` and ``compile`` settings (None for the clean and PGD losses and for natural
        training)."""
        if self.spec.kind != "certified":
            return None
        s = self.spec
        return training_bound(
            s.method, s.slope, s.beta, domain=s.domain, fused=s.fused, compile=self.compile
        )

    def certified(self, model: nn.Module, bound: BoundSpec | None) -> Tensor:
        """The certified loss of this spec on ``model`` with the bound ``bound`` (what a call
        computes with :meth:`loss_bound`; the slopes kind passes one with given lower slopes),
        its generator seeded afresh; the batch stats are kept in ``last_stats``."""
        s = self.spec
        loss, stats = certified_loss(
            model,
            self.x,
            self.y,
            s.eps,
            s.method,
            bound,
            kappa=s.kappa,
            generator=self._generator(),
            options=LossOptions(**dict(s.options)),
        )
        self.last_stats = stats
        return loss

    def bound_spec(self) -> BoundSpec | None:
        """The bound of a certified loss as the analyses repeat it (method, slope, beta, domain;
        None for the clean and PGD losses and for natural training)."""
        if self.spec.kind != "certified":
            return None
        s = self.spec
        return training_bound(s.method, s.slope, s.beta, domain=s.domain)

    def lower_A(self, model: nn.Module | None = None) -> Tensor | None:
        """The lower bound's input coefficients (:func:`landscape.metrics.lower_coefficients`) of
        this loss's bound at the model's current parameters (None without a linear bound)."""
        from landscape.metrics import lower_coefficients

        model = self.model if model is None else model
        if self.spec.kind != "certified":
            return None
        with torch.no_grad():
            n_classes = int(model(self.x[:1]).shape[-1])
        bound = self.bound_spec()
        if bound is None:
            return None
        return lower_coefficients(
            model, self.x, self.y, self.spec.eps, bound, n_classes, self._generator()
        )

    def functional(self, params: dict[str, Tensor]) -> Tensor:
        """The loss with the parameters replaced by ``params`` (names of ``named_parameters``)."""
        if self.spec.kind == "clean":
            logits = torch.func.functional_call(self.model, params, (self.x,))
            return F.cross_entropy(logits, self.y)
        return torch.func.functional_call(
            _LossModule(self.model, self), {f"model.{k}": v for k, v in params.items()}, ()
        )


class BatchedLoss:
    """A scan loss over many samples, in mini-batches: ``L = sum_b (n_b / N) L_b`` with ``L_b`` the
    :class:`LossClosure` of batch ``b`` (``n_b`` of the ``N`` samples, in order).

    Every loss of a scan is a mean over its samples, so with one batch this is the loss itself;
    with several it is the same mean, except where a loss draws per call (random slopes, an
    attack's start), which each batch seeds alike. ``parts`` = ``[(n_b / N, L_b)]`` lets
    :func:`landscape.directions.gradient_direction` and
    :class:`landscape.curvature.HessianOperator` accumulate the gradient and Hessian-vector
    products batch by batch, one graph at a time, so memory does not grow with ``N``. Calling it
    sums the batch losses (under ``torch.no_grad`` that also holds one batch at a time).
    """

    def __init__(self, parts: Sequence[LossClosure]) -> None:
        parts = list(parts)
        if not parts:
            raise ValueError("a batched loss needs at least one batch")
        n = sum(int(p.x.shape[0]) for p in parts)
        self.closures = parts
        self.parts = [(int(p.x.shape[0]) / n, p) for p in parts]
        self.spec = parts[0].spec
        self.model = parts[0].model
        self.n_samples = n

    @property
    def label(self) -> str:
        return self.spec.label

    vmappable = False

    def __call__(self, model: nn.Module | None = None) -> Tensor:
        total = None
        for w, fn in self.parts:
            value = w * fn(model)
            total = value if total is None else total + value
        return total

    def bound_spec(self) -> BoundSpec | None:
        return self.closures[0].bound_spec()

    def lower_A(self, model: nn.Module | None = None) -> Tensor | None:
        """The batches' lower-bound coefficients, concatenated along the samples."""
        parts = [fn.lower_A(model) for fn in self.closures]
        return None if parts[0] is None else torch.cat(parts)


def make_closure(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    spec: LossSpec,
    batch_size: int | None = None,
    compile: bool = False,
) -> LossClosure | BatchedLoss:
    """The scan loss of ``spec`` on (x, y): one :class:`LossClosure`, or a :class:`BatchedLoss`
    of batches of ``batch_size`` samples when there are more samples than that."""
    n = int(x.shape[0])
    if batch_size is None or int(batch_size) >= n:
        return LossClosure(model, x, y, spec, compile=compile)
    if int(batch_size) < 1:
        raise ValueError(f"--batch-size: must be >= 1, got {batch_size}")
    b = int(batch_size)
    return BatchedLoss(
        [
            LossClosure(model, x[i : i + b], y[i : i + b], spec, compile=compile)
            for i in range(0, n, b)
        ]
    )


class _LossModule(nn.Module):
    """Wraps (model, closure) so ``functional_call`` can swap the model's parameters."""

    def __init__(self, model: nn.Module, closure: LossClosure) -> None:
        super().__init__()
        self.model = model
        self._closure = closure

    def forward(self) -> Tensor:
        return self._closure(self.model)


#: how :func:`make_loss` converts the fields it is given
_FIELD_TYPES = {
    "beta": float,
    "kappa": float,
    "eps": float,
    "fused": bool,
    "pgd_steps": int,
    "seed": int,
}


def make_loss(model: nn.Module, x: Tensor, y: Tensor, **fields: Any) -> LossClosure:
    """A :class:`LossClosure` over the fixed batch (x, y) of the :class:`LossSpec` with these
    ``fields`` (``kind``, ``method``, ``slope``, ``beta``, ``kappa``, ``eps``, ``domain``,
    ``fused``, ``pgd_steps``, ``seed``; the others take LossSpec's defaults), converted to the
    field types; ``options``: a dict of the method's loss options
    (:class:`train.objective.LossOptions` fields; None: the defaults)."""
    values = {k: _FIELD_TYPES[k](v) if k in _FIELD_TYPES else v for k, v in fields.items()}
    domain = values.get("domain", (0.0, 1.0))
    values["domain"] = None if domain is None else (float(domain[0]), float(domain[1]))
    values["options"] = tuple((fields.get("options") or {}).items())
    return LossClosure(model, x, y, LossSpec(**values))


def parse_samples(value: int | str) -> int | str:
    """``--samples``: a number (checked >= 1 by the caller) or ``"all"`` (the whole split)."""
    if isinstance(value, str):
        if value.strip().lower() == "all":
            return "all"
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"--samples: expected a number >= 1 or 'all', got {value!r}") from None
    return value


def select_samples(
    data: Any, n: int | str, split: str = "train", seed: int = 0
) -> tuple[Tensor, Tensor]:
    """``n`` samples of ``data.<split>_x/_y`` chosen by a seeded permutation (all if n >= size
    or ``n == "all"``), kept in index order."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; choose train or test")
    if n == "all":
        n = int(getattr(data, f"{split}_x").shape[0])
    if int(n) < 1:
        raise ValueError(f"the number of samples must be >= 1, got {n}")
    x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(x.shape[0], generator=gen)[: int(n)]
    idx, _ = idx.sort()
    return x[idx], y[idx]
