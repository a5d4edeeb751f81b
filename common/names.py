"""Every name the toolkit knows, in one table that every layer imports.

Bound methods, lower-slope policies, training methods (and how each maps to a bound method,
slope and beta), scan kinds, the labels a scan or a figure can carry, result-file kinds,
reproduction profiles and the toolkit's version are written down here once. The module
imports nothing but the standard library, so the command line can list choices and
``figures`` can name methods without loading torch. It lives in the ground floor
(:mod:`common`), which every package may import and which imports none of them.

Adding a lower-slope policy: write its function in :mod:`bounds.relaxations`, add it to that
module's ``POLICIES`` table and put its name and a one-line description in :data:`SLOPES`
below; every layer (config, command line, scans, the bound tests) picks it up from here.
"""

from __future__ import annotations

from dataclasses import dataclass

VERSION = "0.1.0"
"""The toolkit's version (``setup.cfg`` reads it from here)."""

# ----------------------------------------------------------------------------- the bound engine

BOUND_METHODS: dict[str, str | None] = {
    "ibp": None,
    "crown-ibp": None,
    "crown": None,
    "cap": "same-slope",
}
"""Methods of :func:`bounds.compute_bounds`, each with the one slope policy it is tied to
(None: any policy). Also the verification methods of ``landscape certify``."""

CERTIFY_METHODS: tuple[str, ...] = ("ibp", "crown-ibp", "crown")
"""The bound methods a certification uses by default (a sample is verified if one of them
verifies it)."""

ATTACKS: dict[str, str] = {
    "pgd": "the toolkit's own L-inf PGD on the margin (train.attacks.pgd_attack)",
    "autoattack": "AutoAttack (APGD-CE, APGD-T, FAB-T, Square) of the Adversarial Robustness Toolbox",
    "apgd-ce": "APGD on the cross-entropy, Adversarial Robustness Toolbox",
    "apgd-t": "targeted APGD on the difference-of-logits ratio, Adversarial Robustness Toolbox",
}
"""Attacks ``landscape certify --attack`` runs beside the toolkit's PGD (name -> what it is)."""

SLOPES: dict[str, str] = {
    "adaptive": "a = 1 if u >= -l else 0 (CROWN's choice, the lower line of smaller area)",
    "zero": "a = 0",
    "one": "a = 1",
    "same-slope": "a = u / (u - l), parallel to the upper line (Fast-Lin / CAP)",
    "uniform": "a ~ U[0, 1] per neuron and sample",
    "binary": "a ~ Bernoulli(1/2) per neuron and sample",
    "optimized": "a optimised by projected Adam on the bound (alpha-CROWN style)",
    "tightest": "from a random start, a = 1 where the loss falls with a, 0 where it rises (Lee et al. 2021)",
}
"""Lower-slope policies ``a`` of ``relu(z) >= a z`` on unstable neurons (name -> rule); the keys
equal those of ``bounds.relaxations.POLICIES``, in the same order."""

SEARCHED_SLOPES: tuple[str, ...] = ("optimized", "tightest")
"""Policies whose slopes are searched for each bound (:mod:`bounds.slope_search`)."""

FIXED_SLOPES: tuple[str, ...] = ("adaptive", "zero", "one", "same-slope")
"""Policies whose slopes are a function of the pre-activation bounds alone (no search, no
random draw): the relaxations the paper's relaxed-gradient analysis compares."""

DEFAULT_SLOPE = "adaptive"

DEFAULT_SLOPE_PATH: tuple[str, ...] = ("zero", "adaptive", "tightest")
"""The policies a ``scan --kind slopes`` runs through without ``--slope-path``: from the loosest
fixed lines over CROWN's choice to the paper's tightest slopes."""


def bound_slope(method: str, slope: str | None) -> str:
    """Validate a bound method and slope policy; returns the policy to use (the method's own
    one, or ``adaptive``, when ``slope`` is None). ValueError names the bad value."""
    if method not in BOUND_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(BOUND_METHODS)}")
    tied = BOUND_METHODS[method]
    if slope is None:
        return tied or DEFAULT_SLOPE
    if slope not in SLOPES:
        raise ValueError(f"unknown slope {slope!r}; choose one of {', '.join(SLOPES)}")
    if tied is not None and slope != tied:
        raise ValueError(f"method {method!r} uses the {tied} relaxation only, got slope {slope!r}")
    return slope


def engine_method(method: str, slope: str, beta: float) -> tuple[str, str, float]:
    """The bound the engine computes for a validated ``(method, slope, beta)``: ``cap`` is
    CROWN-IBP with the same-slope lines at beta = 1 (the bound the training method ``cap``
    minimises); every other method is itself. The one place this rule is written."""
    if method == "cap":
        return "crown-ibp", "same-slope", 1.0
    return method, slope, beta


# ----------------------------------------------------------------------------- training methods


@dataclass(frozen=True)
class TrainMethod:
    """A training method: the bound it minimises. ``bound`` is a :data:`BOUND_METHODS` key
    (None: natural training); ``slope`` the policy it is tied to (None: any, default
    ``adaptive``); ``beta`` a CROWN-IBP mixing weight it fixes (None: the schedule's);
    ``attack``: its loss runs a PGD attack at every evaluation (``train.mixed_losses``), so a
    scan cannot batch it under ``vmap`` and seeds the attack's start to repeat it."""

    name: str
    bound: str | None
    slope: str | None = None
    beta: float | None = None
    summary: str = ""
    attack: bool = False


TRAIN_METHODS: dict[str, TrainMethod] = {
    m.name: m
    for m in (
        TrainMethod("natural", None, summary="clean cross-entropy, no bound"),
        TrainMethod("ibp", "ibp", summary="interval bound propagation (Gowal et al. 2018)"),
        TrainMethod(
            "crown-ibp",
            "crown-ibp",
            summary="IBP intermediate bounds, one CROWN pass (Zhang et al. 2020)",
        ),
        TrainMethod("crown", "crown", summary="CROWN bounds for every layer"),
        TrainMethod(
            "cap",
            "crown-ibp",
            "same-slope",
            1.0,
            summary="CROWN-IBP with the same-slope lower lines u/(u-l), beta = 1: CAP as Lee et al. "
            "(2021) compare it (full CROWN with same slopes is crown --slope same-slope)",
        ),
        TrainMethod(
            "tightest",
            "crown-ibp",
            "tightest",
            1.0,
            summary="CROWN-IBP with the tightest lower slopes, beta = 1 (Lee et al. 2021)",
        ),
        TrainMethod(
            "sabr",
            "ibp",
            attack=True,
            summary="IBP on a small box B(x', lambda eps) around a PGD point x' (Mueller et al. 2023)",
        ),
        TrainMethod(
            "mtl-ibp",
            "ibp",
            attack=True,
            summary="(1 - alpha) CE at a PGD point + alpha IBP robust CE (De Palma et al. 2024)",
        ),
    )
}
"""Training methods, by name."""


def resolve_method(method: str, slope: str | None, beta: float) -> tuple[str | None, str, float]:
    """A training method's ``(bound method, slope policy, beta)``; the bound method is None for
    ``natural``. ``slope`` None means the method's own policy (else ``adaptive``). ValueError
    for an unknown method or slope, or a slope the method does not allow."""
    if method not in TRAIN_METHODS:
        raise ValueError(
            f"unknown training method {method!r}; choose one of {', '.join(TRAIN_METHODS)}"
        )
    info = TRAIN_METHODS[method]
    if slope is not None and slope not in SLOPES:
        raise ValueError(f"unknown slope {slope!r}; choose one of {', '.join(SLOPES)}")
    if info.slope is not None and slope not in (None, info.slope):
        raise ValueError(
            f"method {method!r} fixes the slope to {info.slope!r}, got slope {slope!r}"
        )
    used = slope if slope is not None else (info.slope or DEFAULT_SLOPE)
    return info.bound, used, float(beta if info.beta is None else info.beta)


def default_slope(method: str) -> str:
    """The lower-slope policy a training method uses when none is given."""
    return resolve_method(method, None, 1.0)[1]


PAPER_METHODS: tuple[str, ...] = ("ibp", "crown-ibp", "cap", "tightest")
"""The methods Lee et al. (2021) compare, which ``landscape reproduce`` trains."""

# ----------------------------------------------------------------------------- scans and results


@dataclass(frozen=True)
class ScanKind:
    """A kind of scan, its one entry: what it moves along (``summary``), its grid's default
    number of points per axis and coefficient range (None: not a range, or set by the data, as
    the trajectory sets a PCA scan's), what its axis means in a figure, its number of grid axes
    (0: no grid, one record per scanned loss, as the Hessian's spectrum), and where its two
    halves live, by name, so that this table stays free of torch and matplotlib: ``runner``,
    the module computing it (its ``KIND``, a ``landscape.scan_kinds.base.KindRunner``; or
    ``module:attribute``), and ``figure``, the ``module:function`` drawing its records (1D
    kinds; empty: the drawing of its number of axes). Adding a kind: ``docs/design.md``."""

    summary: str
    points: int
    range: tuple[float, float] | None
    axis: str
    dims: int = 1
    runner: str = ""
    figure: str = ""


SCAN_KINDS: dict[str, ScanKind] = {
    "gradient": ScanKind(
        "theta_t = theta - t lr grad L at t in {0, 1} and log-spaced t",
        10,
        None,
        "step size t along −∇L (× learning rate)",
        runner="landscape.scan_kinds.gradient",
        figure="figures.curves:plot_gradient_scans",
    ),
    "random-1d": ScanKind(
        "theta + x d along one normalised random direction",
        21,
        (-1.0, 1.0),
        "distance along the random direction (× direction)",
        runner="landscape.scan_kinds.random",
    ),
    "random-2d": ScanKind(
        "theta + x d_x + y d_y on a grid of two random directions",
        21,
        (-1.0, 1.0),
        "coefficients of the two random directions",
        dims=2,
        runner="landscape.scan_kinds.random",
    ),
    "interpolate": ScanKind(
        "theta_1 + alpha (theta_2 - theta_1) between two checkpoints",
        41,
        (-0.5, 1.5),
        "interpolation α (0 = first checkpoint, 1 = second)",
        runner="landscape.scan_kinds.interpolate",
        figure="figures.curves:plot_interpolations",
    ),
    "pca": ScanKind(
        "theta + x d_1 + y d_2 on a grid of the top two principal directions of the training "
        "trajectory",
        21,
        None,
        "coordinates along the trajectory's two principal directions",
        dims=2,
        runner="landscape.scan_kinds.pca",
    ),
    "slopes": ScanKind(
        "at fixed theta, the certified loss with lower slopes a(s) = (1 - f) a_k + f a_(k+1) "
        "(k = floor(s), f = s - k) between the policies of --slope-path",
        21,
        None,
        "slope path s (s = k: the k-th policy of the path)",
        runner="landscape.scan_kinds.slopes",
        figure="figures.slopes:plot_slope_paths",
    ),
    "hessian": ScanKind(
        "the Hessian at theta: top eigenvalues (Lanczos), trace (Hutchinson) and spectral density "
        "(SLQ)",
        0,
        None,
        "eigenvalue of the Hessian",
        dims=0,
        runner="landscape.scan_kinds.hessian",
    ),
}
"""What ``landscape scan --kind`` can scan."""

DIRECTION_NORMS: tuple[str, ...] = ("filter", "layer", "none")
"""How a random direction is scaled (Li et al. 2018): per filter, per layer, or not at all."""

SCAN_LOSSES: tuple[str, ...] = ("clean", "pgd")
"""Losses a scan can look at besides the certified loss of a training method."""

FILE_KINDS: tuple[str, ...] = (*SCAN_KINDS, "train", "certify")
"""The ``kind`` root attribute of every result file the toolkit writes."""


@dataclass(frozen=True)
class Label:
    """How figures and tables show a method or scanned loss: display name and colour."""

    display: str
    colour: str


LABELS: dict[str, Label] = {
    "natural": Label("Natural", "#7f7f7f"),
    "clean": Label("Clean", "#7f7f7f"),
    "pgd": Label("PGD", "#8c564b"),
    "ibp": Label("IBP", "#1f77b4"),
    "crown-ibp": Label("CROWN-IBP", "#ff7f0e"),
    "crown": Label("CROWN", "#9467bd"),
    "cap": Label("CAP", "#2ca02c"),
    "tightest": Label("Tightest", "#d62728"),
    "sabr": Label("SABR", "#17becf"),
    "mtl-ibp": Label("MTL-IBP", "#bcbd22"),
}
"""Every label a figure can carry, in the order legends and tables list them."""
