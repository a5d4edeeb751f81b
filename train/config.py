"""The configuration of one training run: every choice that determines the result.

A :class:`TrainConfig` is validated when it is made (one clear ``ValueError`` per bad value),
converts to and from a plain JSON-able dict (stored in checkpoints and ``config.json``) and
loads from a YAML or JSON file, so that a paper's configuration can be written down once::

    cfg = TrainConfig(dataset="digits", model="cnn-tiny", method="ibp", eps=0.1, epochs=5)
    cfg = load_config("ibp_fmnist.yaml", overrides={"epochs": 3})

Schedules are stated in epochs (fractions allowed) and applied per step (see
:mod:`train.schedules`): eps, beta and kappa move from their start to their end values over the
window ``[eps_start_epoch, eps_start_epoch + eps_ramp_epochs]``.

Defaults that train (derived when a value is left out, then stored like any other): a warm-up
at eps = 0 for the first :data:`WARMUP_FRACTION` of the epochs, a ramp over the next
:data:`RAMP_FRACTION`, then the final eps for the rest, as certified training schedules it
(Gowal et al. 2018; Zhang et al. 2020; Shi et al. 2021); kappa from 1 to 0 over the ramp;
beta = 1, as Lee et al. (2021) compare CROWN-IBP and as the tightest method fixes it (CROWN-IBP's
own recipe ramps it 1 -> 0: ``beta_end = 0``; it measured worse here, 31% against 29% verified
error on digits); the learning rate of the optimiser (:data:`DEFAULT_LR`). The fractions were
chosen by measurement on digits (30 epochs, eps 0.1): with a 5 % warm-up and a 55 % ramp the
MLP ends at 27-28 % verified error by IBP and CROWN-IBP and cnn-tiny's IBP at 51 %, against
30-31 % and 63 % with 10 % and 40 %; IBP on a CNN gains most from a long ramp.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import names
from train import plugins

RAMPS = ("linear", "smooth")
INITS = ("default", "ibp")
OPTIMIZERS = ("adam", "sgd")
DEVICES_PREFIX = ("cpu", "cuda", "mps")

#: Share of the epochs trained at eps = 0 before the ramp starts, and share the ramp lasts.
MAX_SEED = 2**63 - 1
"""The largest seed: seeds are stored as HDF5 int64 attributes."""

WARMUP_FRACTION = 0.05
RAMP_FRACTION = 0.55
#: Learning rate when none is given, per optimiser.
DEFAULT_LR = {"adam": 1e-3, "sgd": 0.05}

#: Fields that do not change what a run computes; a resumed or re-opened run may differ here.
NON_IDENTITY_FIELDS = frozenset(
    {
        "epochs",
        "device",
        "data_dir",
        "record_every",
        "grad_every",
        "probe_every",
        "probe_batches",
        "probe_fresh_slopes",
        "eval_size",
        "checkpoint_every_steps",
        "probe_hessian",
        "compile",
    }
)


@dataclass
class TrainConfig:
    """Everything that defines a certified-training run.

    Loss per step: ``L = kappa * CE(f(x), y) + (1 - kappa) * CE(-lb(x, eps; beta), y)``, with
    ``lb`` the margin lower bounds of the chosen bound method (0 for the true class).

    Attributes (units in brackets):
        dataset, model: names in ``train.data.DATASETS`` and ``train.models.MODELS``, or your
            own function as ``FILE.py:function`` or ``package.module:function``
            (:mod:`train.userdata`, :mod:`train.usermodels`); a file's path is stored absolute.
        model_options: keyword options of ``train.models.build_model`` (e.g. ``widths``), or
            the keyword arguments of your model function.
        method: a key of :data:`common.names.TRAIN_METHODS`.
        slope: lower-slope policy (:data:`common.names.SLOPES`); ``None``: the method's own.
        eps: final training radius eps_train (L-inf, in input units, before normalisation).
        eps_start_epoch, eps_ramp_epochs [epochs]: the ramp window of eps, beta and kappa
            (default: :data:`WARMUP_FRACTION` and :data:`RAMP_FRACTION` of ``epochs``).
        eps_schedule: ``linear`` or ``smooth`` (see :mod:`train.schedules`).
        beta_start, beta_end, beta_schedule: CROWN-IBP's mixing weight of CROWN and IBP bounds.
        kappa_start, kappa_end, kappa_schedule: weight of the clean loss.
        epochs, batch_size: run length [epochs] and mini-batch size.
        optimizer: ``adam`` or ``sgd``; lr (default :data:`DEFAULT_LR` of the optimiser),
            momentum (sgd), weight_decay.
        lr_milestones [epochs], lr_decay: lr is multiplied by ``lr_decay`` at each milestone.
        grad_clip: max global L2 norm of the gradient (0 = no clipping).
        seed: seeds model init, data order and random slopes.
        fused_loss: use the fused certified cross-entropy bound (``docs/fused-loss.md``).
        fused_ramp: while eps is below its final value (warm-up and ramp), bound the robust
            term by the fused bound or IBP's, whichever is smaller per sample (``fused="min"``),
            and by the loss ``fused_loss`` says from the final eps on (:meth:`fused_at`).
        sabr_lambda: SABR's box size lambda in (0, 1]: IBP on ``B(x', lambda eps)`` (``sabr``;
            Mueller et al. 2023 use 0.1-0.9 by setting; :mod:`train.mixed_losses`).
        mtl_alpha: MTL-IBP's weight alpha in [0, 1] of the IBP loss against the PGD loss (``mtl-ibp``).
        attack_steps: PGD steps of the ``sabr`` / ``mtl-ibp`` attack (None: 8 / 1).
        init: ``default`` (the zoo's) or ``ibp``: Shi et al. (2021)'s N(0, (sqrt(2 pi) / fan_in)^2)
            weights and zero biases for every affine layer but the last (:mod:`train.shi`).
        warmup_reg, warmup_reg_lambda, warmup_reg_tol: Shi et al.'s tightness and ReLU-balance
            regularisers while eps ramps, with weight lambda (1 - eps_t / eps) and tolerance tau.
        random_crop [pixels], random_flip: data augmentation of every training batch, as the paper
            code's CIFAR-10 (crop 4 and flip) and SVHN (crop 4) settings do: each image zero-padded
            by ``random_crop`` pixels and cut back at a random offset, and mirrored left-right with
            probability 1/2 (:mod:`train.augment`; 0 / False: none).
        normalize_inputs: the model's first layer normalises with the dataset's mean and std
            (False: it feeds the pixels as they are, as Lee et al.'s code does).
        bounded_input: the eps-ball is clipped to the pixel range (the correct threat model;
            False: unclipped, as Lee et al.'s code runs, ``bounded_input: false``).
        train_size, test_size: optional subset sizes; data_dir: dataset directory.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        record_every [steps]: how often recorded scalars are handed to the sink.
        grad_every [steps]: record the flattened gradient every N steps (0 = never).
        probe_every [steps]: gradient-direction probes every N steps (0 = never; CLI only).
        probe_batches: probe the step's batch (1) or K fixed training batches, with their spread.
        probe_fresh_slopes: a probe draws new random slopes at every point (the paper's probe).
        probe_hessian: a probe also records the top Hessian eigenvalue and the trace of the
            step's loss (``landscape.probes``).
        checkpoint_every_steps [steps]: also write ``checkpoint_step{S}.pt`` every N optimiser
            steps (and ``checkpoint_step0.pt``, the initialisation), for finer trajectories; 0 = never.
        eval_size: test samples used by the per-epoch evaluation (0 = skip it).
        opt_steps, opt_lr: iterations and step size of the ``optimized`` slope policy.
        compile: run the bound engine's element-wise steps as compiled kernels cached on disk
            (``bounds.compiled``; the same losses to float rounding, so a resume may change it).
    """

    dataset: str = "digits"
    model: str = "cnn-tiny"
    model_options: dict = field(default_factory=dict)
    method: str = "ibp"
    slope: str | None = None
    eps: float = 0.1
    eps_start_epoch: float | None = None
    eps_ramp_epochs: float | None = None
    eps_schedule: str = "linear"
    beta_start: float = 1.0
    beta_end: float = 1.0
    beta_schedule: str = "linear"
    kappa_start: float = 1.0
    kappa_end: float = 0.0
    kappa_schedule: str = "linear"
    epochs: int = 20
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_milestones: tuple = ()
    lr_decay: float = 0.1
    grad_clip: float = 0.0
    seed: int = 0
    fused_loss: bool = False
    fused_ramp: bool = False
    sabr_lambda: float = 0.4
    mtl_alpha: float = 0.5
    attack_steps: int | None = None
    init: str = "default"
    warmup_reg: bool = False
    warmup_reg_lambda: float = 0.5
    warmup_reg_tol: float = 0.5
    random_crop: int = 0
    random_flip: bool = False
    normalize_inputs: bool = True
    bounded_input: bool = True
    train_size: int | None = None
    test_size: int | None = None
    data_dir: str | None = None
    device: str = "cpu"
    record_every: int = 50
    grad_every: int = 0
    probe_every: int = 0
    probe_batches: int = 1
    probe_fresh_slopes: bool = False
    probe_hessian: bool = False
    checkpoint_every_steps: int = 0
    eval_size: int = 1000
    opt_steps: int = 20
    opt_lr: float = 0.1
    compile: bool = False

    def __post_init__(self) -> None:
        if self.lr_milestones is not None and not isinstance(self.lr_milestones, (list, tuple)):
            raise ValueError(f"lr_milestones must be a list of epochs, got {self.lr_milestones!r}")
        if self.model_options is not None and not isinstance(self.model_options, Mapping):
            raise ValueError(
                f"model_options must be a mapping of option names to values, got {self.model_options!r}"
            )
        self.lr_milestones = tuple(self.lr_milestones or ())
        self.model_options = dict(self.model_options or {})
        _integer("epochs", self.epochs, low=1)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("method", self.method, tuple(names.TRAIN_METHODS))
        if self.eps_start_epoch is None:
            self.eps_start_epoch = WARMUP_FRACTION * self.epochs
        if self.eps_ramp_epochs is None:
            self.eps_ramp_epochs = RAMP_FRACTION * self.epochs
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer]
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ``ValueError`` with one clear sentence for the first bad value (checked in the
        order: names, then the training recipe, then the run's other options)."""
        self._validate_names()
        self._validate_recipe()
        self._validate_run_options()

    def _validate_names(self) -> None:
        """Method, slope, dataset and model (a reference to user code made absolute), and model
        options that do not try to set what the dataset gives."""
        _choice("method", self.method, tuple(names.TRAIN_METHODS))
        if self.slope is not None:
            _choice("slope", self.slope, tuple(names.SLOPES))
        names.resolve_method(self.method, self.slope, 1.0)  # a slope the method does not allow
        for name in ("dataset", "model"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty name, got {getattr(self, name)!r}")
            if plugins.is_reference(
                getattr(self, name)
            ):  # FILE.py:function, its path made absolute
                setattr(self, name, plugins.canonical(getattr(self, name), name))
        given = sorted({"input_shape", "n_classes", "mean", "std"} & set(self.model_options))
        if given:
            raise ValueError(
                f"model_options cannot set {', '.join(given)}: the dataset gives them to the model"
            )

    def _validate_recipe(self) -> None:
        """The schedules, the optimiser and the loss options of SABR, MTL-IBP and the warm-up
        regulariser."""
        _finite("eps", self.eps, low=0.0)
        _finite("eps_start_epoch", self.eps_start_epoch, low=0.0)
        _finite("eps_ramp_epochs", self.eps_ramp_epochs, low=0.0)
        _choice("eps_schedule", self.eps_schedule, RAMPS)
        _choice("beta_schedule", self.beta_schedule, RAMPS)
        _choice("kappa_schedule", self.kappa_schedule, RAMPS)
        for name in ("beta_start", "beta_end", "kappa_start", "kappa_end"):
            _finite(name, getattr(self, name), low=0.0, high=1.0)
        _integer("epochs", self.epochs, low=1)
        _integer("batch_size", self.batch_size, low=1)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _finite("lr", self.lr, low=0.0, strict=True)
        _finite("momentum", self.momentum, low=0.0, high=1.0)
        _finite("weight_decay", self.weight_decay, low=0.0)
        for m in self.lr_milestones:
            _finite("lr_milestones entry", m, low=0.0)
        if list(self.lr_milestones) != sorted(self.lr_milestones):
            raise ValueError(f"lr_milestones must be increasing, got {list(self.lr_milestones)}")
        _finite("lr_decay", self.lr_decay, low=0.0, high=1.0, strict=True)
        _finite("grad_clip", self.grad_clip, low=0.0)
        _finite("sabr_lambda", self.sabr_lambda, low=0.0, high=1.0, strict=True)
        _finite("mtl_alpha", self.mtl_alpha, low=0.0, high=1.0)
        if self.attack_steps is not None:
            _integer("attack_steps", self.attack_steps, low=1)
        _choice("init", self.init, INITS)
        if not isinstance(self.warmup_reg, bool):
            raise ValueError(f"warmup_reg must be true or false, got {self.warmup_reg!r}")
        _finite("warmup_reg_lambda", self.warmup_reg_lambda, low=0.0)
        _finite("warmup_reg_tol", self.warmup_reg_tol, low=0.0, strict=True)
        if self.warmup_reg and self.method == "natural":
            raise ValueError(
                "warmup_reg regularises a bound; natural training has none (drop --warmup-reg)"
            )

    def _validate_run_options(self) -> None:
        """Seed, probes, data subsets and folder, flags, device, recording and checkpoint
        intervals, and the slope search."""
        _integer("seed", self.seed, low=0, high=MAX_SEED)
        _integer("probe_batches", self.probe_batches, low=1)
        _integer("random_crop", self.random_crop, low=0)
        for name in (
            "fused_loss",
            "fused_ramp",
            "normalize_inputs",
            "bounded_input",
            "probe_fresh_slopes",
            "probe_hessian",
            "compile",
            "random_flip",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("train_size", "test_size"):
            if getattr(self, name) is not None:
                _integer(name, getattr(self, name), low=1)
        if self.data_dir is not None and (not isinstance(self.data_dir, str) or not self.data_dir):
            raise ValueError(f"data_dir must be a folder name, got {self.data_dir!r}")
        if (self.fused_loss or self.fused_ramp) and self.method == "natural":
            raise ValueError(
                "fused_loss and fused_ramp bound a certified loss; natural training has none (drop "
                "--fused-loss, --fused-ramp)"
            )
        if not isinstance(self.device, str) or not self.device.startswith(DEVICES_PREFIX):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        _integer("record_every", self.record_every, low=1)
        for name in (
            "grad_every",
            "probe_every",
            "eval_size",
            "opt_steps",
            "checkpoint_every_steps",
        ):
            _integer(name, getattr(self, name), low=0)
        _finite("opt_lr", self.opt_lr, low=0.0, strict=True)

    # ------------------------------------------------------------------ derived values
    def fused_at(self, eps: float) -> bool | str:
        """The ``fused`` argument of :func:`train.objective.certified_loss` at radius ``eps``:
        ``"min"`` while ``eps < self.eps`` under ``fused_ramp``, else ``fused_loss``."""
        return "min" if self.fused_ramp and float(eps) < self.eps else self.fused_loss

    @property
    def resolved_slope(self) -> str:
        """The lower-slope policy actually used."""
        return names.resolve_method(self.method, self.slope, 1.0)[1]

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a dict; unknown keys are an error (they are usually typos).

        Keys may use dashes or underscores (``lr-milestones`` == ``lr_milestones``).
        """
        if not isinstance(data, Mapping):
            raise ValueError(
                f"a training config must be a mapping of names to values, got {type(data).__name__}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        clean: dict[str, Any] = {}
        for key, value in data.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise ValueError(
                    f"unknown training config key {key!r} (known: {', '.join(sorted(known))})"
                )
            clean[name] = value
        try:
            return cls(**clean)
        except TypeError as exc:  # e.g. a list where a number belongs
            raise ValueError(f"bad training config value: {exc}") from None

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some fields changed."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def identity(self) -> dict[str, Any]:
        """The fields that define what the run computes (see :data:`NON_IDENTITY_FIELDS`)."""
        return {k: v for k, v in self.to_dict().items() if k not in NON_IDENTITY_FIELDS}


def run_domain(config: TrainConfig | Mapping[str, Any], spec: Any) -> tuple[float, float] | None:
    """The box the eps-ball of a run is clipped to: the dataset's pixel range ``spec.domain``,
    or None when the run's config says ``bounded_input: false``."""
    bounded = (
        config.bounded_input
        if isinstance(config, TrainConfig)
        else bool(config.get("bounded_input", True))
    )
    return tuple(getattr(spec, "domain", (0.0, 1.0))) if bounded else None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or JSON file into a dict of config values; the
    ``reproduce:`` section of a reproduction setting (``configs/*.yaml``) is left out."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {str(p)!r} does not exist")
    text = p.read_text()
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError
        raise ValueError(
            f"config file {str(p)!r} is not valid {p.suffix.lstrip('.') or 'JSON'}: {exc}"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(p)!r} must hold a mapping of option names to values")
    data.pop("reproduce", None)  # a reproduction setting's own section (configs/*.yaml)
    return data


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> TrainConfig:
    """Config from a file (optional) with ``overrides`` (``None`` values ignored) on top."""
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    return TrainConfig.from_dict(data)


# ---------------------------------------------------------------------- helpers
def _choice(name: str, value: Any, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(options)}")


def _finite(
    name: str, value: Any, low: float | None = None, high: float | None = None, strict: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value < low or (strict and value == low)):
        rel = ">" if strict else ">="
        raise ValueError(f"{name} must be {rel} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")


def _integer(name: str, value: Any, low: int | None = None, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
