"""Time to a given verified error: full CROWN-IBP training against the recipe "fused loss while
eps ramps, full CROWN-IBP loss after".

Both arms train the same model from the same initialisation, on the same data order, with the
same schedules (``train.config.TrainConfig`` defaults: eps = 0 for the first 5 % of the epochs, a
linear ramp over the next 55 %, kappa 1 -> 0 over the ramp, beta = 1, Adam):

- **full**: every step minimises ``kappa CE + (1 - kappa) margin_ce(lb_CROWN-IBP)``, one backward
  row per margin (``n_classes - 1`` rows per sample);
- **recipe** (``train --fused-ramp``, ``TrainConfig.fused_at``): while eps is below its final
  value, the robust term is the fused bound taken per sample as the smaller of it and the IBP
  bound (``fused="min"``, one backward row per sample, ``docs/fused-loss.md``); from the first
  step at the final eps on, the full loss.

After every epoch, the CROWN-IBP verified error at the final eps on ``--test-size`` test samples
(not counted in the training time). The target is the verified error the full arm ends at; the
time to it is the training time of the first epoch end at or below it, in CPU seconds
(``time.process_time``, less sensitive than wall time to other work on a shared machine; wall
seconds beside). The recipe arm may train ``--extra-epochs`` more at the final eps to get there.
Prints one line per epoch and arm, then the two times and their ratio (recipe / full).

    python benchmarks/time_to_error.py                       # fashion-mnist, mlp, 5000 samples
    python benchmarks/time_to_error.py --model dm-small --train-size 2000 --epochs 10
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

# run as a script, this file's folder comes first on sys.path and its name would hide the package
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import torch

from bounds import BoundSpec
from train.config import TrainConfig, run_domain
from train.data import load_dataset
from train.evaluate import evaluate, metric_key
from train.loop import build_for_config, make_optimizer
from train.objective import certified_loss
from train.schedules import Schedule


def train_arm(cfg: TrainConfig, data, recipe: bool, epochs: int, test_size: int, log) -> list[dict]:
    """Train one arm (``recipe``: ``cfg.fused_ramp`` is set) for ``epochs`` epochs; one record per
    epoch: cumulative training CPU and wall seconds, the verified error, and how many steps used
    the fused loss."""
    model, _ = build_for_config(cfg, data.spec)
    opt = make_optimizer(cfg, model.parameters())
    domain = run_domain(cfg, data.spec)
    n = len(data.train_x)
    spe = math.ceil(n / cfg.batch_size)
    sched = Schedule.from_config(cfg, spe)
    x_test, y_test = data.test_x[:test_size], data.test_y[:test_size]
    cpu = wall = 0.0
    step, fused_steps, out = 0, 0, []
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(1000 + epoch))
        model.train()
        c0, w0 = time.process_time(), time.perf_counter()
        for b in range(spe):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            v = sched.values(step)
            for g in opt.param_groups:
                g["lr"] = v["lr"]
            fused = cfg.fused_at(v["eps"])
            fused_steps += bool(fused)
            opt.zero_grad(set_to_none=True)
            loss, _ = certified_loss(
                model,
                data.train_x[idx],
                data.train_y[idx],
                v["eps"],
                "crown-ibp",
                BoundSpec("crown-ibp", beta=v["beta"], domain=domain, fused=fused),
                kappa=v["kappa"],
            )
            loss.backward()
            opt.step()
            step += 1
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        model.eval()
        ev = evaluate(
            model,
            x_test,
            y_test,
            cfg.eps,
            methods=["crown-ibp"],
            pgd_steps=0,
            domain=domain,
            progress=False,
        )
        rec = {
            "epoch": epoch + 1,
            "cpu": cpu,
            "wall": wall,
            "verified_err": ev[metric_key("crown-ibp")],
            "clean_err": ev["clean_err"],
            "fused_steps": fused_steps,
        }
        log(
            f"{'recipe' if recipe else 'full':6s} epoch {epoch + 1:3d}: train {cpu:7.1f} s CPU {wall:7.1f} s wall, "
            f"verified {100 * rec['verified_err']:5.1f} %, clean {100 * rec['clean_err']:5.1f} %, "
            f"fused steps {fused_steps}"
        )
        out.append(rec)
    return out


def first_at(records: list[dict], target: float) -> dict | None:
    """The first epoch record whose verified error is at most ``target``."""
    return next((r for r in records if r["verified_err"] <= target + 1e-12), None)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--model", default="mlp")
    p.add_argument("--train-size", type=int, default=5000)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument(
        "--extra-epochs",
        type=int,
        default=5,
        help="More epochs the recipe may take to reach the target.",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    cfg = TrainConfig(
        dataset=args.dataset,
        model=args.model,
        method="crown-ibp",
        eps=args.eps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        train_size=args.train_size,
        test_size=args.test_size,
    )
    data = load_dataset(
        cfg.dataset, train_size=cfg.train_size, test_size=cfg.test_size, seed=cfg.seed
    )

    def log(line: str) -> None:
        print(line, flush=True)

    log(
        f"# {cfg.dataset} ({len(data.train_x)} train, {min(args.test_size, len(data.test_x))} test), {cfg.model}, "
        f"eps {cfg.eps}, {cfg.epochs} epochs (ramp {cfg.eps_start_epoch:g} -> "
        f"{cfg.eps_start_epoch + cfg.eps_ramp_epochs:g}), batch {cfg.batch_size}, {args.threads} thread(s)"
    )
    full = train_arm(cfg, data, False, cfg.epochs, args.test_size, log)
    recipe = train_arm(
        cfg.replace(fused_ramp=True),
        data,
        True,
        cfg.epochs + args.extra_epochs,
        args.test_size,
        log,
    )
    target = full[-1]["verified_err"]
    a, b = first_at(full, target), first_at(recipe, target)
    log(f"\ntarget: the full arm's final CROWN-IBP verified error, {100 * target:.1f} %")
    log(f"full   reaches it after epoch {a['epoch']}: {a['cpu']:.1f} s CPU, {a['wall']:.1f} s wall")
    at_end = recipe[cfg.epochs - 1]
    log(
        f"recipe after {cfg.epochs} epochs: verified {100 * at_end['verified_err']:.1f} %, "
        f"{at_end['cpu']:.1f} s CPU ({at_end['cpu'] / full[-1]['cpu']:.2f}x the full arm's {cfg.epochs} epochs)"
    )
    if b is None:
        log(
            f"recipe does not reach it within {cfg.epochs + args.extra_epochs} epochs "
            f"(best {100 * min(r['verified_err'] for r in recipe):.1f} %)"
        )
    else:
        log(
            f"recipe reaches it after epoch {b['epoch']}: {b['cpu']:.1f} s CPU, {b['wall']:.1f} s wall"
        )
        log(
            f"ratio recipe / full: {b['cpu'] / a['cpu']:.2f} (CPU), {b['wall'] / a['wall']:.2f} (wall)"
        )


if __name__ == "__main__":
    main()
