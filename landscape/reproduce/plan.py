"""The plan of ``landscape reproduce``: which runs, on which data, with which settings, fixed
before any work starts.

Every setting is a YAML file under ``configs/`` (more folders with ``$LANDSCAPE_CONFIGS``): the
keys of a training config at the top (``landscape train --config FILE --method M`` trains one
of its runs) and a ``reproduce:`` section that says which profile it belongs to and how its
runs are certified and scanned. A profile is the set of files that name it: ``tiny`` (a smoke
test on digits), ``quick`` (a few minutes on a 2-core CPU: a Fashion-MNIST subset when its files
are present, else digits), ``official-short`` (a CPU-sized run of the paper code's protocol on
Fashion-MNIST: its optimiser, batch, bound settings and probe on model_small for 1,500 steps at
eps 0.1), ``paper`` (the paper code's MNIST, CIFAR-10 and SVHN settings item by item, for a
GPU), and ``modern`` (IBP, CROWN-IBP,
tightest, SABR and MTL-IBP on a Fashion-MNIST subset). A setting's ``methods:`` list says what
it trains (default: the methods Lee et al. (2021) compare, :data:`common.names.PAPER_METHODS`);
``--methods`` picks any training method with a bound instead.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from common.names import PAPER_METHODS, TRAIN_METHODS
from landscape.reproduce.claims import Margins

__all__ = [
    "Setting",
    "RunPlan",
    "Plan",
    "config_dirs",
    "load_settings",
    "profile_names",
    "make_plan",
    "describe_plan",
]

CONFIGS_ENV = "LANDSCAPE_CONFIGS"
"""Environment variable naming more folders of setting files (``os.pathsep``-separated)."""


def config_dirs() -> list[Path]:
    """Folders searched for setting files: ``$LANDSCAPE_CONFIGS``, the checkout's ``configs/``
    and the installed copy under ``<prefix>/share/cert-landscape/configs``."""
    dirs = [
        Path(p).expanduser() for p in os.environ.get(CONFIGS_ENV, "").split(os.pathsep) if p.strip()
    ]
    dirs += [
        Path(__file__).resolve().parents[2] / "configs",
        Path(sys.prefix) / "share" / "cert-landscape" / "configs",
    ]
    return [d for i, d in enumerate(dirs) if d.is_dir() and d not in dirs[:i]]


@dataclass(frozen=True)
class Setting:
    """One setting of a profile: its training config (without a method) and how its runs are
    probed, certified and scanned (the ``reproduce:`` section of its file)."""

    name: str
    profile: str
    path: Path
    train: dict
    default: bool = False
    probe_t: list[float] | None = None
    certify_eps: list[float] = field(default_factory=list)
    certify_size: int = 500
    certify_methods: tuple[str, ...] = ("ibp", "crown-ibp")
    pgd_steps: int = 20
    tight_samples: int = 256
    scan_samples: int = 200
    scan_points_gradient: int = 10
    scan_points_1d: int = 21
    scan_points_2d: int = 11
    scan_range: float = 1.0
    scan_hessian: dict | None = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    methods: tuple[str, ...] = PAPER_METHODS
    margins: Margins = field(default_factory=Margins)
    slurm: dict = field(default_factory=dict)

    @property
    def dataset(self) -> str:
        return str(self.train["dataset"])


HESSIAN_KEYS = (
    "top_k",
    "lanczos_steps",
    "trace_samples",
    "density_runs",
    "density_steps",
    "layers",
)
"""What a setting's ``scan: hessian:`` may change of the Hessian scan's work
(:data:`landscape.reproduce.steps.HESSIAN_WORK`)."""


def _hessian_work(given: Any) -> dict | None:
    """A setting's ``scan: hessian:``: ``false`` (no Hessian scan: for models whose Hessian-vector
    products are too slow for the machine), or a mapping of :data:`HESSIAN_KEYS` overriding the
    default work; ValueError for anything else."""
    if given is False:
        return None
    if given is None or given is True:
        return {}
    if not isinstance(given, dict):
        raise ValueError(f"scan.hessian must be false or a mapping, got {given!r}")
    unknown = sorted(set(given) - set(HESSIAN_KEYS))
    if unknown:
        raise ValueError(f"scan.hessian: unknown keys {unknown}; known: {list(HESSIAN_KEYS)}")
    out: dict[str, Any] = {}
    for key, value in given.items():
        if key == "layers":
            if not isinstance(value, bool):
                raise ValueError(f"scan.hessian.layers must be true or false, got {value!r}")
            out[key] = value
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"scan.hessian.{key} must be a whole number >= 1, got {value!r}")
        else:
            out[key] = value
    return out


def _setting(path: Path) -> Setting | None:
    """The setting a YAML file describes (None for a file without a ``reproduce:`` section)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"setting file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("reproduce"), dict):
        return None
    rep = dict(data.pop("reproduce"))
    name = rep.get("setting")
    if (
        not isinstance(name, str)
        or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name)
        or ".." in name
    ):
        raise ValueError(
            f"setting file {path}: reproduce.setting must be a plain name (letters, digits, '.', '_', "
            f"'-'; it names folders under --out), got {name!r}"
        )
    cert, scan = dict(rep.get("certify") or {}), dict(rep.get("scan") or {})
    from train.config import TrainConfig

    try:  # the training part, as `train --config` reads it: typos and bad values named now
        TrainConfig.from_dict(data)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"setting file {path}: {exc}") from None
    try:
        return Setting(
            name=str(rep["setting"]),
            profile=str(rep["profile"]),
            path=path,
            train=data,
            default=bool(rep.get("default", False)),
            probe_t=rep.get("probe_t"),
            certify_eps=[float(e) for e in cert.get("eps", [data.get("eps", _default_eps())])],
            certify_size=int(cert.get("size", 500)),
            certify_methods=tuple(cert.get("methods", ("ibp", "crown-ibp"))),
            pgd_steps=int(cert.get("pgd_steps", 20)),
            tight_samples=int(cert.get("tightness_samples", 256)),
            scan_samples=int(scan.get("samples", 200)),
            scan_points_gradient=int(scan.get("points_gradient", 10)),
            scan_points_1d=int(scan.get("points_1d", 21)),
            scan_points_2d=int(scan.get("points_2d", 11)),
            scan_range=float(scan.get("range", 1.0)),
            scan_hessian=_hessian_work(scan.get("hessian", {})),
            notes=[" ".join(str(n).split()) for n in rep.get("notes", [])],
            methods=tuple(str(m) for m in rep.get("methods", PAPER_METHODS)),
            margins=Margins.from_dict(rep.get("claims")),
            slurm=dict(rep.get("slurm") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"setting file {path}: bad reproduce section ({exc})") from None


def _default_eps() -> float:
    from train.config import TrainConfig

    return float(TrainConfig.eps)


def load_settings() -> list[Setting]:
    """Every setting of every profile, in file-name order (the first folder wins a name)."""
    seen: dict[str, Setting] = {}
    for folder in config_dirs():
        for path in sorted(folder.glob("*.yaml")):
            if path.name not in seen:
                setting = _setting(path)
                if setting is not None:
                    seen[path.name] = setting
    return list(seen.values())


def profile_names() -> list[str]:
    """The profiles the setting files define."""
    return list(dict.fromkeys(s.profile for s in load_settings()))


@dataclass
class RunPlan:
    """One training run: its setting, method, seed and full config (whose ``probe_every``
    says how often it is probed)."""

    setting: str
    method: str
    config: dict
    seed: int = 0

    @property
    def key(self) -> str:
        return f"{self.setting}/seed{self.seed}/{self.method}"

    @property
    def probe_every(self) -> int:
        return int(self.config.get("probe_every", 0))

    def run_dir(self, out: Path) -> Path:
        """Where the run lives under the output folder ``out``."""
        return Path(out) / "runs" / self.setting / f"seed{self.seed}" / self.method

    def scan_dir(self, out: Path) -> Path:
        return Path(out) / "scans" / self.setting / f"seed{self.seed}"


@dataclass
class Plan:
    """Everything ``reproduce`` will do, fixed before any work starts."""

    profile: str
    device: str
    runs: list[RunPlan]
    settings_by_name: dict[str, Setting]
    seeds: list[int]
    test_selected: bool = False

    def settings(self) -> list[str]:
        return list(dict.fromkeys(r.setting for r in self.runs))

    def setting(self, name: str) -> Setting:
        return self.settings_by_name[name]

    @property
    def notes(self) -> list[str]:
        return list(dict.fromkeys(n for s in self.settings_by_name.values() for n in s.notes))


def _available(dataset: str, data_dir: str | Path | None) -> bool:
    """True when ``dataset``'s files can be found without downloading."""
    from train.data import load_dataset

    try:
        load_dataset(dataset, data_dir=data_dir, download=False, train_size=20, test_size=20)
    except ValueError:
        return False
    return True


def make_plan(
    profile: str,
    device: str = "cpu",
    data_dir: str | Path | None = None,
    methods: Sequence[str] | None = None,
    dataset: str | None = None,
    seeds: Sequence[int] = (0,),
    steps: int | None = None,
) -> Plan:
    """The runs of ``profile`` (see the module docstring) for every method and seed.

    ``methods`` selects the methods (any training method with a bound; default: each setting's
    ``methods:``, else :data:`common.names.PAPER_METHODS`); ``dataset`` picks the
    profile's settings on that dataset (by default: every setting, except that settings marked
    ``default`` are taken when their files are present and the others only when they are not);
    ``seeds`` trains every run once per seed. ``steps`` shortens every run to about that many
    steps (a smoke test: the same schedule in epochs on a training subset of
    ``ceil(steps / epochs) * batch_size`` samples, at most 200 test samples of which 100 are
    certified, a probe every ``steps // 3`` steps (at t = 0, 1 and 5, so that some see eps > 0),
    and small certifications and scans). ValueError for an unknown profile, method or dataset.
    """
    settings = load_settings()
    names = list(dict.fromkeys(s.profile for s in settings))
    mine = [s for s in settings if s.profile == profile]
    if not mine:
        raise ValueError(
            f"unknown profile {profile!r}; choose one of {', '.join(names) or '(no setting files found)'}"
        )
    datasets = list(dict.fromkeys(s.dataset for s in mine))
    dd = None if data_dir is None else str(data_dir)
    if dataset is not None:
        chosen = [s for s in mine if s.dataset == dataset]
        if not chosen:
            raise ValueError(
                f"profile {profile!r} runs on {' or '.join(datasets)}, not {dataset!r}"
            )
    else:
        preferred = [s for s in mine if s.default and _available(s.dataset, dd)]
        missing = [s.dataset for s in mine if s.default and s not in preferred]
        if (
            dd is not None and missing and not preferred
        ):  # an explicit folder never switches the dataset silently
            raise ValueError(
                f"--data-dir {dd}: no {missing[0]} files there (profile {profile!r} runs on "
                f"{missing[0]}); put them there, or choose the dataset with --dataset"
            )
        chosen = preferred or [s for s in mine if not s.default] or mine
    trainable = [m for m, info in TRAIN_METHODS.items() if info.bound is not None]
    own = list(dict.fromkeys(m for s in chosen for m in s.methods))
    picked = own if methods is None else list(methods)
    bad = [m for m in picked if m not in trainable]
    if bad or not picked:
        raise ValueError(
            f"unknown method {bad[0] if bad else ''!r} for reproduce; choose from {', '.join(trainable)}"
        )
    seeds = [int(s) for s in seeds]
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: expected distinct seeds >= 0, got {seeds}")
    if steps is not None:
        if int(steps) < 1:
            raise ValueError(f"--steps must be >= 1, got {steps}")
        chosen = [_shortened(s, int(steps)) for s in chosen]
    runs = [
        RunPlan(
            s.name,
            m,
            _checked(s, dict(s.train, method=m, seed=seed, device=device, data_dir=dd)),
            seed,
        )
        for seed in seeds
        for s in chosen
        for m in picked
        if methods is not None or m in s.methods
    ]
    by_name = {s.name: _sized(s) for s in chosen}
    return Plan(profile, device, runs, by_name, seeds)


def _checked(setting: Setting, config: dict) -> dict:
    """``config`` as the training config will read it (every default filled in), or one
    ValueError naming the setting file: a missing value, a typo in a key, a bad value."""
    from train.config import TrainConfig

    try:
        return TrainConfig.from_dict(config).to_dict()
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"setting file {setting.path}: {exc}") from None


def _shortened(setting: Setting, steps: int) -> Setting:
    """``setting`` cut to about ``steps`` training steps (see :func:`make_plan`)."""

    train = dict(setting.train)
    epochs, batch = int(train.get("epochs", 1)), int(train.get("batch_size", 128))
    train["train_size"] = min(int(train.get("train_size") or 10**9), -(-steps // epochs) * batch)
    train["test_size"] = min(int(train.get("test_size") or 200), 200)
    train["probe_every"] = max(1, steps // 3)  # a few probes, the last ones at eps > 0
    return replace(
        setting,
        train=train,
        probe_t=[0.0, 1.0, 5.0],
        certify_size=min(setting.certify_size, 100),
        pgd_steps=min(setting.pgd_steps, 5),
        tight_samples=min(setting.tight_samples, 20),
        scan_samples=min(setting.scan_samples, 20),
        scan_points_1d=min(setting.scan_points_1d, 3),
        scan_points_2d=min(setting.scan_points_2d, 2),
        scan_points_gradient=min(setting.scan_points_gradient, 1),
        notes=[
            *setting.notes,
            f"shortened to about {steps} steps (--steps): a smoke test, not a result",
        ],
    )


def _sized(setting: Setting) -> Setting:
    """The setting with its certify size no larger than its test set (digits has 360)."""
    n = setting.train.get("test_size")
    if n is None and setting.dataset == "digits":
        from train.data import load_dataset

        n = len(load_dataset("digits").test_y)  # the fixed split (instant, no files)
    return replace(setting, certify_size=min(setting.certify_size, int(n))) if n else setting


def _schedule_words(c: dict) -> str:
    """The learning-rate decay, input normalisation, eps-ball clipping and augmentation of a run
    config, in the words of :func:`describe_plan`."""
    words = []
    if c.get("lr_milestones"):
        words.append(
            f"lr x{c.get('lr_decay', 0.1):g} at {','.join(f'{m:g}' for m in c['lr_milestones'])}"
        )
    words.append("normalised" if c.get("normalize_inputs", True) else "unnormalised")
    words.append("clipped" if c.get("bounded_input", True) else "unclipped")
    aug = ([f"crop {c['random_crop']}"] if c.get("random_crop") else []) + (
        ["flip"] if c.get("random_flip") else []
    )
    words.append("+".join(aug) if aug else "no augmentation")
    return " " + " ".join(words)


def describe_plan(plan: Plan) -> str:
    """A human-readable list of the plan's runs and settings."""
    lines = [
        f"profile {plan.profile} on {plan.device}: {len(plan.runs)} runs (seeds {', '.join(map(str, plan.seeds))})"
    ]
    for r in plan.runs:
        c = r.config
        lines.append(
            f"  {r.key:<40} {c['dataset']}/{c['model']} {json.dumps(c.get('model_options') or {})} "
            f"eps={c['eps']:.4g} epochs={c['epochs']} batch={c['batch_size']} lr={c['lr']:g} "
            f"ramp={c['eps_start_epoch']:g}+{c['eps_ramp_epochs']:g} probe_every={r.probe_every}"
            + _schedule_words(c)
        )
    for name in plan.settings():
        s = plan.setting(name)
        lines.append(
            f"  certify {name} at eps {', '.join(f'{e:.4g}' for e in s.certify_eps)} "
            f"({s.certify_size} test samples, {'/'.join(s.certify_methods)}, PGD {s.pgd_steps}); "
            f"settings from {s.path}"
        )
        hessian = (
            "no Hessian scan"
            if s.scan_hessian is None
            else "Hessian scan "
            + (json.dumps(s.scan_hessian) if s.scan_hessian else "(default work)")
        )
        lines.append(
            f"  scan {name}: gradient, random-1d, random-2d, PCA on {s.scan_samples} samples; {hessian}"
        )
    lines += [f"  note: {n}" for n in plan.notes]
    return "\n".join(lines)
