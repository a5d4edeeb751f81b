"""Benchmark of the PCA and Hessian scan kinds: their cost as a multiple of one evaluation of
the same loss on the same samples.

For each loss (``--methods``, default clean, ibp, crown-ibp) of a trained checkpoint:

- ``eval_s``: CPU time of one evaluation of the loss (no gradient; median of ``--reps``) on the
  scan's fixed batch (``--samples`` training samples, seed 0), the unit;
- ``pca_s``: CPU time of a whole ``--kind pca`` scan of ``--points`` x ``--points`` points
  (loading the trajectory's checkpoints, the SVD, every point and the file writes), and
  ``setup_s``, that of a one-point PCA scan (mostly the loading and the SVD), so that
  ``(pca_s - setup_s) / (points^2 - 1)`` is the cost of a grid point;
- ``hessian_s``: CPU time of a whole ``--kind hessian`` scan with its defaults (top 5
  eigenvalues by 40 Lanczos steps, 100 Hutchinson samples, 10 x 40 SLQ steps);
- the ratios ``pca_s / eval_s`` (and per grid point) and ``hessian_s / eval_s``.

One thread, CPU time (``time.process_time``), so that other jobs on a shared machine disturb the
ratios less. The checkpoint's run directory must hold its epoch (or step) checkpoints.

    python benchmarks/scan_kinds.py runs/mlp/checkpoint.pt [--points 21] [--samples 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

# a script here named like a package (benchmarks/bounds.py) would shadow it: drop this script's folder from the path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402


def _median_time(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def _scan_seconds(**kw) -> float:
    from landscape.scan_runner import ScanRequest, run_scan

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.process_time()
        run_scan(ScanRequest(out=str(Path(tmp) / "scan.h5"), **kw), progress=False)
        return time.process_time() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--methods", default="clean,ibp,crown-ibp")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--points", type=int, default=21)
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from landscape.scan_losses import LossClosure, select_samples
    from landscape.scan_runner import ScanRequest
    from train.checkpoint import load_model
    from train.config import run_domain
    from train.data import DATASETS, load_dataset

    model, ckpt = load_model(args.checkpoint)
    model.eval()
    cfg = ckpt["config"]
    data = load_dataset(
        cfg["dataset"],
        train_size=cfg.get("train_size"),
        test_size=cfg.get("test_size"),
        seed=int(cfg.get("seed", 0)),
    )
    x, y = select_samples(data, args.samples, "train", 0)
    domain = run_domain(cfg, DATASETS[cfg["dataset"]])
    print(
        f"{args.checkpoint}: {cfg.get('model')} on {cfg['dataset']}, {sum(p.numel() for p in model.parameters())} "
        f"parameters, {args.samples} samples, 1 thread, CPU seconds"
    )
    n = args.points**2
    print(
        f"| loss | one evaluation (ms) | pca {args.points}x{args.points} (s) | pca / evaluation | pca setup (s) | "
        "grid point / evaluation | hessian (s) | hessian / evaluation |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        common = dict(checkpoint=args.checkpoint, methods=[method], samples=args.samples, data=data)
        spec = ScanRequest(out="unused", **common).loss_specs(
            cfg, float(cfg.get("eps", 0.0)), domain
        )[0]
        loss = LossClosure(model, x, y, spec)

        def evaluate() -> None:
            with torch.no_grad():
                loss()

        eval_s = _median_time(evaluate, args.reps)
        pca_s = _scan_seconds(kind="pca", points=args.points, **common)
        setup_s = _scan_seconds(kind="pca", points=1, **common)
        hessian_s = _scan_seconds(kind="hessian", **common)
        point = (pca_s - setup_s) / max(n - 1, 1)
        print(
            f"| {method} | {1e3 * eval_s:.2f} | {pca_s:.2f} | {pca_s / eval_s:.0f} | {setup_s:.2f} | "
            f"{point / eval_s:.2f} | {hessian_s:.1f} | {hessian_s / eval_s:.0f} |"
        )


if __name__ == "__main__":
    main()
