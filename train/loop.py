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
from train.augment import batch_augmenter
from train.callbacks import Callback, StepContext, call
from train.checkpoint import (
    capture_rng,
    check_finite,
    load_checkpoint,
    load_state,
    restore_rng,
    save_checkpoint,
)
from train.collapse import CollapseWatch, collapse_warning
from train.config import TrainConfig, run_domain
from train.objective import LossOptions, certified_loss
from train.recorder import ScalarRecorder, Sink, flat_grad
from train.schedules import Schedule


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


def _mix(seed: int, k: int) -> int:
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
    """
    config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    proc = parallel or par.Context()
    device = par.local_device(proc, resolve_device(config.device))
    par.check_batch(proc, config.batch_size)
    if not proc.is_main:  # rank 0 alone records, probes and writes
        callbacks, sink, out_dir = (), None, None
    ckpt = check_resume(config, resume_from) if resume_from is not None else None
    data = data if data is not None else load_data(config)
    spec = data.spec
    domain = run_domain(config, spec)
    if model is None:
        model, desc = build_for_config(config, spec)
    else:
        desc = {"name": "custom"}
    model = model.to(device)
    optimizer = make_optimizer(config, model.parameters())

    callbacks = list(callbacks)
    recorder = next((c for c in callbacks if isinstance(c, ScalarRecorder)), None)
    if recorder is None and sink is not None:
        recorder = ScalarRecorder(sink, every=config.record_every, grad_every=config.grad_every)
        callbacks.insert(0, recorder)

    start_epoch, step, history, wall_offset = 0, 0, [], 0.0
    if ckpt is not None:
        load_state(model, ckpt["state_dict"], where=f"checkpoint {str(resume_from)!r}")
        if ckpt.get("optimizer") is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
        restore_rng(ckpt.get("rng"))
        start_epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
        history, wall_offset = list(ckpt.get("history") or []), float(ckpt.get("wall_time", 0.0))

    train_x, train_y = data.train_x, data.train_y
    if device.type != "cpu":
        train_x, train_y = train_x.to(device), train_y.to(device)
    n = len(train_x)
    if n == 0:
        raise ValueError(f"dataset {config.dataset!r} has no training samples")
    augment = batch_augmenter(config, train_x, lambda s: _mix(config.seed, 2_000_003 + s))
    spe = math.ceil(n / config.batch_size)
    if ckpt is not None and step != start_epoch * spe:
        raise ValueError(
            f"cannot resume from {str(resume_from)!r}: it was written in the middle of epoch "
            f"{start_epoch + 1} (step {step}, a point of the trajectory of --checkpoint-every-steps); "
            "resume from a checkpoint_epoch{N}.pt"
        )
    schedule = Schedule.from_config(config, spe)
    method, slope = config.method, config.resolved_slope
    search_kw = (
        {"opt_steps": config.opt_steps, "opt_lr": config.opt_lr} if slope == "optimized" else {}
    )
    options = LossOptions.of(config)  # sabr / mtl-ibp / warm-up regulariser (train.objective)
    out_path = Path(out_dir) if out_dir is not None else None
    final_vals = {"eps": config.eps, "beta": config.beta_end, "kappa": config.kappa_end}
    metrics: dict[str, float] = dict(history[-1]) if history else {}

    def step_loss(
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
        gen = (
            shard.generator(seed, device)
            if shard
            else torch.Generator(device=device).manual_seed(seed)
        )
        bound = training_bound(
            method,
            config.slope,
            beta,
            domain=domain,
            fused=config.fused_at(eps),
            compile=config.compile,
            **search_kw,
        )
        return certified_loss(
            m, xb, yb, eps, method, bound, kappa=kappa, generator=gen, options=options
        )

    def loss_at(
        vals: Mapping[str, float],
        step_seed: int,
        xb: torch.Tensor,
        yb: torch.Tensor,
        final: bool = False,
        seed: int | None = None,
    ) -> Callable[[nn.Module], torch.Tensor]:
        """The step's loss (``final``: at the end of the schedules) on batch ``(xb, yb)``."""
        v = final_vals if final else vals
        return make_loss_fn(
            xb, yb, v["eps"], v["beta"], v["kappa"], step_seed if seed is None else seed
        )

    def make_loss_fn(xb, yb, eps, beta, kappa, seed) -> Callable[[nn.Module], torch.Tensor]:
        return lambda m: step_loss(m, xb, yb, eps, beta, kappa, seed)[0]

    def save(path: Path, epochs_done: int, wall_time: float) -> Path:
        return save_checkpoint(
            path,
            model,
            model_desc=desc,
            config=config.to_dict(),
            epoch=epochs_done,
            step=step,
            optimizer=optimizer,
            rng=capture_rng(),
            metrics=metrics,
            history=history,
            wall_time=wall_time,
        )

    warnings: list[str] = []

    def report(line: str) -> None:
        warnings.append(line)
        if warn is not None:
            warn(line)
        else:
            _print_warning(line)

    bar = _progress_bar(config.epochs * spe, step, method, progress and proc.is_main)
    t0 = time.perf_counter()
    every = config.checkpoint_every_steps if out_path is not None else 0
    if every and ckpt is None:
        save(out_path / "checkpoint_step0.pt", 0, 0.0)  # the initialisation starts the trajectory
    last_ckpt: Path | None = None
    watch = (
        CollapseWatch()
    )  # reported once, only when the run ends collapsed (many recover mid-ramp)
    try:
        for epoch in range(start_epoch, config.epochs):
            model.train()
            order = torch.randperm(
                n, generator=torch.Generator().manual_seed(_mix(config.seed, epoch))
            )
            sums: dict[str, float] = {}
            t_epoch = time.perf_counter()
            for b in range(spe):
                idx = order[b * config.batch_size : (b + 1) * config.batch_size].to(train_x.device)
                xb, yb = (
                    augment(train_x[idx], step),
                    train_y[idx],
                )  # the global batch; this rank bounds its shard
                shard = par.batch_shard(proc, len(yb))
                vals = schedule.values(step)
                for group in optimizer.param_groups:
                    group["lr"] = vals["lr"]
                step_seed = _mix(config.seed, 1_000_003 + step)
                optimizer.zero_grad(set_to_none=True)
                loss, stats = step_loss(
                    model,
                    shard.take(xb),
                    shard.take(yb),
                    vals["eps"],
                    vals["beta"],
                    vals["kappa"],
                    step_seed,
                    shard,
                )
                loss.backward()
                loss_value, stats = par.reduce_step(
                    proc, model, loss, stats, shard
                )  # the global batch's
                if not math.isfinite(loss_value):
                    raise RuntimeError(
                        f"training diverged: the loss is {loss_value} at step {step} (epoch {epoch + 1}); "
                        "try a smaller lr, a longer eps ramp or --grad-clip"
                    )
                grad_norm = float(flat_grad(model).norm())
                if callbacks:
                    ctx = StepContext(
                        model=model,
                        x=xb,
                        y=yb,
                        step=step,
                        epoch=epoch,
                        eps=vals["eps"],
                        beta=vals["beta"],
                        kappa=vals["kappa"],
                        lr=vals["lr"],
                        loss=loss_value,
                        stats=stats,
                        loss_fn=make_loss_fn(
                            xb, yb, vals["eps"], vals["beta"], vals["kappa"], step_seed
                        ),
                        loss_at=partial(loss_at, vals, step_seed),
                        data=data,
                        final_loss_fn=make_loss_fn(
                            xb,
                            yb,
                            final_vals["eps"],
                            final_vals["beta"],
                            final_vals["kappa"],
                            step_seed,
                        ),
                        method=method,
                        bound=training_bound(method, config.slope, vals["beta"], domain=domain),
                        n_classes=spec.n_classes,
                        optimizer=optimizer,
                        config=config,
                        wall_time=wall_offset + time.perf_counter() - t0,
                        grad_norm=grad_norm,
                    )
                    for cb in callbacks:
                        call(cb, "on_step", ctx)
                if config.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                for k, v in (
                    ("loss", loss_value),
                    ("robust_ce", stats.get("robust_ce", math.nan)),
                    ("clean_ce", stats["clean_ce"]),
                    ("clean_err", stats["clean_err"]),
                    ("robust_err", stats.get("robust_err", math.nan)),
                ):
                    sums[k] = sums.get(k, 0.0) + v * len(yb)
                step += 1
                if (
                    every and step % every == 0 and step % spe != 0
                ):  # an epoch's end has its own checkpoint
                    save(
                        out_path / f"checkpoint_step{step}.pt",
                        epoch,
                        wall_offset + time.perf_counter() - t0,
                    )
                if bar is not None:
                    bar.update(1)
                    if b % 5 == 0 or b == spe - 1:
                        bar.set_postfix(
                            ep=f"{epoch + 1}/{config.epochs}",
                            loss=f"{loss_value:.3f}",
                            rerr=f"{stats.get('robust_err', math.nan):.3f}",
                            eps=f"{vals['eps']:.4f}",
                            refresh=False,
                        )
            metrics = {f"train_{k}": v / n for k, v in sums.items()}
            metrics.update(
                epoch=epoch,
                step=step,
                eps=schedule.eps_at(step - 1),
                lr=schedule.lr_at(step - 1),
                epoch_seconds=time.perf_counter() - t_epoch,
            )
            metrics.update(_epoch_eval(model, data, config, domain, device) if proc.is_main else {})
            if config.eval_size > 0 and len(data.test_x) and proc.is_main:
                test_x, test_y = (
                    data.test_x[: config.eval_size].to(device),
                    data.test_y[: config.eval_size],
                )
                warning = collapse_warning(
                    model,
                    test_x,
                    test_y,
                    spec.n_classes,
                    metrics.get("train_robust_ce"),
                    metrics.get("train_clean_ce"),
                    f"after epoch {epoch + 1}",
                )
                metrics["collapsed"] = float(watch.update(warning, epoch + 1) is not None)
            metrics = par.broadcast(
                proc, {**metrics, "wall_time": wall_offset + time.perf_counter() - t0}
            )
            history.append(metrics)
            if out_path is not None:
                save(out_path / f"checkpoint_epoch{epoch + 1}.pt", epoch + 1, metrics["wall_time"])
            for cb in callbacks:
                call(cb, "on_epoch_end", epoch, model, metrics)
    finally:
        if bar is not None:
            bar.close()
    wall = wall_offset + time.perf_counter() - t0
    if watch.final(config.epochs) is not None:
        report(watch.final(config.epochs))
    elif (
        not (config.eval_size > 0 and start_epoch < config.epochs)
        and len(data.test_x)
        and proc.is_main
    ):
        warning = collapse_warning(
            model,
            data.test_x[:1000].to(device),
            data.test_y[:1000],
            spec.n_classes,
            metrics.get("train_robust_ce"),
            metrics.get("train_clean_ce"),
            "at the end of training",
        )
        if warning is not None:
            report(warning)
    if out_path is not None:
        last_ckpt = save(out_path / "checkpoint.pt", max(start_epoch, config.epochs), wall)
    for cb in callbacks:
        call(cb, "on_train_end", model, metrics)
    return TrainResult(
        model=model,
        config=config,
        metrics=metrics,
        history=history,
        epoch=len(history),
        step=step,
        wall_time=wall,
        checkpoint=last_ckpt,
        recorder=recorder,
        warnings=warnings,
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
