"""Certified-training benchmark: IBP, CROWN-IBP (beta = 1) and tightest at eps 0.1.

For each (dataset, model) of ``digits``/``cnn-tiny`` (lr 1e-3, ``--digits-epochs``, default 30:
digits has only 12 steps per epoch) and ``fashion-mnist``/``dm-small`` (lr 5e-4, ``--epochs``) and
each method, train with Adam, batch 128, a linear eps ramp over the first 60 % of the epochs (kappa
1 -> 0 over the same window), then report clean, PGD (20 steps) and verified error (IBP,
CROWN-IBP, and CROWN on the small digits model; their union) on the test set (or a subset), and
the seconds per training epoch.

    python benchmarks/training.py                           # full: 6 epochs, all data
    python benchmarks/training.py --epochs 3 --fmnist-train-size 10000 --fmnist-test-size 1000
    python benchmarks/training.py --fused                   # fused certified loss (docs/fused-loss.md)

Prints a Markdown table and writes ``--out`` (JSON, one record per run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# run as a script, this file's folder comes first on sys.path and its name would hide the package
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import torch

from train.config import TrainConfig
from train.data import load_dataset
from train.evaluate import evaluate, metric_key
from train.loop import train

SETUPS = (("digits", "cnn-tiny", 1e-3), ("fashion-mnist", "dm-small", 5e-4))
METHODS = ("ibp", "crown-ibp", "tightest")


def run_one(dataset: str, model: str, method: str, lr: float, args: argparse.Namespace) -> dict:
    """Train one configuration and evaluate it; returns a flat record."""
    fm = dataset == "fashion-mnist"
    epochs = args.epochs if fm else args.digits_epochs
    cfg = TrainConfig(
        dataset=dataset,
        model=model,
        method=method,
        eps=args.eps,
        epochs=epochs,
        batch_size=128,
        lr=lr,
        eps_start_epoch=0.0,
        eps_ramp_epochs=0.6 * epochs,
        kappa_start=1.0,
        kappa_end=0.0,
        beta_start=1.0,
        beta_end=1.0,
        fused_loss=args.fused,
        seed=args.seed,
        eval_size=0,
        train_size=args.fmnist_train_size if fm else None,
        test_size=args.fmnist_test_size if fm else None,
    )
    data = load_dataset(dataset, train_size=cfg.train_size, test_size=cfg.test_size, seed=cfg.seed)
    t0 = time.perf_counter()
    res = train(cfg, progress=not args.quiet, data=data)
    seconds = time.perf_counter() - t0
    per_epoch = [h["epoch_seconds"] for h in res.history]
    methods = ("ibp", "crown-ibp", "crown") if model == "cnn-tiny" else ("ibp", "crown-ibp")
    t1 = time.perf_counter()
    ev = evaluate(
        res.model,
        data.test_x,
        data.test_y,
        args.eps,
        methods=methods,
        pgd_steps=20,
        pgd_restarts=1,
        batch_size=256,
        progress=not args.quiet,
    )
    record = {
        "dataset": dataset,
        "model": model,
        "method": method,
        "fused": args.fused,
        "eps": args.eps,
        "epochs": epochs,
        "n_train": len(data.train_x),
        "n_test": len(data.test_x),
        "sec_per_epoch": sum(per_epoch) / len(per_epoch),
        "train_seconds": seconds,
        "eval_seconds": time.perf_counter() - t1,
        **{k: v for k, v in ev.items() if k not in ("n", "eps")},
    }
    return record


def table(records: list[dict]) -> str:
    """Markdown table of the records (errors in %)."""
    cols = [
        "clean_err",
        "pgd_err",
        metric_key("ibp"),
        metric_key("crown-ibp"),
        metric_key("crown"),
        "verified_err",
    ]
    head = (
        "| dataset | model | method | epochs | n_train | clean | PGD | ver. IBP | ver. CROWN-IBP "
        "| ver. CROWN | ver. union | s/epoch |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in records:
        cells = [f"{100 * r[c]:.1f}" if c in r else "-" for c in cols]
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['method']}{' (fused)' if r['fused'] else ''} | "
            f"{r['epochs']} | {r['n_train']} | "
            + " | ".join(cells)
            + f" | {r['sec_per_epoch']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=6, help="Epochs on Fashion-MNIST.")
    p.add_argument(
        "--digits-epochs", type=int, default=30, help="Epochs on digits (12 steps each)."
    )
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--fmnist-train-size", type=int, default=None)
    p.add_argument("--fmnist-test-size", type=int, default=None)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--datasets", default="digits,fashion-mnist")
    p.add_argument("--fused", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", default="benchmarks/train_results.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    wanted = set(args.datasets.split(","))
    records = []
    for dataset, model, lr in SETUPS:
        if dataset not in wanted:
            continue
        for method in args.methods.split(","):
            rec = run_one(dataset, model, method, lr, args)
            records.append(rec)
            print(json.dumps(rec), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(records, indent=2) + "\n")
    print(table(records))


if __name__ == "__main__":
    main()
