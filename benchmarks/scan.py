"""Benchmark of landscape scans: cost per grid point against one evaluation of the same loss.

For each loss (clean and certified methods) on a fixed batch:

- ``eval_s``: CPU time of one loss evaluation (no gradient; median of ``--reps``), the floor a
  scan point can reach;
- ``point_s``: CPU seconds per point of a random-1d scan written to an HDF5 file (parameter
  moves, loss, bookkeeping and atomic file writes included; best of 3 scans), point by point
  and, for the losses :func:`landscape.evaluators.batchable` accepts (clean; IBP and CROWN-IBP
  with fixed slopes), batched ``--vmap`` points at a time with ``torch.func.vmap`` over stacked
  parameter sets;
- ``ratio = point_s / eval_s`` (target <= 1.2);
- the same for the gradient scan against one loss + gradient evaluation.

CPU time (``time.process_time``) rather than wall time, so that other jobs on a shared machine
disturb the ratio less. Then a random-2d scan through the CLI with 1 process and with ``torchrun --nproc-per-node 2``
(the compute time the command reports, and the wall time including start-up).

    python benchmarks/scan.py [--model cnn-tiny] [--samples 128] [--points 16] [--methods clean,ibp,crown-ibp]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# a script here named like a package (benchmarks/bounds.py) would shadow it: drop this script's folder from the path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402


def _median_time(fn, reps: int) -> float:
    """Median CPU time of ``reps`` calls after a warm-up (a scan's per-point time is an average
    over many points, so it is compared with a typical call, not the fastest)."""
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


class _IBPLoss(nn.Module):
    """A pure-tensor IBP certified loss (no ``.item()``), only to measure what vmapping a
    bound computation over parameter sets would gain; the toolkit's loss is the engine's."""

    def __init__(self, model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.model, self.x, self.y, self.eps = model, x, y, eps

    def forward(self) -> torch.Tensor:
        lo, hi = (self.x - self.eps).clamp(0, 1), (self.x + self.eps).clamp(0, 1)
        for layer in self.model:
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                mid, rad = (hi + lo) / 2, (hi - lo) / 2
                if isinstance(layer, nn.Linear):
                    mid, rad = (
                        F.linear(mid, layer.weight, layer.bias),
                        F.linear(rad, layer.weight.abs()),
                    )
                else:
                    kw = dict(stride=layer.stride, padding=layer.padding)
                    mid = F.conv2d(mid, layer.weight, layer.bias, **kw)
                    rad = F.conv2d(rad, layer.weight.abs(), None, **kw)
                lo, hi = mid - rad, mid + rad
            else:
                lo, hi = layer(lo), layer(hi)
        true_lo = lo.gather(1, self.y[:, None])
        worst = hi.scatter(1, self.y[:, None], true_lo)
        return F.cross_entropy(worst, self.y)


def per_point(args: argparse.Namespace) -> None:
    from common import store
    from common.tensors import flatten
    from landscape import directions as D
    from landscape import evaluators, scans
    from landscape.scan_losses import make_loss, select_samples
    from landscape.scan_runner import fill_scan
    from train.data import load_dataset
    from train.models import build_model

    data = load_dataset(args.dataset)
    spec = data.spec
    torch.manual_seed(0)
    model = build_model(args.model, spec.input_shape, spec.n_classes, spec.mean, spec.std)
    x, y = select_samples(data, args.samples, "train", 0)
    d = D.random_direction(model, seed=0)
    coeffs = np.linspace(-1, 1, args.points)[:, None]
    print(
        f"model {args.model} on {args.dataset}, {args.samples} samples, {sum(p.numel() for p in model.parameters())} "
        f"parameters, torch threads {torch.get_num_threads()}"
    )
    print(f"{'loss':<12}{'mode':<10}{'eval_s':>10}{'point_s':>10}{'ratio':>8}")
    tmp = Path(tempfile.mkdtemp())
    for name in args.methods.split(","):
        kind = name if name in ("clean", "pgd") else "certified"
        fn = make_loss(
            model, x, y, kind=kind, method=name if kind == "certified" else "ibp", eps=args.eps
        )
        with torch.no_grad():
            t_eval = _median_time(fn, args.reps)
        modes = [("loop", 1)] + (
            [(f"vmap{k}", k) for k in args.vmap] if evaluators.batchable(fn) else []
        )
        for mode, bs in modes:
            ev = evaluators.DirectionEvaluator(model, [fn], [d], coeffs, vmap_batch=bs)
            t_ev = _median_time(lambda: ev(list(range(args.points))), 2) / args.points
            best = float("inf")
            for rep in range(3):  # the whole scan, file writes included; best of 3
                path = tmp / f"{name}-{mode}-{rep}.h5"
                sf = store.create_scan(
                    path,
                    kind="random-1d",
                    args={},
                    coords={"x": coeffs[:, 0]},
                    labels=[fn.label],
                    arrays={"direction_x": flatten(d).numpy()},
                )
                t0 = time.process_time()
                fill_scan(sf, ev, progress=False)
                best = min(best, (time.process_time() - t0) / args.points)
            print(
                f"{name:<12}{mode:<10}{t_eval:>10.5f}{best:>10.5f}{best / t_eval:>8.2f}"
                f"   (without file writes {t_ev:.5f} s, {t_ev / t_eval:.2f}x)"
            )
        if kind == "certified" and name == "ibp":
            ibp = _IBPLoss(model, x, y, args.eps)
            names = [n for n, _ in model.named_parameters()]
            base = D.get_params(model)
            stacked = {
                f"model.{n}": torch.stack([D.perturbed(base, [d], c)[k] for c in coeffs[:16]])
                for k, n in enumerate(names)
            }
            with torch.no_grad():
                t_v = (
                    _median_time(
                        lambda: torch.func.vmap(lambda p: torch.func.functional_call(ibp, p, ()))(
                            stacked
                        ),
                        max(1, args.reps // 4),
                    )
                    / 16
                )
                t_1 = _median_time(ibp, args.reps)
            print(
                f"{'ibp (pure)':<12}{'vmap16':<10}{t_1:>10.5f}{t_v:>10.5f}{t_v / t_1:>8.2f}   "
                "(a .item()-free IBP: what vmapping bounds could gain)"
            )
        # gradient scan: one point = loss + gradient (+ metrics off)
        t_grad = _median_time(lambda: D.gradient_direction(fn, model), args.reps)
        ts = scans.default_t_values(n=max(1, args.points - 2))
        best = float("inf")
        for rep in range(3):
            sf = store.create_scan(
                tmp / f"{name}-grad-{rep}.h5",
                kind="gradient",
                args={},
                coords={"t": ts},
                labels=[fn.label],
                fields=evaluators.GRADIENT_FIELDS,
            )
            ev = evaluators.GradientEvaluator(model, [fn], ts, lr=0.01)
            t0 = time.process_time()
            fill_scan(sf, ev, progress=False)
            best = min(best, (time.process_time() - t0) / len(ts))
        print(
            f"{name:<12}{'gradient':<10}{t_grad:>10.5f}{best:>10.5f}{best / t_grad:>8.2f}"
            "   (vs one loss + gradient; t = 0 reuses the gradient at theta)"
        )


def two_processes(args: argparse.Namespace) -> None:
    from train.checkpoint import save_checkpoint
    from train.data import DATASETS
    from train.models import build_model, model_description

    spec = DATASETS[args.dataset]
    torch.manual_seed(0)
    model = build_model(args.model, spec.input_shape, spec.n_classes, spec.mean, spec.std)
    tmp = Path(tempfile.mkdtemp())
    ckpt = tmp / "ckpt.pt"
    cfg = {
        "dataset": args.dataset,
        "model": args.model,
        "method": "crown-ibp",
        "eps": args.eps,
        "lr": 1e-3,
        "seed": 0,
        "beta_end": 1.0,
        "kappa_end": 0.0,
    }
    save_checkpoint(
        ckpt,
        model,
        model_desc=model_description(
            args.model, spec.input_shape, spec.n_classes, spec.mean, spec.std
        ),
        config=cfg,
        epoch=0,
        step=0,
    )
    scan_args = [
        "scan",
        str(ckpt),
        "--kind",
        "random-2d",
        "--points",
        str(args.grid),
        "--samples",
        str(args.samples),
        "--methods",
        args.dist_methods,
        "--quiet",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    results = {}
    for k in (1, args.processes):
        out = tmp / f"scan{k}.h5"
        if k == 1:
            cmd = [sys.executable, "-m", "landscape.cli", *scan_args, "--out", str(out)]
        else:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            cmd = [
                str(Path(sys.executable).with_name("torchrun")),
                "--nproc-per-node",
                str(k),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(port),
                "-m",
                "landscape.cli",
                *scan_args,
                "--out",
                str(out),
            ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-2000:])
        compute = float(re.search(r"computed now in ([0-9.]+) s", proc.stdout).group(1))
        results[k] = (compute, wall)
        print(
            f"{k} process(es): random-2d {args.grid}x{args.grid} ({args.dist_methods}), compute {compute:.2f} s, "
            f"wall {wall:.2f} s"
        )
    c1, w1 = results[1]
    ck, wk = results[args.processes]
    print(f"speed-up with {args.processes} processes: compute {c1 / ck:.2f}x, wall {w1 / wk:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="cnn-tiny")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--points", type=int, default=128)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--methods", default="clean,ibp,crown-ibp")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument(
        "--vmap",
        type=lambda v: [int(k) for k in v.split(",")],
        default=[4, 16],
        help="points per batched pass to try, comma-separated [default: 4,16]",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument(
        "--grid", type=int, default=9, help="points per axis of the 2-process random-2d scan"
    )
    ap.add_argument("--dist-methods", default="crown-ibp")
    ap.add_argument("--skip-distributed", action="store_true")
    ap.add_argument("--skip-per-point", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_per_point:
        per_point(args)
    if not args.skip_distributed:
        two_processes(args)


if __name__ == "__main__":
    main()
