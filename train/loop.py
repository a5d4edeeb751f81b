"""The training loop.

One step at global step ``s`` (0-based) on mini-batch ``(x, y)``::

    eps, beta, kappa, lr = schedule(s)
    L = kappa * CE(f(x), y) + (1 - kappa) * robust_CE(x, y; eps, beta)     (train.objective)
    L.backward()
    grad_norm = ||grad L||_2                       (raw gradient, before clipping)
    callback.on_step(ctx) for every callback       (params and grads as at the gradient)
    clip to grad_clip (if > 0); optimizer.step()

Repeatability: the model is initialised after ``torch.manual_seed(seed)``; the data order of
epoch ``e`` is ``randperm`` of a ``torch.Generator`` seeded from ``(seed, e)``; random slopes and
random crops and flips (:mod:`train.augment`) draw from generators seeded from ``(seed, s)``, so
``ctx.loss_fn(model)`` repeats the step's loss exactly. No numpy or Python global random state
is used: resuming from an epoch checkpoint gives bit-identical weights on CPU.

Under torchrun each process bounds its shard of every global batch, and gradients and stats
are summed weighted by shard size (:mod:`train.parallel`): one process's update on that batch.

Callbacks (:mod:`train.callbacks`) are how other modules (``landscape.probes``) watch training
without ``train`` importing them; per-step scalars leave through a ``sink(group, rows)``
(:mod:`train.recorder`) for the same reason.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bounds.bound_spec import training_bound
from common.names import resolve_method
from train import parallel as par
from train.callbacks import Callback, StepContext, call
from train.collapse import CollapseWatch, collapse_warning
from train.config import TrainConfig
from train.objective import LossOptions, certified_loss
from train.recorder import ScalarRecorder, Sink, flat_grad

# the setup helpers keep their old address: commands and tests import them from train.loop
from train.run_setup import RunState, mix_seed, prepare_run
from train.run_setup import build_for_config as build_for_config
from train.run_setup import check_resumable as check_resumable
from train.run_setup import check_resume as check_resume
from train.run_setup import load_data as load_data
from train.run_setup import make_optimizer as make_optimizer
from train.run_setup import resolve_device as resolve_device


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    model: nn.Module
    config: TrainConfig
    metrics: dict[str, float]
    history: list[dict[str, float]]
    epoch: int
    step: int
    wall_time: float
    checkpoint: Path | None = None
    recorder: ScalarRecorder | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class StepLoss:
    """The certified loss of a training step (:func:`train.objective.certified_loss`) under the
    run's method, slope, domain and loss options, at a step's eps, beta and kappa; random slopes
    drawn from a seed, so a loss function handed to callbacks repeats the step's loss."""

    def __init__(
        self, config: TrainConfig, domain: tuple[float, float] | None, device: torch.device
    ) -> None:
        self.config, self.domain, self.device = config, domain, device
        self.method = config.method
        self.search_kw = (
            {"opt_steps": config.opt_steps, "opt_lr": config.opt_lr}
            if config.resolved_slope == "optimized"
            else {}
        )
        self.options = LossOptions.of(config)  # sabr / mtl-ibp / warm-up regulariser
        self.final_vals = {"eps": config.eps, "beta": config.beta_end, "kappa": config.kappa_end}

    def __call__(
        self,
        m: nn.Module,
        xb: torch.Tensor,
        yb: torch.Tensor,
        eps: float,
        beta: float,
        kappa: float,
        seed: int,
        shard: par.Shard | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The step's certified loss and stats at module ``m``; random slopes drawn from ``seed``
        (``shard``: the rows of the global batch's draw that ``xb`` holds)."""
        config, device = self.config, self.device
        gen = (
            shard.generator(seed, device)
            if shard
            else torch.Generator(device=device).manual_seed(seed)
        )
        bound = training_bound(
            self.method,
            config.slope,
            beta,
            domain=self.domain,
            fused=config.fused_at(eps),
            compile=config.compile,
            **self.search_kw,
        )
        return certified_loss(
            m, xb, yb, eps, self.method, bound, kappa=kappa, generator=gen, options=self.options
        )

    def fn(
        self, xb: torch.Tensor, yb: torch.Tensor, eps: float, beta: float, kappa: float, seed: int
    ) -> Callable[[nn.Module], torch.Tensor]:
        """The loss on ``(xb, yb)`` at these values as a function of the model."""
        return lambda m: self(m, xb, yb, eps, beta, kappa, seed)[0]

    def at(
        self,
        vals: Mapping[str, float],
        step_seed: int,
        xb: torch.Tensor,
        yb: torch.Tensor,
        final: bool = False,
        seed: int | None = None,
    ) -> Callable[[nn.Module], torch.Tensor]:
        """The step's loss (``final``: at the end of the schedules) on batch ``(xb, yb)``."""
        v = self.final_vals if final else vals
        return self.fn(xb, yb, v["eps"], v["beta"], v["kappa"], step_seed if seed is None else seed)


class WarningLog:
    """The run's warning lines: kept for :class:`TrainResult` and passed to ``warn`` (default:
    printed to stderr)."""

    def __init__(self, warn: Callable[[str], None] | None) -> None:
        self.lines: list[str] = []
        self.warn = warn

    def __call__(self, line: str) -> None:
        """Keep and show one warning line."""
        self.lines.append(line)
        if self.warn is not None:
            self.warn(line)
        else:
            _print_warning(line)


def train(
    config: TrainConfig | Mapping[str, Any],
    callbacks: Iterable[Callback] = (),
    sink: Sink | None = None,
    resume_from: str | os.PathLike | None = None,
    progress: bool = True,
    out_dir: str | os.PathLike | None = None,
    data: Any = None,
    model: nn.Module | None = None,
    warn: Callable[[str], None] | None = None,
    parallel: par.Context | None = None,
) -> TrainResult:
    """Train a model as ``config`` says.

    Args:
        config: a :class:`TrainConfig` (or a dict for ``TrainConfig.from_dict``).
        callbacks: objects with ``on_step`` / ``on_epoch_end`` / ``on_train_end``.
        sink: receiver of recorded rows; given one, a :class:`ScalarRecorder` with
            ``every = config.record_every`` and ``grad_every = config.grad_every`` is added
            (unless ``callbacks`` holds one already).
        resume_from: checkpoint to continue from (its config must match, ``epochs`` may grow).
        progress: show a tqdm bar (steps, loss, robust error, eps, time left).
        out_dir: if given, ``out_dir/checkpoint_epoch{N}.pt`` after epoch N (1-based) and
            ``out_dir/checkpoint.pt`` at the end; with ``config.checkpoint_every_steps = K > 0``
            also ``checkpoint_step{S}.pt`` after every K-th step S that does not end an epoch, and
            ``checkpoint_step0.pt`` before a fresh run's first step (a resume from one written
            in the middle of an epoch is refused).
        data: a loaded dataset (``train_x``, ``train_y``, ``test_x``, ``test_y``, ``spec``);
            default ``train.data.load_dataset`` of the config.
        model: a ready model to train instead of building ``config.model`` (checkpoints then
            store the description ``{"name": "custom"}``).
        warn: receives each warning line (a collapsed run, :mod:`train.collapse`); default:
            printed to stderr. Warnings are also in ``TrainResult.warnings``.
        parallel: this process's place under torchrun (:func:`train.parallel.init`); default one
            process. Ranks other than 0 ignore ``callbacks``, ``sink`` and ``out_dir``.

    Returns:
        :class:`TrainResult` with the model, the last epoch's metrics and all epochs' history.

    The parts: :func:`prepare_run` (setup and resume), :class:`StepLoss` (the step's loss),
    :func:`_train_epoch` and :func:`_train_step` (the steps, with :func:`_step_context` for the
    callbacks), :func:`_end_epoch` (evaluation, collapse watch, checkpoint) and :func:`_finish`.
    """
    config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    run = prepare_run(config, callbacks, sink, resume_from, out_dir, data, model, parallel)
    loss = StepLoss(config, run.domain, run.device)
    report = WarningLog(warn)
    bar = _progress_bar(
        config.epochs * run.spe, run.step, config.method, progress and run.proc.is_main
    )
    t0 = time.perf_counter()
    if run.every_steps and run.ckpt is None and run.out_path is not None:
        run.save(run.out_path / "checkpoint_step0.pt", 0, 0.0)  # the trajectory's first point
    watch = (
        CollapseWatch()
    )  # reported once, only when the run ends collapsed (many recover mid-ramp)
    try:
        for epoch in range(run.start_epoch, config.epochs):
            sums, t_epoch = _train_epoch(run, loss, epoch, bar, t0)
            _end_epoch(run, epoch, sums, t_epoch, watch, t0)
    finally:
        if bar is not None:
            bar.close()
    return _finish(run, watch, t0, report)


def _train_epoch(
    run: RunState, loss: StepLoss, epoch: int, bar: Any, t0: float
) -> tuple[dict[str, float], float]:
    """The steps of one epoch in its seeded data order, with step checkpoints and the progress
    bar; returns the sample-weighted sums of the step stats and the epoch's start time."""
    config = run.config
    run.model.train()
    order = torch.randperm(
        run.n, generator=torch.Generator().manual_seed(mix_seed(config.seed, epoch))
    )
    sums: dict[str, float] = {}
    t_epoch = time.perf_counter()
    for b in range(run.spe):
        idx = order[b * config.batch_size : (b + 1) * config.batch_size].to(run.train_x.device)
        # the global batch; this rank bounds its shard
        xb, yb = run.augment(run.train_x[idx], run.step), run.train_y[idx]
        loss_value, stats, vals = _train_step(run, loss, epoch, xb, yb, t0)
        for k, v in (
            ("loss", loss_value),
            ("robust_ce", stats.get("robust_ce", math.nan)),
            ("clean_ce", stats["clean_ce"]),
            ("clean_err", stats["clean_err"]),
            ("robust_err", stats.get("robust_err", math.nan)),
        ):
            sums[k] = sums.get(k, 0.0) + v * len(yb)
        run.step += 1
        every = run.every_steps
        if every and run.step % every == 0 and run.step % run.spe != 0 and run.out_path:
            # an epoch's end has its own checkpoint
            run.save(
                run.out_path / f"checkpoint_step{run.step}.pt",
                epoch,
                run.wall_offset + time.perf_counter() - t0,
            )
        if bar is not None:
            bar.update(1)
            if b % 5 == 0 or b == run.spe - 1:
                bar.set_postfix(
                    ep=f"{epoch + 1}/{config.epochs}",
                    loss=f"{loss_value:.3f}",
                    rerr=f"{stats.get('robust_err', math.nan):.3f}",
                    eps=f"{vals['eps']:.4f}",
                    refresh=False,
                )
    return sums, t_epoch


def _train_step(
    run: RunState,
    loss: StepLoss,
    epoch: int,
    xb: torch.Tensor,
    yb: torch.Tensor,
    t0: float,
) -> tuple[float, dict[str, float], dict[str, float]]:
    """One step on the global batch ``(xb, yb)`` (the module docstring's formula): schedule values
    and lr, loss and gradient of this rank's shard summed over ranks, the callbacks' ``on_step``,
    clipping and the optimiser step. Returns the loss, the stats and the schedule values."""
    config, model, optimizer = run.config, run.model, run.optimizer
    shard = par.batch_shard(run.proc, len(yb))
    vals = run.schedule.values(run.step)
    for group in optimizer.param_groups:
        group["lr"] = vals["lr"]
    step_seed = mix_seed(config.seed, 1_000_003 + run.step)
    optimizer.zero_grad(set_to_none=True)
    value, stats = loss(
        model,
        shard.take(xb),
        shard.take(yb),
        vals["eps"],
        vals["beta"],
        vals["kappa"],
        step_seed,
        shard,
    )
    value.backward()
    loss_value, stats = par.reduce_step(run.proc, model, value, stats, shard)  # the global batch's
    if not math.isfinite(loss_value):
        raise RuntimeError(
            f"training diverged: the loss is {loss_value} at step {run.step} (epoch {epoch + 1}); "
            "try a smaller lr, a longer eps ramp or --grad-clip"
        )
    grad_norm = float(flat_grad(model).norm())
    if run.callbacks:
        ctx = _step_context(run, loss, epoch, xb, yb, vals, step_seed, loss_value, stats)
        ctx.wall_time = run.wall_offset + time.perf_counter() - t0
        ctx.grad_norm = grad_norm
        for cb in run.callbacks:
            call(cb, "on_step", ctx)
    if config.grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    return loss_value, stats, vals


def _step_context(
    run: RunState,
    loss: StepLoss,
    epoch: int,
    xb: torch.Tensor,
    yb: torch.Tensor,
    vals: dict[str, float],
    step_seed: int,
    loss_value: float,
    stats: dict[str, float],
) -> StepContext:
    """What the callbacks see of a step (:class:`train.callbacks.StepContext`), with the step's
    loss, its loss at other schedule values and at the schedules' end as functions of the model;
    the caller sets ``wall_time`` and ``grad_norm``."""
    config, final = run.config, loss.final_vals
    return StepContext(
        model=run.model,
        x=xb,
        y=yb,
        step=run.step,
        epoch=epoch,
        eps=vals["eps"],
        beta=vals["beta"],
        kappa=vals["kappa"],
        lr=vals["lr"],
        loss=loss_value,
        stats=stats,
        loss_fn=loss.fn(xb, yb, vals["eps"], vals["beta"], vals["kappa"], step_seed),
        loss_at=partial(loss.at, vals, step_seed),
        data=run.data,
        final_loss_fn=loss.fn(xb, yb, final["eps"], final["beta"], final["kappa"], step_seed),
        method=config.method,
        bound=training_bound(config.method, config.slope, vals["beta"], domain=run.domain),
        n_classes=run.data.spec.n_classes,
        optimizer=run.optimizer,
        config=config,
    )


def _end_epoch(
    run: RunState,
    epoch: int,
    sums: dict[str, float],
    t_epoch: float,
    watch: CollapseWatch,
    t0: float,
) -> None:
    """Close an epoch: its metrics (training means, schedule values, quick test evaluation on
    rank 0 and the collapse watch), shared by every rank, added to the history, saved in
    ``checkpoint_epoch{N}.pt`` and handed to the callbacks' ``on_epoch_end``."""
    config, proc, data = run.config, run.proc, run.data
    metrics = {f"train_{k}": v / run.n for k, v in sums.items()}
    metrics.update(
        epoch=epoch,
        step=run.step,
        eps=run.schedule.eps_at(run.step - 1),
        lr=run.schedule.lr_at(run.step - 1),
        epoch_seconds=time.perf_counter() - t_epoch,
    )
    metrics.update(
        _epoch_eval(run.model, data, config, run.domain, run.device) if proc.is_main else {}
    )
    if config.eval_size > 0 and len(data.test_x) and proc.is_main:
        test_x, test_y = (
            data.test_x[: config.eval_size].to(run.device),
            data.test_y[: config.eval_size],
        )
        warning = collapse_warning(
            run.model,
            test_x,
            test_y,
            data.spec.n_classes,
            metrics.get("train_robust_ce"),
            metrics.get("train_clean_ce"),
            f"after epoch {epoch + 1}",
        )
        metrics["collapsed"] = float(watch.update(warning, epoch + 1) is not None)
    run.metrics = par.broadcast(
        proc, {**metrics, "wall_time": run.wall_offset + time.perf_counter() - t0}
    )
    run.history.append(run.metrics)
    if run.out_path is not None:
        run.save(
            run.out_path / f"checkpoint_epoch{epoch + 1}.pt", epoch + 1, run.metrics["wall_time"]
        )
    for cb in run.callbacks:
        call(cb, "on_epoch_end", epoch, run.model, run.metrics)


def _finish(run: RunState, watch: CollapseWatch, t0: float, report: WarningLog) -> TrainResult:
    """End a run: the collapse warning (the watch's, or one check at the end when no epoch was
    evaluated), ``checkpoint.pt``, the callbacks' ``on_train_end`` and the result."""
    config, data, metrics = run.config, run.data, run.metrics
    wall = run.wall_offset + time.perf_counter() - t0
    if watch.final(config.epochs) is not None:
        report(watch.final(config.epochs))
    elif (
        not (config.eval_size > 0 and run.start_epoch < config.epochs)
        and len(data.test_x)
        and run.proc.is_main
    ):
        warning = collapse_warning(
            run.model,
            data.test_x[:1000].to(run.device),
            data.test_y[:1000],
            data.spec.n_classes,
            metrics.get("train_robust_ce"),
            metrics.get("train_clean_ce"),
            "at the end of training",
        )
        if warning is not None:
            report(warning)
    last_ckpt = None
    if run.out_path is not None:
        last_ckpt = run.save(
            run.out_path / "checkpoint.pt", max(run.start_epoch, config.epochs), wall
        )
    for cb in run.callbacks:
        call(cb, "on_train_end", run.model, metrics)
    return TrainResult(
        model=run.model,
        config=config,
        metrics=metrics,
        history=run.history,
        epoch=len(run.history),
        step=run.step,
        wall_time=wall,
        checkpoint=last_ckpt,
        recorder=run.recorder,
        warnings=report.lines,
    )


def _epoch_eval(
    model: nn.Module,
    data: Any,
    config: TrainConfig,
    domain: tuple[float, float] | None,
    device: torch.device,
) -> dict[str, float]:
    """Quick end-of-epoch test metrics on the first ``eval_size`` test samples: clean error and
    verified error at eps_train by IBP (and CROWN-IBP for crown-ibp/tightest runs); no attack."""
    test_x = getattr(data, "test_x", None)
    if config.eval_size == 0 or test_x is None or len(test_x) == 0:
        return {}
    from train.evaluate import evaluate, metric_key

    methods = [] if config.method == "natural" and config.eps == 0 else ["ibp"]
    if resolve_method(config.method, config.slope, 1.0)[0] == "crown-ibp":
        methods.append("crown-ibp")
    model.eval()
    res = evaluate(
        model,
        test_x[: config.eval_size],
        data.test_y[: config.eval_size],
        config.eps,
        methods=methods,
        pgd_steps=0,
        batch_size=max(config.batch_size, 256),
        domain=domain,
        progress=False,
        compile=config.compile,
    )
    out = {"test_clean_err": res["clean_err"]}
    for m in methods:
        out["test_" + metric_key(m)] = res[metric_key(m)]
    return out


def _print_warning(line: str) -> None:
    """One ``Warning:`` line on stderr, above a progress bar if one is showing."""
    from tqdm.auto import tqdm

    tqdm.write(f"Warning: {line}", file=sys.stderr)


def _progress_bar(total: int, initial: int, method: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, desc=f"train {method}", unit="step", dynamic_ncols=True
    )
