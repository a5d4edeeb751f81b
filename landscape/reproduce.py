"""``landscape reproduce``: the paper's analysis end to end (the composition root that wires
train, landscape and figures together).

For each method of Lee et al. (2021) - IBP, CROWN-IBP with beta = 1, CAP and the
tightest-slope method - and each setting of the profile it

1. trains with gradient-direction probes every N steps (``runs/<setting>/<method>/``:
   ``checkpoint.pt``, ``train.h5``); a finished run is not trained again, an interrupted one
   resumes from its last epoch checkpoint;
2. certifies the final model at several eps (clean / PGD / verified error by IBP, CROWN-IBP
   and CROWN) and measures its bound tightness at eps_train, the mean gap
   ``PGD margin - certified lower bound`` of the method's own bound (smaller = tighter),
   into ``certify.h5`` (root attr ``kind = "certify"``, group ``results`` with one row per
   eps: ``method``, ``eps``, ``clean_err``, ``pgd_err``, ``verified_err``,
   ``verified_err_<bound>``, ``bound_gap``, ``bound_lb``, ``pgd_margin``);
3. scans the final model along its gradient, a random direction and a random plane
   (filter-normalised, Li et al. 2018) with its own certified loss at eps_train
   (``scans/<setting>/<method>_{gradient,random-1d,random-2d}.h5``);
4. draws every figure and table with :func:`figures.dispatch.plot_records`
   (``figures/<setting>/``) and writes ``summary.json`` / ``summary.md``.

Profiles: ``quick`` (< 20 min on a 2-core CPU: a Fashion-MNIST subset when its files are
present, else ``digits``), ``paper`` (the paper's settings, for a GPU with ``--device cuda``)
and ``tiny`` (a few steps on ``digits``; used by the tests).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from landscape.runs import latest_epoch_checkpoint, open_train_record, probe_callbacks

METHODS: tuple[str, ...] = ("ibp", "crown-ibp", "cap", "tightest")
PROFILES: tuple[str, ...] = ("quick", "paper", "tiny")


# ----------------------------------------------------------------------------- the plan


@dataclass
class RunPlan:
    """One training run: its setting (dataset and eps group), method and full config."""

    setting: str
    method: str
    config: dict
    probe_every: int

    @property
    def key(self) -> str:
        return f"{self.setting}/{self.method}"


@dataclass
class Plan:
    """Everything ``reproduce`` will do, fixed before any work starts."""

    profile: str
    device: str
    runs: list[RunPlan]
    certify_eps: dict[str, list[float]]  # setting -> test eps
    certify_size: int
    certify_methods: tuple[str, ...]
    pgd_steps: int
    probe_t: list[float] | None
    scan_samples: int
    scan_points_1d: int
    scan_points_2d: int
    scan_range: float
    tight_samples: int
    notes: list[str] = field(default_factory=list)

    def settings(self) -> list[str]:
        return list(dict.fromkeys(r.setting for r in self.runs))


def _fashion_available(data_dir: str | Path | None) -> bool:
    """True when Fashion-MNIST's files can be found without downloading."""
    from train.data import load_dataset

    try:
        load_dataset("fashion-mnist", data_dir=data_dir, download=False, train_size=20, test_size=20)
    except ValueError:
        return False
    return True


def _base(**kw: Any) -> dict:
    cfg = dict(beta_start=1.0, beta_end=1.0, kappa_start=1.0, kappa_end=0.0, optimizer="adam", seed=0,
               record_every=10, eval_size=0, fused_loss=False)
    cfg.update(kw)
    return cfg


def _method_config(base: dict, method: str, cap_model: tuple[str, dict] | None) -> dict:
    cfg = dict(base, method=method)
    if method == "cap" and cap_model is not None:
        cfg["model"], cfg["model_options"] = cap_model[0], dict(cap_model[1])
    return cfg


PROFILE_DATASETS: dict[str, tuple[str, ...]] = {
    "quick": ("digits", "fashion-mnist"),
    "paper": ("mnist", "cifar10"),
    "tiny": ("digits",),
}


def make_plan(profile: str, device: str = "cpu", data_dir: str | Path | None = None,
              methods: Sequence[str] | None = None, dataset: str | None = None) -> Plan:
    """The runs and settings of ``profile`` (``quick``, ``paper`` or ``tiny``).

    ``methods`` selects a subset of :data:`METHODS`. ``dataset`` picks the data of the
    profile (see :data:`PROFILE_DATASETS`); by default ``quick`` uses a Fashion-MNIST subset
    when its files are present and ``digits`` otherwise, and ``paper`` runs MNIST and
    CIFAR-10. Raises ValueError for an unknown profile, method or dataset.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if dataset is not None and dataset not in PROFILE_DATASETS[profile]:
        raise ValueError(f"profile {profile!r} runs on {' or '.join(PROFILE_DATASETS[profile])}, not {dataset!r}")
    chosen = list(METHODS) if methods is None else list(methods)
    bad = [m for m in chosen if m not in METHODS]
    if bad or not chosen:
        raise ValueError(f"unknown method {bad[0] if bad else ''!r} for reproduce; choose from {', '.join(METHODS)}")
    dd = None if data_dir is None else str(data_dir)
    notes: list[str] = []
    runs: list[RunPlan] = []
    certify_eps: dict[str, list[float]] = {}

    if profile == "tiny":
        base = _base(dataset="digits", model="mlp", model_options={"widths": [16, 16]}, eps=0.1, epochs=2,
                     batch_size=32, train_size=64, test_size=32, lr=1e-3, eps_start_epoch=0.0,
                     eps_ramp_epochs=1.0, record_every=1, device=device, data_dir=dd)
        for m in chosen:
            runs.append(RunPlan("digits_eps0.1", m, _method_config(base, m, None), probe_every=2))
        certify_eps["digits_eps0.1"] = [0.05, 0.1]
        plan = Plan("tiny", device, runs, certify_eps, certify_size=32, certify_methods=("ibp", "crown-ibp"),
                    pgd_steps=3, probe_t=[0.0, 0.5, 1.0, 2.0, 5.0], scan_samples=32, scan_points_1d=5,
                    scan_points_2d=4, scan_range=1.0, tight_samples=16, notes=["smoke-test settings"])
        return plan

    if profile == "quick":
        use_fashion = dataset == "fashion-mnist" or (dataset is None and _fashion_available(dd))
        if use_fashion:
            setting = "fashion-mnist_eps0.1"
            base = _base(dataset="fashion-mnist", model="mlp", model_options={"widths": [64, 64]}, eps=0.1,
                         epochs=6, batch_size=100, train_size=3000, test_size=500, lr=1e-3, eps_start_epoch=0.5,
                         eps_ramp_epochs=3.0, device=device, data_dir=dd)
            cap_model = None
            probe_every = 15  # 12 probes over the 180 steps; CAP (the slowest bound) every 30
            notes.append("Fashion-MNIST subset (3000 train / 500 test), every method on the same MLP (64, 64) "
                         "so the four landscapes compare on identical ground: CAP's linear intermediate bounds "
                         "cost ~1 s per step even on this MLP and are far too slow on a CNN on this CPU")
            ceps = [0.025, 0.05, 0.1, 0.15]
        else:
            setting = "digits_eps0.1"
            base = _base(dataset="digits", model="mlp", model_options={"widths": [64, 64]}, eps=0.1, epochs=30,
                         batch_size=64, lr=1e-3, eps_start_epoch=2.0, eps_ramp_epochs=12.0, device=device,
                         data_dir=dd)
            cap_model = None
            probe_every = 23  # one probe per epoch (23 steps of 64 on the 1437 training digits)
            notes.append(("digits asked for" if dataset == "digits" else "Fashion-MNIST files not found") +
                         ": digits (8x8), every method on the same MLP (64, 64), "
                         "so the four landscapes compare on identical ground (CAP is too slow on a CNN here)")
            ceps = [0.025, 0.05, 0.1, 0.15, 0.2]
        for m in chosen:
            every = probe_every * 2 if (m == "cap" and setting.startswith("fashion")) else probe_every
            runs.append(RunPlan(setting, m, _method_config(base, m, cap_model), every))
        certify_eps[setting] = ceps
        return Plan("quick", device, runs, certify_eps, certify_size=500, certify_methods=("ibp", "crown-ibp", "crown"),
                    pgd_steps=20, probe_t=None, scan_samples=200, scan_points_1d=21, scan_points_2d=11,
                    scan_range=1.0, tight_samples=256, notes=notes)

    # paper: the official configurations of Lee et al. (2021) (config/mnist.json, config/cifar10.json)
    mnist = _base(dataset="mnist", model="ibp-large", model_options={"linear_size": 512}, eps=0.4, epochs=200,
                  batch_size=80, lr=5e-4, eps_start_epoch=10.0, eps_ramp_epochs=50.0, lr_milestones=[130, 190],
                  lr_decay=0.1, device=device, data_dir=dd, record_every=50)
    if dataset in (None, "mnist"):
        for m in chosen:
            runs.append(RunPlan("mnist_eps0.4", m, _method_config(mnist, m, None), probe_every=200))
        certify_eps["mnist_eps0.4"] = [0.1, 0.2, 0.3, 0.4]
    cifar_settings = (("cifar10_eps2_255", 2 / 255, [1 / 255, 2 / 255, 4 / 255]),
                      ("cifar10_eps8_255", 8 / 255, [2 / 255, 4 / 255, 8 / 255]))
    for tag, eps, ceps in cifar_settings if dataset in (None, "cifar10") else ():
        cifar = _base(dataset="cifar10", model="cnn-4layer", model_options={"width": 8, "linear_size": 512},
                      eps=eps, epochs=400, batch_size=128, lr=3e-4, eps_start_epoch=20.0, eps_ramp_epochs=241.0,
                      device=device, data_dir=dd, record_every=50)
        for m in chosen:
            runs.append(RunPlan(tag, m, _method_config(cifar, m, None), probe_every=200))
        certify_eps[tag] = ceps
    notes.append("paper settings: MNIST IBP-large (linear 512), 200 epochs, Adam 5e-4, batch 80, eps ramp "
                 "epochs 10-60 to 0.4, lr x0.1 at 130 and 190; CIFAR-10 CNN-4layer (width 8, linear 512), "
                 "400 epochs, Adam 3e-4, batch 128, eps ramp epochs 20-261 to 2/255 and 8/255; kappa 1 -> 0 "
                 "and beta = 1 throughout; no data augmentation in this toolkit")
    return Plan("paper", device, runs, certify_eps, certify_size=10000, certify_methods=("ibp", "crown-ibp"),
                pgd_steps=200, probe_t=None, scan_samples=512, scan_points_1d=51, scan_points_2d=31,
                scan_range=1.0, tight_samples=1000, notes=notes)


def describe_plan(plan: Plan) -> str:
    """A human-readable list of the plan's runs and settings."""
    lines = [f"profile {plan.profile} on {plan.device}: {len(plan.runs)} runs"]
    for r in plan.runs:
        c = r.config
        lines.append(
            f"  {r.key:<32} {c['dataset']}/{c['model']} {json.dumps(c.get('model_options') or {})} "
            f"eps={c['eps']:.4g} epochs={c['epochs']} batch={c['batch_size']} lr={c['lr']:g} "
            f"ramp={c['eps_start_epoch']:g}+{c['eps_ramp_epochs']:g} probe_every={r.probe_every}"
        )
    for s, eps in plan.certify_eps.items():
        lines.append(f"  certify {s} at eps {', '.join(f'{e:.4g}' for e in eps)} "
                     f"({plan.certify_size} test samples, {'/'.join(plan.certify_methods)}, PGD {plan.pgd_steps})")
    lines += [f"  note: {n}" for n in plan.notes]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- running


@dataclass
class ReproduceResult:
    """What :func:`run` produced."""

    out_dir: Path
    files: list[Path]
    summary_rows: list[dict]
    wall_time: float
    trained: list[str]
    reused: list[str]

    def summary(self) -> str:
        """The summary table (Markdown) and where the figures are."""
        text = _summary_markdown(self.summary_rows)
        n_fig = sum(1 for p in self.files if p.suffix == ".png")
        return (f"{text}\ntrained {len(self.trained)} runs, reused {len(self.reused)}; "
                f"{n_fig} PNG figures under {self.out_dir / 'figures'}; {self.wall_time:.0f} s")


def _log(msg: str) -> None:
    print(f"[reproduce] {msg}", file=sys.stderr, flush=True)


def _finished(run_dir: Path, cfg: Any) -> bool:
    """True when ``run_dir/checkpoint.pt`` holds this run trained to its last epoch; a run
    directory from another config is a ValueError (never overwritten)."""
    from train.checkpoint import load_checkpoint
    from train.loop import check_resumable

    ckpt_path = run_dir / "checkpoint.pt"
    probe = ckpt_path if ckpt_path.exists() else latest_epoch_checkpoint(run_dir)
    if probe is None:
        return False
    ckpt = load_checkpoint(probe)
    try:
        check_resumable(cfg, ckpt)
    except ValueError as exc:
        raise ValueError(f"{run_dir} holds a run with other settings ({exc}); choose another --out") from None
    return ckpt_path.exists() and int(ckpt.get("epoch", 0)) >= cfg.epochs


def train_run(run: RunPlan, run_dir: Path, plan: Plan, data: Any, progress: bool = True) -> bool:
    """Train ``run`` into ``run_dir`` unless it is finished; returns True when it trained."""
    from landscape import store
    from train.config import TrainConfig
    from train.loop import train

    cfg = TrainConfig.from_dict(run.config)
    run_dir.mkdir(parents=True, exist_ok=True)
    if _finished(run_dir, cfg):
        return False
    resume = latest_epoch_checkpoint(run_dir)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
    sink = open_train_record(run_dir / "train.h5", cfg, resume, {"profile": plan.profile})
    callbacks = probe_callbacks(run.probe_every, sink, plan.probe_t)
    _log(f"training {run.key} ({cfg.model}, {cfg.epochs} epochs)" + (f", resuming from {resume.name}" if resume else ""))
    t0 = time.perf_counter()
    train(cfg, callbacks=callbacks, sink=sink, resume_from=resume, progress=progress, out_dir=run_dir, data=data)
    store.write_attrs(str(run_dir / "train.h5"), {"train_seconds": time.perf_counter() - t0})
    return True


def _bound_args(method: str) -> tuple[str, str, float]:
    from train.losses import resolve_method

    bound, slope, beta = resolve_method(method, None, 1.0)
    return str(bound), slope, beta


def certify_run(run: RunPlan, run_dir: Path, plan: Plan, data: Any) -> Path:
    """Clean / PGD / verified error at the setting's eps and the bound tightness at eps_train,
    into ``run_dir/certify.h5`` (skipped when that file is complete)."""
    import torch

    from landscape import store
    from landscape.metrics import bound_tightness
    from train.checkpoint import load_model
    from train.evaluate import evaluate, metric_key

    out = run_dir / "certify.h5"
    if out.exists() and store.read(str(out))["attrs"].get("complete"):
        return out
    out.unlink(missing_ok=True)
    model, ckpt = load_model(run_dir / "checkpoint.pt", device=plan.device)
    model.eval()
    cfg = ckpt["config"]
    domain = tuple(data.spec.domain)
    n = min(plan.certify_size, len(data.test_x))
    x, y = data.test_x[:n].to(plan.device), data.test_y[:n].to(plan.device)
    eps_list = plan.certify_eps[run.setting]
    rows: dict[str, list] = {"method": [], "eps": [], "clean_err": [], "pgd_err": [], "verified_err": []}
    for m in plan.certify_methods:
        rows[metric_key(m)] = []
    _log(f"certifying {run.key} at eps {', '.join(f'{e:.4g}' for e in eps_list)}")
    for eps in eps_list:
        res = evaluate(model, x, y, eps, methods=plan.certify_methods, pgd_steps=plan.pgd_steps, domain=domain,
                       progress=False)
        rows["method"].append(run.method)
        rows["eps"].append(float(eps))
        for k in rows:
            if k not in ("method", "eps"):
                rows[k].append(float(res[k]))
    bound, slope, beta = _bound_args(run.method)
    k = min(plan.tight_samples, n)
    tight = bound_tightness(model, x[:k], y[:k], float(cfg["eps"]), method=bound, slope=slope, beta=beta,
                            domain=domain, pgd_steps=plan.pgd_steps, generator=torch.Generator().manual_seed(0))
    cols = {key: np.asarray(v, dtype=np.float32) for key, v in rows.items() if key != "method"}
    cols["method"] = np.asarray(rows["method"], dtype=object)
    for name, key in (("bound_gap", "gap"), ("bound_lb", "lb"), ("pgd_margin", "pgd_margin")):
        cols[name] = np.full(len(eps_list), tight[key], dtype=np.float32)
    tmp = out.with_suffix(".partial.h5")
    tmp.unlink(missing_ok=True)
    store.write_attrs(str(tmp), {"kind": "certify", "method": run.method, "dataset": cfg["dataset"],
                                 "model": cfg["model"], "eps": float(cfg["eps"]),
                                 "checkpoint": str(run_dir / "checkpoint.pt"), "n_test": int(n),
                                 "tightness_eps": float(cfg["eps"]), "bound": f"{bound}/{slope}",
                                 "complete": False})
    store.append_rows(str(tmp), "results", cols)
    store.write_attrs(str(tmp), {"complete": True})
    tmp.replace(out)
    return out


def _scan_loss(method: str, x: Any, y: Any, eps: float, domain: tuple[float, float]):
    """The certified loss a run was trained with, at eps_train, kappa = 0, beta = 1, with
    fixed random slopes (seeded generator) so every evaluation is the same function."""
    import torch

    from train.losses import certified_loss

    def loss_fn(m):
        return certified_loss(m, x, y, eps, method=method, beta=1.0, kappa=0.0, domain=domain,
                              generator=torch.Generator().manual_seed(0))[0]

    return loss_fn


def scan_run(run: RunPlan, run_dir: Path, scan_dir: Path, plan: Plan, data: Any) -> list[Path]:
    """Gradient, random-1d and random-2d scans of the final model (complete files are kept)."""
    import torch

    from landscape import __version__, store
    from landscape.directions import random_direction
    from landscape.scans import default_t_values, gradient_scan, grid_coords, scan_1d, scan_2d
    from train.checkpoint import load_model

    model, ckpt = load_model(run_dir / "checkpoint.pt", device=plan.device)
    cfg = ckpt["config"]
    n = min(plan.scan_samples, len(data.train_x))
    x, y = data.train_x[:n].to(plan.device), data.train_y[:n].to(plan.device)
    eps = float(cfg["eps"])
    loss_fn = _scan_loss(run.method, x, y, eps, tuple(data.spec.domain))
    scan_dir.mkdir(parents=True, exist_ok=True)
    attrs = {"checkpoint": str(run_dir / "checkpoint.pt"), "dataset": cfg["dataset"], "model": cfg["model"],
             "eps": eps, "method": run.method, "seed": 0, "samples": int(n), "toolkit_version": __version__,
             "command": "landscape reproduce", "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    written = []
    r = plan.scan_range

    def fresh(path: Path) -> bool:
        if path.exists():
            try:
                if store.read(str(path))["attrs"].get("complete"):
                    return False
            except ValueError:
                pass
            path.unlink()
        return True

    path = scan_dir / f"{run.method}_gradient.h5"
    if fresh(path):
        lr = float(cfg["lr"])
        t = np.asarray(plan.probe_t if plan.probe_t is not None else default_t_values())
        res = gradient_scan(loss_fn, model, t, lr)
        scan = store.create_scan(str(path), kind="gradient", args={"t": t.tolist(), "lr": lr, "samples": n},
                                 coords={"t": t}, labels=[run.method],
                                 fields=["loss", "grad_norm", "cos", "rms", "smoothness"], attrs={**attrs, "lr": lr})
        for name in scan.fields:
            scan.data[run.method][name][...] = np.asarray(res[name], dtype=np.float32)
        scan.label_attrs[run.method] = {"loss_variation": float(res["loss_variation"])}
        scan.flush(complete=True)
    written.append(path)

    path = scan_dir / f"{run.method}_random-1d.h5"
    if fresh(path):
        d = random_direction(model, norm="filter", seed=0)
        xs = grid_coords(-r, r, plan.scan_points_1d)
        res = scan_1d(loss_fn, model, d, xs, labels=[run.method])
        scan = store.create_scan(str(path), kind="random-1d", args={"range": r, "points": len(xs), "seed": 0},
                                 coords={"x": xs}, labels=[run.method], attrs={**attrs, "norm": "filter"})
        scan.data[run.method]["loss"][...] = np.asarray(res[run.method], dtype=np.float32)
        scan.flush(complete=True)
    written.append(path)

    path = scan_dir / f"{run.method}_random-2d.h5"
    if fresh(path):
        gen = torch.Generator().manual_seed(0)
        dx = random_direction(model, norm="filter", generator=gen)
        dy = random_direction(model, norm="filter", generator=gen)
        xs = grid_coords(-r, r, plan.scan_points_2d)
        res = scan_2d(loss_fn, model, dx, dy, xs, xs, labels=[run.method])
        scan = store.create_scan(str(path), kind="random-2d", args={"range": r, "points": len(xs), "seed": 0},
                                 coords={"x": xs, "y": xs}, labels=[run.method], attrs={**attrs, "norm": "filter"})
        scan.data[run.method]["loss"][...] = np.asarray(res[run.method], dtype=np.float32)
        scan.flush(complete=True)
    written.append(path)
    return written


def _result_files(plan: Plan, out: Path, setting: str) -> list[Path]:
    """The result files of ``setting`` that exist: each run's train.h5 and certify.h5, then its scans."""
    paths = []
    for r in (r for r in plan.runs if r.setting == setting):
        run_dir = out / "runs" / setting / r.method
        paths += [run_dir / "train.h5", run_dir / "certify.h5"]
        paths += sorted((out / "scans" / setting).glob(f"{r.method}_*.h5"))
    return [p for p in paths if p.exists()]


def load_results(plan: Plan, out: Path) -> dict[Path, Any]:
    """Every existing result file of ``plan`` under ``out``, each read once into its
    :mod:`figures.data` record (ValueError for a file that cannot be read)."""
    from figures.data import load

    return {p: load(p) for setting in plan.settings() for p in _result_files(plan, out, setting)}


def _summary_rows(plan: Plan, out: Path, records: dict[Path, Any]) -> list[dict]:
    """One row per run: verified error at eps_train, mean probe statistics over the second
    half of training, bound gap and training time (from the ``records`` of :func:`load_results`)."""
    from figures import training as ftraining

    rows = []
    for run in plan.runs:
        run_dir = out / "runs" / run.setting / run.method
        row: dict[str, Any] = {"setting": run.setting, "method": run.method, "model": run.config["model"],
                               "eps_train": run.config["eps"]}
        rec = records.get(run_dir / "train.h5")
        if rec is not None:
            s = ftraining.summary(rec, last_fraction=0.5)
            row.update({k: s[k] for k in ("loss_variation", "grad_cosine", "smoothness", "sign_flip", "rga_cosine",
                                          "unstable_frac")})
            row["train_seconds"] = rec.meta.attrs.get("train_seconds")
        cert = records.get(run_dir / "certify.h5")
        if cert is not None and cert.rows:
            best = min(cert.rows, key=lambda r: abs(r["eps"] - run.config["eps"]))
            row.update({k: best.get(k) for k in ("clean_err", "pgd_err", "verified_err", "bound_gap")})
        rows.append(row)
    return rows


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if pct:
        return f"{100 * float(v):.1f}"
    return f"{float(v):.3g}"


def _summary_markdown(rows: list[dict]) -> str:
    head = ("| setting | method | model | clean err. (%) | PGD err. (%) | verified err. (%) | bound gap | "
            "loss variation | grad. cosine | smoothness | sign flips | RGA cosine | train s |")
    lines = [head, "|" + "---|" * 3 + "---:|" * 10]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['method']} | {r['model']} | {_fmt(r.get('clean_err'), True)} | "
            f"{_fmt(r.get('pgd_err'), True)} | {_fmt(r.get('verified_err'), True)} | {_fmt(r.get('bound_gap'))} | "
            f"{_fmt(r.get('loss_variation'))} | {_fmt(r.get('grad_cosine'))} | {_fmt(r.get('smoothness'))} | "
            f"{_fmt(r.get('sign_flip'))} | {_fmt(r.get('rga_cosine'))} | {_fmt(r.get('train_seconds'))} |")
    return "\n".join(lines) + "\n"


def run(plan: Plan, out_dir: str | Path, formats: Sequence[str] | str = ("png", "pdf"),
        progress: bool = True) -> ReproduceResult:
    """Carry out ``plan`` into ``out_dir`` (see the module docstring); resumable."""
    from figures.style import normalise_formats

    fmts = normalise_formats(formats)
    from train.loop import load_data, resolve_device
    from train.config import TrainConfig

    resolve_device(plan.device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.txt").write_text(describe_plan(plan) + "\n")
    t0 = time.perf_counter()
    trained, reused = [], []
    datasets: dict[tuple, Any] = {}

    def data_for(run: RunPlan):
        cfg = TrainConfig.from_dict(run.config)
        key = (cfg.dataset, cfg.train_size, cfg.test_size, cfg.seed, cfg.data_dir)
        if key not in datasets:
            datasets[key] = load_data(cfg)
        return datasets[key]

    for r in plan.runs:  # load every dataset first: a missing one fails before any training
        data_for(r)
    for r in plan.runs:
        run_dir = out / "runs" / r.setting / r.method
        if train_run(r, run_dir, plan, data_for(r), progress=progress):
            trained.append(r.key)
        else:
            reused.append(r.key)
            _log(f"{r.key}: finished run found, not trained again")
    for r in plan.runs:
        run_dir = out / "runs" / r.setting / r.method
        certify_run(r, run_dir, plan, data_for(r))
        _log(f"scanning {r.key}")
        scan_run(r, run_dir, out / "scans" / r.setting, plan, data_for(r))

    records = load_results(plan, out)
    files = draw(plan, out, fmts, records)
    rows = _summary_rows(plan, out, records)
    (out / "summary.json").write_text(json.dumps(rows, indent=2, default=float) + "\n")
    (out / "summary.md").write_text(_summary_markdown(rows))
    wall = time.perf_counter() - t0
    _log(f"done in {wall:.0f} s")
    return ReproduceResult(out, files, rows, wall, trained, reused)


def draw(plan: Plan, out: Path, formats: Sequence[str] = ("png", "pdf"),
         records: dict[Path, Any] | None = None) -> list[Path]:
    """All figures and tables of every setting into ``out/figures/<setting>/``, from
    ``records`` (:func:`load_results`; read here when not given)."""
    from figures.dispatch import plot_records

    if records is None:
        records = load_results(plan, out)
    files: list[Path] = []
    for setting in plan.settings():
        mine = [records[p] for p in _result_files(plan, out, setting) if p in records]
        _log(f"drawing {setting} ({len(mine)} files)")
        files += plot_records(mine, out / "figures" / setting, formats)
    return files
