"""Peak memory of a Hessian record over many samples: one batch against mini-batches.

Each measurement runs in a fresh process (``--child``): it builds the model and the digits data,
notes the peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, KiB on Linux),
computes the top Hessian eigenvalue (``--steps`` Lanczos steps) and a Hutchinson trace
(``--trace`` vectors) of the certified loss over ``n`` training samples in batches of ``b``
(:class:`landscape.scan_losses.BatchedLoss`), and reports the peak again. The *increment* (peak
after minus peak before) is what the Hessian work itself needed; the total peak includes
Python, torch and the data.

    python benchmarks/hessian_memory.py                       # 200, all 1437 in batches of 200, all in one
    python benchmarks/hessian_memory.py --model mlp --method ibp
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# benchmarks/bounds.py would shadow the bounds package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def child(args: argparse.Namespace) -> dict:
    import resource

    import torch

    from landscape.hessian import hessian_trace, top_eigenvalues
    from landscape.scan_losses import LossSpec, make_closure, select_samples
    from train.data import load_dataset
    from train.models import build_model

    torch.manual_seed(0)
    data = load_dataset("digits")
    spec = data.spec
    model = build_model(
        args.model, spec.input_shape, spec.n_classes, list(spec.mean), list(spec.std)
    ).eval()
    n = "all" if args.n == "all" else int(args.n)
    x, y = select_samples(data, n, "train", 0)
    loss = LossSpec(kind="certified", method=args.method, eps=0.1, domain=(0.0, 1.0))
    fn = make_closure(model, x, y, loss, batch_size=None if args.b == 0 else args.b)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    top = float(top_eigenvalues(fn, model, k=1, iters=args.steps, seed=0)[0])
    trace = hessian_trace(fn, model, samples=args.trace, seed=1).mean
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "samples": int(x.shape[0]),
        "batch": args.b or int(x.shape[0]),
        "top": top,
        "trace": trace,
        "peak_mib": after / 1024,
        "increment_mib": (after - before) / 1024,
    }


def measure(n: str, b: int, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--n",
        str(n),
        "--b",
        str(b),
        "--model",
        args.model,
        "--method",
        args.method,
        "--steps",
        str(args.steps),
        "--trace",
        str(args.trace),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--n", default="200")
    p.add_argument("--b", type=int, default=0)
    p.add_argument("--model", default="cnn-tiny")
    p.add_argument("--method", default="crown-ibp")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--trace", type=int, default=5)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    rows = [measure("200", 0, args), measure("all", 200, args), measure("all", 0, args)]
    for r in rows:
        print(
            f"{r['samples']:5d} samples, batches of {r['batch']:5d}: peak {r['peak_mib']:7.1f} MiB, "
            f"increment {r['increment_mib']:7.1f} MiB (top {r['top']:.4g}, trace {r['trace']:.4g})"
        )
    print(
        f"ratio of increments, all in batches of 200 / 200: "
        f"{rows[1]['increment_mib'] / max(rows[0]['increment_mib'], 1e-9):.2f}; "
        f"peaks: {rows[1]['peak_mib'] / rows[0]['peak_mib']:.2f}"
    )


if __name__ == "__main__":
    main()
