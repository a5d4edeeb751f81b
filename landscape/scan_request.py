"""The :class:`ScanRequest`: everything that defines a scan, one field per option of
``landscape scan``.

Each field carries its command-line face in its metadata (:class:`Cli`: the help text, the
flag where it is not ``--<name>``, the choices or bounds of its values), so
:mod:`landscape.cmd_scan` builds its options from the fields and their defaults, as ``train``
builds its own from :class:`train.config.TrainConfig`. Click stays out of this module: the
request is what :func:`landscape.scan_runner.run_scan` takes, from the command line or not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.names import DIRECTION_NORMS, SCAN_KINDS, SCAN_LOSSES, SLOPES, TRAIN_METHODS

__all__ = ["ScanRequest", "Cli", "cli_of", "flag_of"]


@dataclass(frozen=True)
class Cli:
    """How a request field shows on the command line: ``help``; ``flag`` (default
    ``--<name>``; ``--a/--b`` for an on/off pair); ``type`` of the value (``str``, ``int``,
    ``float``; ``bool`` fields are flags); ``choices``; ``low``/``high`` bounds of an integer;
    ``path``: a file name; ``listed``: a comma-separated list (the default joined by commas);
    ``metavar``: the placeholder of its value in ``--help``."""

    help: str = ""
    flag: str | None = None
    type: type = str
    choices: Sequence[str] | None = None
    low: int | None = None
    high: int | None = None
    path: bool = False
    listed: bool = False
    metavar: str | None = None


def _opt(default: Any, help: str = "", **cli: Any) -> Any:
    """A request field with default ``default`` and its command-line face (:class:`Cli`)."""
    factory = isinstance(default, (list, dict))
    value = {"default_factory": lambda: type(default)(default)} if factory else {"default": default}
    return field(**value, metadata={"cli": Cli(help=help, **cli)})


def cli_of(f: dataclasses.Field) -> Cli | None:
    """The command-line face of a request field (None: not an option)."""
    return f.metadata.get("cli")


def flag_of(name: str) -> str:
    """The option that sets field ``name``: ``--to`` for ``to_checkpoint``, ``--top-k`` for
    ``top_k`` (the first of an on/off pair)."""
    f = next(f for f in dataclasses.fields(ScanRequest) if f.name == name)
    cli = cli_of(f)
    flag = cli.flag if cli is not None and cli.flag else "--" + name.replace("_", "-")
    return flag.split("/")[0]


_KINDS = "; ".join(f"{k}: {v.summary}" for k, v in SCAN_KINDS.items())
_H = "hessian: "


@dataclass
class ScanRequest:
    """Everything that defines a scan (the options of ``landscape scan``; each field's help is
    in its metadata, :class:`Cli`).

    ``methods``: the losses scanned over the same points (default: the checkpoint's method, or
    ``loss`` when it is ``clean`` / ``pgd``). ``eps``, ``beta``, ``kappa`` default to the
    checkpoint's final training values, ``lr`` to its learning rate. ``data``: an already
    loaded dataset of the checkpoint (else loaded here). ``keep_bias``: whether biases move
    (default: the kind's own, :meth:`landscape.scan_kinds.base.KindRunner.moves_bias`). ``top_k``
    to ``layers``: the work of a Hessian scan (None: the defaults of
    :class:`landscape.spectrum.SpectrumOptions`). ``compile``: certified losses run the
    engine's compiled kernels (not part of the arguments a file records). ``command``: the
    command line recorded in the file.
    """

    checkpoint: str
    out: str = field(metadata={"cli": Cli("Results file (.h5); resumed if it exists.", path=True)})
    kind: str = _opt("gradient", f"What to scan: {_KINDS}.", choices=tuple(SCAN_KINDS))
    to_checkpoint: str | None = _opt(
        None, "Second checkpoint (interpolate).", flag="--to", path=True
    )
    methods: Sequence[str] | None = _opt(
        None,
        "Comma-separated losses scanned over the same points: training methods "
        f"({', '.join(TRAIN_METHODS)}) or {', '.join(SCAN_LOSSES)}; a gradient scan moves each "
        "along its own gradient (see --direction-from). [default: the checkpoint's method]",
        listed=True,
    )
    direction_from: str | None = _opt(
        None,
        "gradient: move every loss of --methods along this one's gradient (a shared direction) "
        "[default: each loss along its own gradient].",
        metavar="METHOD",
    )
    slope_path: str | Sequence[str] | None = _opt(
        None,
        "slopes: the lower-slope policies the path runs through, comma-separated, at least two "
        f"of {', '.join(SLOPES)} (a policy named again: another random draw) "
        "[default: zero,adaptive,tightest].",
        metavar="POLICIES",
    )
    loss: str = _opt(
        "certified", "Loss kind when --methods is not given.", choices=("certified", *SCAN_LOSSES)
    )
    eps: float | None = _opt(
        None, "Radius of the certified/PGD loss [default: the final training eps].", type=float
    )
    beta: float | None = _opt(
        None, "CROWN-IBP mixing weight [default: the final training beta].", type=float
    )
    kappa: float | None = _opt(
        None, "Clean-loss weight [default: the final training kappa].", type=float
    )
    slope: str | None = _opt(
        None, "Lower-slope policy (see common.names.SLOPES) [default: each method's own]."
    )
    samples: int | str = _opt(
        100, "Fixed samples the loss is computed on: a number, or 'all' (the whole split)."
    )
    batch_size: int | None = _opt(
        None,
        "Evaluate the losses, gradients and Hessian-vector products over mini-batches of this "
        "many samples, accumulated, so memory does not grow with --samples [default: one batch].",
        type=int,
        low=1,
    )
    split: str = _opt("train", "", choices=("train", "test"))
    seed: int = _opt(
        0, "Seeds samples, directions, random slopes.", type=int, low=0, high=2**63 - 1
    )
    points: int | None = _opt(
        None,
        "Points per axis [gradient: 10 log-spaced t (plus 0 and 1); random, pca, slopes: 21; "
        "interpolate: 41].",
        type=int,
        low=1,
    )
    range: str | Sequence[float] | None = _opt(
        None,
        "'a,b' coefficient range [random: -1,1; interpolate: -0.5,1.5; pca: each axis covers "
        "the trajectory with a 10% margin].",
    )
    t_min: float = _opt(0.5, "Smallest t > 0 of the gradient scan.", type=float)
    t_max: float = _opt(5.0, "Largest t of the gradient scan.", type=float)
    lr: float | None = _opt(
        None, "Step scale of the gradient scan [default: the training lr].", type=float
    )
    norm: str = _opt("filter", "Normalisation of random directions.", choices=DIRECTION_NORMS)
    keep_bias: bool | None = _opt(
        None,
        "Move biases along random or PCA directions, or not [default: zeroed for random "
        "directions, kept for PCA ones].",
        flag="--keep-bias/--zero-bias",
        type=bool,
    )
    trajectory: str | Sequence[str] | None = _opt(
        None,
        "pca: the checkpoints of the trajectory, a glob such as 'runs/a/checkpoint_step*.pt' or "
        "a run directory [default: the checkpoint_epoch*.pt and checkpoint_step*.pt beside "
        "CHECKPOINT]; the trajectory ends at CHECKPOINT.",
    )
    center: bool = _opt(
        False,
        "pca: centre the checkpoints' differences before the SVD (as scikit-learn's PCA does) "
        "[default: not, as Li et al.'s text].",
        type=bool,
    )
    top_k: int | None = _opt(
        None, _H + "how many of the largest eigenvalues [default: 5].", type=int
    )
    lanczos_steps: int | None = _opt(
        None,
        _H + "Lanczos steps for the top eigenvalues [default: max(2k + 20, 40)].",
        type=int,
    )
    trace_samples: int | None = _opt(
        None, _H + "Rademacher vectors of Hutchinson's trace estimate [default: 100].", type=int
    )
    density_runs: int | None = _opt(
        None, _H + "SLQ runs of the spectral density [default: 10].", type=int
    )
    density_steps: int | None = _opt(
        None, _H + "Lanczos steps per SLQ run [default: 40].", type=int
    )
    density_sigma: float | None = _opt(
        None,
        _H + "Gaussian width of the density, relative to the spread of the eigenvalues "
        "[default: 0.01].",
        type=float,
    )
    density_points: int | None = _opt(
        None, _H + "grid points of the density [default: 1000].", type=int
    )
    layers: bool | None = _opt(
        None,
        _H + "also the top eigenvalues and trace of each layer's block of the Hessian "
        "[default: on].",
        flag="--layers/--no-layers",
        type=bool,
    )
    fields: Sequence[str] | None = _opt(
        None,
        "random, interpolate, pca: also store at every point the errors named here, of "
        "clean_err, pgd_err, verified_err (the union of --verify-methods' bounds), on the "
        "scan's samples at its eps.",
    )
    verify_methods: Sequence[str] = _opt(
        ("ibp", "crown-ibp"),
        "The bounds whose union certifies a sample for --fields verified_err.",
        listed=True,
    )
    hessian: bool = _opt(
        False,
        "Also store the Hessian eigenvalue of largest magnitude of each loss at the checkpoint "
        "(Lanczos).",
        type=bool,
    )
    metrics: bool = _opt(
        True,
        "Gradient scans: sign changes (a_sign, sign_flip) of the bound coefficients.",
        flag="--metrics/--no-metrics",
        type=bool,
    )
    pgd_steps: int = _opt(
        10, "PGD steps of the pgd loss (recomputed at every point).", type=int, low=1
    )
    fused: bool = _opt(False, "Use the fused certified loss.", type=bool)
    batch_points: int | None = _opt(
        None,
        "Grid points per torch.func.vmap pass of the losses vmap can batch (clean, IBP, "
        "CROWN-IBP with fixed slopes; the others loop) [default: 16 on CUDA, 1 on CPU, where "
        "vmap measured slower].",
        type=int,
        low=1,
    )
    compile: bool = _opt(
        False,
        "Run the bound engine's element-wise steps as compiled kernels (cached on disk; the "
        "first run of a model compiles for a while).",
        type=bool,
    )
    device: str = _opt("cpu", "cpu, cuda or cuda:N.")
    data_dir: str | None = _opt(None, "Dataset folder [default: the checkpoint's].", path=True)
    download: bool = _opt(
        False, "Fetch a missing dataset from its official source (needs a network).", type=bool
    )
    dataset: str | None = _opt(
        None,
        "The dataset code (FILE.py:function) the checkpoint names, named again to allow "
        "importing it.",
    )
    trust_code: bool = _opt(
        False,
        "Import and run the dataset code the checkpoint names (a checkpoint's code runs only "
        "with this or --dataset naming it).",
        type=bool,
    )
    command: str | None = None
    data: Any = field(default=None, repr=False)

    def loss_specs(
        self, cfg: Mapping[str, Any], eps: float, domain: Sequence[float] | None
    ) -> list[Any]:
        """One :class:`landscape.scan_losses.LossSpec` per scanned loss, with the checkpoint's
        final training values (config ``cfg``) where the request leaves them open."""
        from landscape.scan_losses import LossSpec
        from train.objective import LossOptions

        if self.methods is not None:
            labels = [m.strip() for m in self.methods]
        else:
            labels = [self.loss if self.loss != "certified" else cfg.get("method", "ibp")]
        if not labels or any(not n for n in labels) or len(set(labels)) != len(labels):
            raise ValueError(
                f"--methods: expected distinct comma-separated names, got {','.join(labels)!r}"
            )
        specs = []
        for name in labels:
            kind = name if name in SCAN_LOSSES else "certified"
            own = name == cfg.get("method")
            slope = self.slope if self.slope is not None else (cfg.get("slope") if own else None)
            beta = self.beta if self.beta is not None else float(cfg.get("beta_end", 1.0))
            info = TRAIN_METHODS.get(name)
            if info is not None and info.beta is not None:
                beta = info.beta
            if info is not None and info.slope is not None and slope == info.slope:
                slope = None
            kappa = self.kappa if self.kappa is not None else float(cfg.get("kappa_end", 0.0))
            options = LossOptions.of(cfg).for_method(name) if kind == "certified" else {}
            specs.append(
                LossSpec(
                    kind=kind,
                    method=name if kind == "certified" else "ibp",
                    slope=slope,
                    beta=beta,
                    kappa=kappa,
                    eps=float(eps),
                    domain=None if domain is None else (float(domain[0]), float(domain[1])),
                    fused=bool(self.fused and kind == "certified"),
                    pgd_steps=int(self.pgd_steps),
                    seed=int(self.seed),
                    options=tuple(options.items()),
                )
            )
        return specs
