"""The plan of ``landscape reproduce``: which runs, on which data, with which settings, fixed
before any work starts.

Profiles (:data:`bounds.names.PROFILES`): ``quick`` (< 20 min on a 2-core CPU: a Fashion-MNIST
subset when its files are present, else ``digits``), ``paper`` (the paper's settings, for a GPU
with ``--device cuda``) and ``tiny`` (a few steps on ``digits``; used by the tests). Every
profile trains the methods Lee et al. (2021) compare (:data:`bounds.names.PAPER_METHODS`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from bounds.names import CERTIFY_METHODS, PAPER_METHODS, PROFILES

__all__ = ["RunPlan", "Plan", "make_plan", "describe_plan"]


@dataclass
class RunPlan:
    """One training run: its setting (dataset and eps group), method and full config (whose
    ``probe_every`` says how often it is probed)."""

    setting: str
    method: str
    config: dict

    @property
    def key(self) -> str:
        return f"{self.setting}/{self.method}"

    @property
    def probe_every(self) -> int:
        return int(self.config.get("probe_every", 0))


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
    scan_points_gradient: int = 10  # log-spaced t of the final models' gradient scans (plus 0 and 1)

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


def _method_config(base: dict, method: str, probe_every: int) -> dict:
    return dict(base, method=method, probe_every=int(probe_every))


def make_plan(profile: str, device: str = "cpu", data_dir: str | Path | None = None,
              methods: Sequence[str] | None = None, dataset: str | None = None) -> Plan:
    """The runs and settings of ``profile`` (``quick``, ``paper`` or ``tiny``).

    ``methods`` selects a subset of :data:`bounds.names.PAPER_METHODS`. ``dataset`` picks the data of the
    profile (see :data:`PROFILES`); by default ``quick`` uses a Fashion-MNIST subset
    when its files are present and ``digits`` otherwise, and ``paper`` runs MNIST and
    CIFAR-10. Raises ValueError for an unknown profile, method or dataset.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if dataset is not None and dataset not in PROFILES[profile]:
        raise ValueError(f"profile {profile!r} runs on {' or '.join(PROFILES[profile])}, not {dataset!r}")
    chosen = list(PAPER_METHODS) if methods is None else list(methods)
    bad = [m for m in chosen if m not in PAPER_METHODS]
    if bad or not chosen:
        raise ValueError(f"unknown method {bad[0] if bad else ''!r} for reproduce; choose from {', '.join(PAPER_METHODS)}")
    dd = None if data_dir is None else str(data_dir)
    notes: list[str] = []
    runs: list[RunPlan] = []
    certify_eps: dict[str, list[float]] = {}

    if profile == "tiny":
        base = _base(dataset="digits", model="mlp", model_options={"widths": [16, 16]}, eps=0.1, epochs=2,
                     batch_size=32, train_size=64, test_size=32, lr=1e-3, eps_start_epoch=0.0,
                     eps_ramp_epochs=1.0, record_every=1, device=device, data_dir=dd)
        for m in chosen:
            runs.append(RunPlan("digits_eps0.1", m, _method_config(base, m, 2)))
        certify_eps["digits_eps0.1"] = [0.05, 0.1]
        plan = Plan("tiny", device, runs, certify_eps, certify_size=32, certify_methods=("ibp", "crown-ibp"),
                    pgd_steps=3, probe_t=[0.0, 0.5, 1.0, 2.0, 5.0], scan_samples=32, scan_points_1d=5,
                    scan_points_2d=4, scan_range=1.0, tight_samples=16, notes=["smoke-test settings"],
                    scan_points_gradient=3)
        return plan

    if profile == "quick":
        use_fashion = dataset == "fashion-mnist" or (dataset is None and _fashion_available(dd))
        if use_fashion:
            setting = "fashion-mnist_eps0.1"
            base = _base(dataset="fashion-mnist", model="mlp", model_options={"widths": [64, 64]}, eps=0.1,
                         epochs=6, batch_size=100, train_size=3000, test_size=500, lr=1e-3, eps_start_epoch=0.5,
                         eps_ramp_epochs=3.0, device=device, data_dir=dd)
            probe_every = 15  # 12 probes over the 180 steps; CAP (the slowest bound) every 30
            notes.append("Fashion-MNIST subset (3000 train / 500 test), every method on the same MLP (64, 64) "
                         "so the four landscapes compare on identical ground: CAP's linear intermediate bounds "
                         "cost ~1 s per step even on this MLP and are far too slow on a CNN on this CPU")
            ceps = [0.025, 0.05, 0.1, 0.15]
            n_test = 500
        else:
            setting = "digits_eps0.1"
            base = _base(dataset="digits", model="mlp", model_options={"widths": [64, 64]}, eps=0.1, epochs=30,
                         batch_size=64, lr=1e-3, eps_start_epoch=2.0, eps_ramp_epochs=12.0, device=device,
                         data_dir=dd)
            probe_every = 23  # one probe per epoch (23 steps of 64 on the 1437 training digits)
            notes.append(("digits asked for" if dataset == "digits" else "Fashion-MNIST files not found") +
                         ": digits (8x8), every method on the same MLP (64, 64), "
                         "so the four landscapes compare on identical ground (CAP is too slow on a CNN here)")
            ceps = [0.025, 0.05, 0.1, 0.15, 0.2]
            from train.data import load_dataset

            n_test = len(load_dataset("digits").test_y)  # the fixed split: 360 (instant, no files)
        for m in chosen:
            every = probe_every * 2 if (m == "cap" and setting.startswith("fashion")) else probe_every
            runs.append(RunPlan(setting, m, _method_config(base, m, every)))
        certify_eps[setting] = ceps
        return Plan("quick", device, runs, certify_eps, certify_size=min(500, n_test), certify_methods=CERTIFY_METHODS,
                    pgd_steps=20, probe_t=None, scan_samples=200, scan_points_1d=21, scan_points_2d=11,
                    scan_range=1.0, tight_samples=256, notes=notes)

    # paper: the official configurations of Lee et al. (2021) (config/mnist.json, config/cifar10.json)
    mnist = _base(dataset="mnist", model="ibp-large", model_options={"linear_size": 512}, eps=0.4, epochs=200,
                  batch_size=80, lr=5e-4, eps_start_epoch=10.0, eps_ramp_epochs=50.0, lr_milestones=[130, 190],
                  lr_decay=0.1, device=device, data_dir=dd, record_every=50)
    if dataset in (None, "mnist"):
        for m in chosen:
            runs.append(RunPlan("mnist_eps0.4", m, _method_config(mnist, m, 200)))
        certify_eps["mnist_eps0.4"] = [0.1, 0.2, 0.3, 0.4]
    cifar_settings = (("cifar10_eps2_255", 2 / 255, [1 / 255, 2 / 255, 4 / 255]),
                      ("cifar10_eps8_255", 8 / 255, [2 / 255, 4 / 255, 8 / 255]))
    for tag, eps, ceps in cifar_settings if dataset in (None, "cifar10") else ():
        cifar = _base(dataset="cifar10", model="cnn-4layer", model_options={"width": 8, "linear_size": 512},
                      eps=eps, epochs=400, batch_size=128, lr=3e-4, eps_start_epoch=20.0, eps_ramp_epochs=241.0,
                      device=device, data_dir=dd, record_every=50)
        for m in chosen:
            runs.append(RunPlan(tag, m, _method_config(cifar, m, 200)))
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
