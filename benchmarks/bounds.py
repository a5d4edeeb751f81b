"""Benchmark of the bound engine: the cost of a certified training step and the certified loss.

Run::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bounds.py            # both allocators
    .venv/bin/python benchmarks/bounds.py --allocator tuned --repeats 5      # one of them

Prints, for DM-small on a 256-sample batch of 1x28x28 inputs (Fashion-MNIST when installed,
else class-structured synthetic images):

1. the time of one training step (certified loss + backward) for every method x slope, fused
   and not, as a ratio to a natural step (cross-entropy + backward) on the same batch, measured
   in the same process (rounds interleaved; best of ``--repeats``), once with glibc's default
   allocator and once with large blocks kept on the heap (``mallopt`` M_MMAP_THRESHOLD 1 GiB,
   M_TRIM_THRESHOLD 2 GiB, as ``landscape.cli`` does for the toolkit's own commands); each
   allocator runs in a fresh subprocess;
2. ``crown`` and ``cap`` (full linear intermediate bounds) on a small MLP, likewise;
3. the mean certified loss of each configuration at initialisation and after a short IBP
   training (``--train-steps`` Adam steps), fused and not;
4. how often ``tightest`` certifies a lower loss than its own random start and than
   ``adaptive`` over many small random networks (``--nets``), unfused and fused.

Wall-clock times on a shared 2-core machine are noisy: ratios use the best of several
interleaved rounds, and the per-step CPU time (``time.process_time``) ratio is printed beside
the wall ratio (it is what the step costs in work, independent of other processes' load).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# run as a script, this folder would shadow the packages (benchmarks/bounds.py)
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

MMAP_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


SLOPE_LIST = ("adaptive", "zero", "one", "same-slope", "uniform", "binary", "optimized", "tightest")


def configs() -> list[tuple[str, str, bool]]:
    out = [("ibp", "adaptive", False)]
    for fused in (False, True):
        out += [("crown-ibp", s, fused) for s in SLOPE_LIST]
    return out


def load_batch(n: int, seed: int = 0):
    """``(x [n,1,28,28], y [n], mean, std, source)``: Fashion-MNIST if installed, else synthetic."""
    import torch

    try:
        from train.data import load_dataset

        data = load_dataset("fashion-mnist", train_size=4 * n, test_size=16, seed=seed)
        x, y = data.train_x[: 4 * n].float(), data.train_y[: 4 * n].long()
        return x, y, tuple(data.spec.mean), tuple(data.spec.std), "fashion-mnist"
    except Exception as exc:  # no dataset installed: synthetic images with class structure
        print(f"fashion-mnist unavailable ({exc}); using synthetic data", file=sys.stderr)
        g = torch.Generator().manual_seed(seed)
        protos = torch.rand(10, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (4 * n,), generator=g)
        x = (0.7 * protos[y] + 0.3 * torch.rand(4 * n, 1, 28, 28, generator=g)).clamp(0, 1)
        return x, y, (0.5,), (0.3,), "synthetic"


def build(name: str, mean, std, seed: int = 0):
    import torch
    from torch import nn

    from bounds import Normalize

    torch.manual_seed(seed)
    try:
        from train.models import build_model

        if name == "dm-small":
            return build_model("dm-small", input_shape=(1, 28, 28), n_classes=10, mean=mean, std=std)
        return build_model("mlp", input_shape=(1, 28, 28), n_classes=10, mean=mean, std=std, widths=(128, 128))
    except ImportError:
        if name == "dm-small":
            return nn.Sequential(
                Normalize(mean, std), nn.Conv2d(1, 16, 4, 2), nn.ReLU(), nn.Conv2d(16, 32, 4, 1), nn.ReLU(),
                nn.Flatten(), nn.Linear(3200, 100), nn.ReLU(), nn.Linear(100, 10),
            )
        return nn.Sequential(
            Normalize(mean, std), nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
            nn.Linear(128, 10),
        )


def time_steps(model, x, y, eps: float, cfgs, repeats: int, opt_steps: int) -> dict:
    """Best wall and CPU time of one step per config and of the natural step (interleaved rounds)."""
    import torch
    import torch.nn.functional as F

    from bounds import robust_cross_entropy

    def natural():
        return F.cross_entropy(model(x), y)

    fns: dict[str, Callable] = {"natural": natural}
    for method, slope, fused in cfgs:
        key = f"{method}|{slope}|{int(fused)}"
        fns[key] = lambda m=method, s=slope, f=fused: robust_cross_entropy(
            model, x, y, eps, m, s, fused=f, opt_steps=opt_steps, generator=torch.Generator().manual_seed(0)
        )
    wall = {k: float("inf") for k in fns}
    cpu = {k: float("inf") for k in fns}
    for k, fn in fns.items():  # warm-up
        model.zero_grad(set_to_none=True)
        fn().backward()
    for r in range(repeats):
        for k, fn in fns.items():
            if "|optimized|" in k and r >= 2:  # ~20 bound passes per step: two rounds are enough
                continue
            model.zero_grad(set_to_none=True)
            t0, c0 = time.perf_counter(), time.process_time()
            fn().backward()
            wall[k] = min(wall[k], time.perf_counter() - t0)
            cpu[k] = min(cpu[k], time.process_time() - c0)
    return {"wall": wall, "cpu": cpu}


def certified_losses(model, x, y, eps: float, cfgs, opt_steps: int) -> dict:
    import torch

    from bounds import robust_cross_entropy

    out = {}
    with torch.no_grad():
        for method, slope, fused in cfgs:
            loss = robust_cross_entropy(
                model, x, y, eps, method, slope, fused=fused, opt_steps=opt_steps,
                generator=torch.Generator().manual_seed(0),
            )
            out[f"{method}|{slope}|{int(fused)}"] = float(loss)
    return out


def train_ibp(model, x_all, y_all, eps: float, steps: int, batch: int) -> float:
    """A short IBP training: ``0.5 CE(clean) + 0.5 IBP loss``, eps ramped linearly from 0 to ``eps``
    over the steps, Adam lr 1e-3 (mixing in the clean loss keeps a from-scratch model from
    collapsing to constant logits). Returns the clean accuracy on ``x_all`` afterwards."""
    import torch
    import torch.nn.functional as F

    from bounds import robust_cross_entropy

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        idx = torch.randint(0, x_all.shape[0], (batch,), generator=g)
        e = eps * (step + 1) / steps
        xb, yb = x_all[idx], y_all[idx]
        loss = 0.5 * F.cross_entropy(model(xb), yb) + 0.5 * robust_cross_entropy(model, xb, yb, e, "ibp")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((model(x_all).argmax(1) == y_all).float().mean())


def unstable_fraction(model, x, eps: float) -> float:
    import torch

    from bounds import compute_bounds

    with torch.no_grad():
        counts = compute_bounds(model, x, eps, "ibp").counts
    return sum(c["unstable"] for c in counts) / max(1, sum(c["total"] for c in counts))


def tightest_stats(n_nets: int, seed: int = 0) -> dict:
    """Over ``n_nets`` small random MLPs: how often tightest's certified loss (crown-ibp) is below
    that of its random start (the ``uniform`` slopes from the same generator) and of adaptive."""
    import torch
    from torch import nn

    from bounds import robust_cross_entropy

    g = torch.Generator().manual_seed(seed)
    res = {f: {"vs_start": 0, "vs_adaptive": 0, "ties_start": 0, "sample_vs_start": [0, 0], "sample_vs_adaptive": [0, 0]}
           for f in ("unfused", "fused")}
    for i in range(n_nets):
        torch.manual_seed(seed * 100003 + i)
        d = int(torch.randint(2, 9, (1,), generator=g))
        widths = [int(torch.randint(4, 33, (1,), generator=g)) for _ in range(int(torch.randint(1, 4, (1,), generator=g)))]
        n = int(torch.randint(2, 6, (1,), generator=g))
        layers: list[nn.Module] = []
        prev = d
        for w in widths:
            layers += [nn.Linear(prev, w), nn.ReLU()]
            prev = w
        model = nn.Sequential(*layers, nn.Linear(prev, n))
        x = torch.rand(32, d, generator=g)
        y = torch.randint(0, n, (32,), generator=g)
        eps = float(torch.empty(1).uniform_(0.01, 0.2, generator=g))
        with torch.no_grad():
            for fused, key in ((False, "unfused"), (True, "fused")):
                kw = dict(eps=eps, method="crown-ibp", fused=fused, reduction="none")
                start = robust_cross_entropy(model, x, y, slope="uniform", generator=torch.Generator().manual_seed(i), **kw)
                tight = robust_cross_entropy(model, x, y, slope="tightest", generator=torch.Generator().manual_seed(i), **kw)
                adapt = robust_cross_entropy(model, x, y, slope="adaptive", **kw)
                r = res[key]
                r["vs_start"] += int(tight.mean() < start.mean())
                r["ties_start"] += int(torch.isclose(tight.mean(), start.mean()))
                r["vs_adaptive"] += int(tight.mean() < adapt.mean())
                r["sample_vs_start"][0] += int((tight < start - 1e-7).sum())
                r["sample_vs_start"][1] += tight.numel()
                r["sample_vs_adaptive"][0] += int((tight < adapt - 1e-7).sum())
                r["sample_vs_adaptive"][1] += tight.numel()
    return {"n_nets": n_nets, **res}


def run_one(args) -> dict:
    """Everything measured under the current process's allocator setting."""
    if args.allocator == "tuned":
        from landscape.allocator import tune_allocator

        tune_allocator()
    import torch

    torch.set_num_threads(args.threads)
    x_all, y_all, mean, std, source = load_batch(args.batch)
    x, y = x_all[: args.batch], y_all[: args.batch]
    out: dict = {"allocator": args.allocator, "data": source, "batch": args.batch, "eps": args.eps,
                 "loss_eps": args.loss_eps,
                 "train_steps": args.train_steps}
    cfgs = configs()
    model = build("dm-small", mean, std)
    out["dm-small"] = time_steps(model, x, y, args.eps, cfgs, args.repeats, args.opt_steps)
    mlp = build("mlp", mean, std)
    mlp_cfgs = [("ibp", "adaptive", False), ("crown-ibp", "adaptive", False), ("crown", "adaptive", False),
                ("cap", "same-slope", False), ("crown", "adaptive", True), ("cap", "same-slope", True)]
    out["mlp"] = time_steps(mlp, x, y, args.eps, mlp_cfgs, args.repeats, args.opt_steps)
    if not args.timing_only:
        le = args.loss_eps
        out["loss_init"] = certified_losses(model, x, y, le, cfgs, args.opt_steps)
        out["unstable_init"] = unstable_fraction(model, x, le)
        out["acc_trained"] = train_ibp(model, x_all, y_all, le, args.train_steps, min(128, args.batch))
        out["loss_trained"] = certified_losses(model, x, y, le, cfgs, args.opt_steps)
        out["unstable_trained"] = unstable_fraction(model, x, le)
        out["tightest"] = tightest_stats(args.nets)
    return out


def fmt_table(results: list[dict]) -> str:
    lines = []
    allocs = [r["allocator"] for r in results]
    for net in ("dm-small", "mlp"):
        lines.append(f"\n## {net}: step time / natural step (wall, best of rounds; cpu-time ratio in brackets)")
        nat = "  ".join(f"{a}: {r[net]['wall']['natural'] * 1e3:.1f} ms" for a, r in zip(allocs, results))
        lines.append(f"natural step: {nat}")
        head = f"{'method':10s} {'slope':11s} {'fused':5s} " + " ".join(f"{a:>18s}" for a in allocs)
        lines.append(head)
        for key in results[0][net]["wall"]:
            if key == "natural":
                continue
            method, slope, fused = key.split("|")
            cells = []
            for r in results:
                w, c = r[net]["wall"], r[net]["cpu"]
                cells.append(f"{w[key] / w['natural']:8.2f}x [{c[key] / c['natural']:5.2f}x]")
            lines.append(f"{method:10s} {slope:11s} {'yes' if fused == '1' else 'no':5s} " + " ".join(f"{s:>18s}" for s in cells))
    r0 = results[0]
    if "loss_init" in r0:
        lines.append(
            f"\n## mean certified loss, dm-small, eps={r0['loss_eps']} ({r0['data']}): init -> after "
            f"{r0.get('train_steps', '?')} IBP steps (clean train acc {r0['acc_trained']:.3f}; IBP-unstable "
            f"ReLUs {r0['unstable_init']:.3f} -> {r0['unstable_trained']:.3f})"
        )
        for key in r0["loss_init"]:
            method, slope, fused = key.split("|")
            lines.append(
                f"{method:10s} {slope:11s} {'fused' if fused == '1' else 'plain':5s} "
                f"{r0['loss_init'][key]:9.4f} -> {r0['loss_trained'][key]:9.4f}"
            )
        t = r0["tightest"]
        lines.append(f"\n## tightest vs its random start and vs adaptive (crown-ibp), {t['n_nets']} random MLPs")
        for key in ("unfused", "fused"):
            s = t[key]
            lines.append(
                f"{key:8s} nets with lower mean loss: vs start {s['vs_start']}/{t['n_nets']} "
                f"(ties {s['ties_start']}), vs adaptive {s['vs_adaptive']}/{t['n_nets']}; samples: "
                f"vs start {s['sample_vs_start'][0]}/{s['sample_vs_start'][1]}, "
                f"vs adaptive {s['sample_vs_adaptive'][0]}/{s['sample_vs_adaptive'][1]}"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--allocator", choices=("both", "tuned", "default"), default="both")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--loss-eps", type=float, default=0.02, help="eps of the loss table and of the short training")
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--opt-steps", type=int, default=20)
    p.add_argument("--train-steps", type=int, default=60)
    p.add_argument("--nets", type=int, default=200)
    p.add_argument("--timing-only", action="store_true", help="skip the loss and tightest statistics")
    p.add_argument("--json", help="write the raw results here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(args)))
        return 0
    results = []
    for alloc in (("default", "tuned") if args.allocator == "both" else (args.allocator,)):
        env = {k: v for k, v in os.environ.items() if k not in MMAP_ENV}
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--allocator", alloc, "--batch", str(args.batch),
               "--eps", str(args.eps), "--loss-eps", str(args.loss_eps), "--repeats", str(args.repeats), "--threads", str(args.threads),
               "--opt-steps", str(args.opt_steps), "--train-steps", str(args.train_steps), "--nets", str(args.nets)]
        if args.timing_only or (alloc == "default" and args.allocator == "both"):
            cmd.append("--timing-only")
        print(f"running {alloc} allocator ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if len(results) == 2:  # losses were measured under the tuned run only (they do not depend on it)
        results[0].update({k: v for k, v in results[1].items() if k.startswith(("loss_", "acc_", "unstable_", "tightest"))})
        results = [results[0], results[1]]
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    print(fmt_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
