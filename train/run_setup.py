"""What a training run starts from, before its first step: the device, the dataset, the seeded
model and its optimiser, the checked checkpoint a run resumes from and the state it restores,
gathered in one :class:`RunState` by :func:`prepare_run`. :mod:`train.loop` runs the steps.

Seeds of the run's random streams (data order, random slopes, augmentation) are
:func:`mix_seed` of the config's seed and a stream-and-step number, so every stream repeats
exactly on resume.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from train import parallel as par
from train.augment import batch_augmenter
from train.callbacks import Callback
from train.checkpoint import (
    capture_rng,
    check_finite,
    load_checkpoint,
    load_state,
    restore_rng,
    save_checkpoint,
)
from train.config import TrainConfig, run_domain
from train.recorder import ScalarRecorder, Sink
from train.schedules import Schedule


def mix_seed(seed: int, k: int) -> int:
    """A deterministic 63-bit seed from ``(seed, k)`` (splitmix-style multiply and xor)."""
    z = (seed * 0x9E3779B97F4A7C15 + (k + 1) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z ^= z >> 31
    return z & ((1 << 63) - 1)


def make_optimizer(config: TrainConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """Adam or SGD (with momentum) with the config's lr and weight decay."""
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def build_for_config(config: TrainConfig, spec: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Build the config's model for dataset ``spec`` (after ``torch.manual_seed(seed)``), then
    initialise it as ``config.init`` says (:func:`train.shi.init_weights`)."""
    from train import models, shi

    mean, std = (
        (tuple(spec.mean), tuple(spec.std))
        if config.normalize_inputs
        else ((0.0,) * len(spec.mean), (1.0,) * len(spec.std))
    )
    kw = dict(
        input_shape=tuple(spec.input_shape),
        n_classes=int(spec.n_classes),
        mean=mean,
        std=std,
        **config.model_options,
    )
    torch.manual_seed(config.seed)
    model = models.build_model(config.model, **kw)
    shi.init_weights(model, config.init, config.seed)
    desc = models.model_description(config.model, **kw)
    return model, desc


def load_data(config: TrainConfig, download: bool = False) -> Any:
    """The config's dataset (``train.data.load_dataset``; ``download`` fetches missing files)."""
    from train.data import load_dataset

    return load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        download=download,
        train_size=config.train_size,
        test_size=config.test_size,
        seed=config.seed,
    )


def resolve_device(name: str) -> torch.device:
    """``torch.device`` for ``name``; an unavailable CUDA/MPS device is a ValueError."""
    dev = torch.device(name)
    for kind, available in (
        ("cuda", torch.cuda.is_available),
        ("mps", torch.backends.mps.is_available),
    ):
        if dev.type == kind and not available():
            raise ValueError(f"device {name!r} was asked for but {kind.upper()} is not available")
    return dev


def check_resumable(config: TrainConfig, ckpt: Mapping[str, Any]) -> None:
    """Raise ValueError unless the checkpoint's run config matches ``config`` (up to
    :data:`train.config.NON_IDENTITY_FIELDS`, e.g. ``epochs``)."""
    try:
        old = TrainConfig.from_dict(ckpt["config"]).identity()
    except ValueError as exc:
        raise ValueError(
            f"the checkpoint's config is not a valid training config ({exc})"
        ) from None
    new = config.identity()
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:4])
        raise ValueError(
            f"cannot resume: the checkpoint was trained with a different config ({detail})"
        )


def check_resume(config: TrainConfig, resume_from: str | os.PathLike) -> dict[str, Any]:
    """Load the checkpoint a run resumes from and check it can be resumed with ``config``: the
    same run (:func:`check_resumable`), finite weights, and no more epochs done than ``config``
    asks for. Returns the checkpoint; raises one clear ValueError otherwise."""
    ckpt = load_checkpoint(resume_from)
    check_resumable(config, ckpt)
    try:
        check_finite(ckpt["state_dict"], where=f"checkpoint {str(resume_from)!r}")
    except ValueError as exc:
        raise ValueError(
            f"cannot resume: {exc}; the run diverged before this checkpoint was saved, so resume from "
            "an earlier checkpoint_epoch{N}.pt (move the later ones away) or start again with a smaller "
            "lr, a longer eps ramp or --grad-clip"
        ) from None
    done = int(ckpt["epoch"])
    if config.epochs < done:
        raise ValueError(
            f"cannot resume: {str(resume_from)!r} has already trained {done} epochs, more than the "
            f"{config.epochs} asked for (--epochs must be at least {done})"
        )
    return ckpt


@dataclass
class RunState:
    """One run as :func:`prepare_run` sets it up, and the parts the loop moves on: the global
    step, the epochs' history and the last epoch's metrics (what a checkpoint saves)."""

    config: TrainConfig
    proc: par.Context
    device: torch.device
    data: Any
    domain: tuple[float, float] | None
    model: nn.Module
    desc: dict[str, Any]
    optimizer: torch.optim.Optimizer
    callbacks: list[Callback]
    recorder: ScalarRecorder | None
    ckpt: dict[str, Any] | None
    train_x: torch.Tensor
    train_y: torch.Tensor
    augment: Callable[[torch.Tensor, int], torch.Tensor]
    spe: int
    schedule: Schedule
    out_path: Path | None
    start_epoch: int = 0
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    wall_offset: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """The number of training samples."""
        return len(self.train_x)

    @property
    def every_steps(self) -> int:
        """``checkpoint_every_steps`` when the run writes checkpoints, else 0."""
        return self.config.checkpoint_every_steps if self.out_path is not None else 0

    def save(self, path: Path, epochs_done: int, wall_time: float) -> Path:
        """Write a checkpoint of the run as it stands (model, optimiser, RNG, history)."""
        return save_checkpoint(
            path,
            self.model,
            model_desc=self.desc,
            config=self.config.to_dict(),
            epoch=epochs_done,
            step=self.step,
            optimizer=self.optimizer,
            rng=capture_rng(),
            metrics=self.metrics,
            history=self.history,
            wall_time=wall_time,
        )


def _with_recorder(
    callbacks: list[Callback], sink: Sink | None, config: TrainConfig
) -> tuple[list[Callback], ScalarRecorder | None]:
    """The callbacks with a :class:`ScalarRecorder` for ``sink`` put first (unless one is there
    already), and the recorder."""
    recorder = next((c for c in callbacks if isinstance(c, ScalarRecorder)), None)
    if recorder is None and sink is not None:
        recorder = ScalarRecorder(sink, every=config.record_every, grad_every=config.grad_every)
        callbacks.insert(0, recorder)
    return callbacks, recorder


def _resume_state(
    ckpt: Mapping[str, Any] | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    resume_from: str | os.PathLike | None,
) -> tuple[int, int, list[dict[str, float]], float]:
    """Load a resumed run's weights, optimiser and RNG state; its epochs done, global step,
    history and wall time so far (zeros for a fresh run)."""
    if ckpt is None:
        return 0, 0, [], 0.0
    load_state(model, ckpt["state_dict"], where=f"checkpoint {str(resume_from)!r}")
    if ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    restore_rng(ckpt.get("rng"))
    return (
        int(ckpt["epoch"]),
        int(ckpt["step"]),
        list(ckpt.get("history") or []),
        float(ckpt.get("wall_time", 0.0)),
    )


def prepare_run(
    config: TrainConfig,
    callbacks: Iterable[Callback],
    sink: Sink | None,
    resume_from: str | os.PathLike | None,
    out_dir: str | os.PathLike | None,
    data: Any,
    model: nn.Module | None,
    parallel: par.Context | None,
) -> RunState:
    """Set a run up as :func:`train` documents its arguments: device and process, the checked
    checkpoint to resume from, data, model (seeded build), optimiser, recorder, resumed state,
    augmentation and schedule."""
    proc = parallel or par.Context()
    device = par.local_device(proc, resolve_device(config.device))
    par.check_batch(proc, config.batch_size)
    if not proc.is_main:  # rank 0 alone records, probes and writes
        callbacks, sink, out_dir = (), None, None
    ckpt = check_resume(config, resume_from) if resume_from is not None else None
    data = data if data is not None else load_data(config)
    domain = run_domain(config, data.spec)
    if model is None:
        model, desc = build_for_config(config, data.spec)
    else:
        desc = {"name": "custom"}
    model = model.to(device)
    optimizer = make_optimizer(config, model.parameters())
    callbacks, recorder = _with_recorder(list(callbacks), sink, config)
    start_epoch, step, history, wall_offset = _resume_state(ckpt, model, optimizer, resume_from)
    train_x, train_y = data.train_x, data.train_y
    if device.type != "cpu":
        train_x, train_y = train_x.to(device), train_y.to(device)
    if len(train_x) == 0:
        raise ValueError(f"dataset {config.dataset!r} has no training samples")
    augment = batch_augmenter(config, train_x, lambda s: mix_seed(config.seed, 2_000_003 + s))
    spe = math.ceil(len(train_x) / config.batch_size)
    if ckpt is not None and step != start_epoch * spe:
        raise ValueError(
            f"cannot resume from {str(resume_from)!r}: it was written in the middle of epoch "
            f"{start_epoch + 1} (step {step}, a point of the trajectory of --checkpoint-every-steps); "
            "resume from a checkpoint_epoch{N}.pt"
        )
    return RunState(
        config=config,
        proc=proc,
        device=device,
        data=data,
        domain=domain,
        model=model,
        desc=desc,
        optimizer=optimizer,
        callbacks=callbacks,
        recorder=recorder,
        ckpt=ckpt,
        train_x=train_x,
        train_y=train_y,
        augment=augment,
        spe=spe,
        schedule=Schedule.from_config(config, spe),
        out_path=Path(out_dir) if out_dir is not None else None,
        start_epoch=start_epoch,
        step=step,
        history=history,
        wall_offset=wall_offset,
        metrics=dict(history[-1]) if history else {},
    )
