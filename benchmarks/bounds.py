"""Benchmark of the bound engine: the cost of a certified training step, eager and compiled, against
a natural step, auto_LiRPA and the code of Lee et al. (2021).

Run::

    .venv/bin/python benchmarks/bounds.py
    .venv/bin/python benchmarks/bounds.py --lirpa-python /tmp/lirpa-venv/bin/python \\
        --paper-code /tmp/LossLandscapeMatters
    .venv/bin/python benchmarks/bounds.py --extras          # + MLP crown/cap, losses, tightest statistics

Prints, in one run:

1. **steps**: DM-small, a batch of 256 Fashion-MNIST images (class-structured synthetic images
   when the dataset is not installed), eps 0.1, certified loss + backward with lower bounds only:
   IBP, CROWN-IBP and tightest (eager and ``compile=True``), the fused loss and ``fused="min"``,
   each as a multiple of a natural step (cross-entropy + backward) on the same batch; and, where
   they compute the same thing, auto_LiRPA's IBP and CROWN-IBP (``compute_bounds(...,
   bound_upper=False)`` on the same model, batch, box and margin specification; the step is
   skipped with a note when ``auto_LiRPA`` cannot be imported). auto_LiRPA pins older torch
   versions, so it usually lives in its own virtual environment: ``--lirpa-python`` runs this
   section with that environment's interpreter (this repository is put on its path).
2. **paper**: the setting of the paper's code (``--paper-code DIR``, a checkout of
   github.com/sungyoon-lee/LossLandscapeMatters): its ``model_small`` on 28x28 inputs, batch 80,
   unclipped box, no input normalisation, beta 1, kappa 0; a step is clean forward + certified
   loss + backward + Adam step. Its CROWN-IBP and tightest ("ours") steps run its own
   ``BoundSequential`` (imported from DIR at run time; nothing of it is copied here), ours the
   engine with the same weights (our zoo's ``model-small``). The paper's Linear layer after the
   convolutions is sized for 32x32 inputs; on 28x28 it is replaced by one of the right size.
3. **compile**: the time of the first compiled step (tracing, code generation, C++ compilation)
   in a fresh process with an empty disk cache, and again in a second process on the cache
   the first one filled, next to the steady-state step.
4. **extras** (``--extras``): the MLP (128, 128) steps of ``crown`` and ``cap`` (full linear
   intermediate bounds); the mean certified loss of every CROWN-IBP slope, fused, ``fused="min"``
   and not, at initialisation and after 60 IBP training steps (eps 0.02); how often ``tightest``
   beats its random start and ``adaptive`` over 200 small random networks.

Every section runs in its own subprocess with ``OMP_WAIT_POLICY=PASSIVE``, ``--threads`` threads
and the tuned allocator (``landscape.allocator.tune_allocator``, as the ``landscape`` command
does; ``--allocator default`` keeps glibc's). Ratios are best-of-``--repeats`` wall times of
interleaved rounds in the same process; CPU-time ratios (``time.process_time``, less sensitive
to other processes on a shared machine) are printed beside them, and so is the median over rounds
of the ratio measured within one round (``paired``: both steps seconds apart, so a drift of the
machine's speed over minutes cancels). The load average is printed before and after each section.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# run as a script, this folder would shadow the packages (benchmarks/bounds.py)
_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

MMAP_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"


def setup(args) -> None:
    if args.allocator == "tuned":
        from landscape.allocator import tune_allocator

        tune_allocator()
    import torch

    torch.set_num_threads(args.threads)


def load_batch(n: int, seed: int = 0):
    """``(x [4n,1,28,28], y [4n], mean, std, source)``: Fashion-MNIST if installed, else synthetic."""
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


def build(name: str, mean, std, seed: int = 0, **options):
    import torch

    from train.models import build_model

    torch.manual_seed(seed)
    return build_model(name, input_shape=(1, 28, 28), n_classes=10, mean=mean, std=std, **options)


def timed(fns: dict[str, Callable], repeats: int, zero_grad: Callable[[], None]) -> dict:
    """Best wall and CPU seconds per function over interleaved rounds (after one warm-up call each,
    whose time is kept as ``first``), and every round's wall time (``rounds``, for
    :func:`paired`)."""
    cpu = {k: float("inf") for k in fns}
    first = {}
    rounds: dict[str, list[float]] = {k: [] for k in fns}
    for k, fn in fns.items():
        zero_grad()
        t0 = time.perf_counter()
        fn()
        first[k] = time.perf_counter() - t0
    for _ in range(repeats):
        for k, fn in fns.items():
            zero_grad()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            rounds[k].append(time.perf_counter() - t0)
            cpu[k] = min(cpu[k], time.process_time() - c0)
    wall = {k: min(v, default=float("inf")) for k, v in rounds.items()}
    return {"wall": wall, "cpu": cpu, "first": first, "rounds": rounds}


def paired(r: dict, k: str, ref: str) -> float:
    """Median over rounds of ``time(k) / time(ref)`` measured in the same round, seconds apart.

    On a shared machine the speed drifts by tens of percent over minutes; a ratio of two
    best-of times can pair a fast moment of one function with a slow one of the other, while
    the per-round ratio compares both under nearly the same conditions."""
    return statistics.median(a / b for a, b in zip(r["rounds"][k], r["rounds"][ref]))


# ----------------------------------------------------------------------------- 1. steps


STEPS = (  # label, method, slope, fused, compile
    ("ibp", "ibp", None, False, False),
    ("ibp compiled", "ibp", None, False, True),
    ("crown-ibp", "crown-ibp", "adaptive", False, False),
    ("crown-ibp compiled", "crown-ibp", "adaptive", False, True),
    ("tightest", "crown-ibp", "tightest", False, False),
    ("tightest compiled", "crown-ibp", "tightest", False, True),
    ("fused crown-ibp", "crown-ibp", "adaptive", True, False),
    ("fused-min crown-ibp", "crown-ibp", "adaptive", "min", False),
    ("fused tightest", "crown-ibp", "tightest", True, False),
    ("fused-min tightest", "crown-ibp", "tightest", "min", False),
    ("fused-min tightest compiled", "crown-ibp", "tightest", "min", True),
)
LIRPA = {"ibp": "IBP", "crown-ibp": "CROWN-IBP"}


def lirpa_step(model, x, eps: float, C, method: str) -> Callable:
    """auto_LiRPA's certified loss + backward with lower bounds only (the same box and spec)."""
    import torch
    import torch.nn.functional as F
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    bounded = BoundedModule(model, torch.zeros_like(x[:1]), device=x.device.type)
    ptb = PerturbationLpNorm(
        norm=float("inf"), eps=eps, x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1)
    )
    zeros = torch.zeros(x.shape[0], dtype=torch.long)

    def step():
        lb, _ = bounded.compute_bounds(
            x=(BoundedTensor(x, ptb),), C=C, method=method, bound_upper=False
        )
        z = torch.cat([torch.zeros_like(lb[:, :1]), -lb], 1)
        loss = F.cross_entropy(z, zeros)
        loss.backward()
        return loss

    return step


def run_steps(args) -> dict:
    import warnings

    import torch
    import torch.nn.functional as F

    from bounds import margin_spec, robust_cross_entropy

    setup(args)
    x_all, y_all, mean, std, source = load_batch(args.batch)
    x, y = x_all[: args.batch], y_all[: args.batch]
    model = build("dm-small", mean, std)
    eps = args.eps

    def natural():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    fns: dict[str, Callable] = {"natural": natural}
    for label, method, slope, fused, comp in STEPS:
        if comp and args.no_compile:
            continue

        def step(method=method, slope=slope, fused=fused, comp=comp):
            loss = robust_cross_entropy(
                model,
                x,
                y,
                eps,
                method,
                slope,
                fused=fused,
                compile=comp,
                generator=torch.Generator().manual_seed(0),
            )
            loss.backward()
            return loss

        fns[label] = step
    notes = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            C = margin_spec(y, 10)
            for ours, name in LIRPA.items():
                fns[f"auto_LiRPA {ours}"] = lirpa_step(model, x, eps, C, name)
    except ImportError as exc:
        notes.append(
            f"auto_LiRPA not importable ({exc}): its rows are skipped (see --lirpa-python)"
        )
    with torch.no_grad():
        values = {}
        for k, fn in fns.items():
            with torch.enable_grad():
                values[k] = float(fn().detach())
    out = {
        "load_before": load(),
        "data": source,
        "batch": args.batch,
        "eps": eps,
        "values": values,
        "notes": notes,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out.update(timed(fns, args.repeats, lambda: model.zero_grad(set_to_none=True)))
    out["load_after"] = load()
    return out


def fmt_steps(r: dict) -> str:
    w, c = r["wall"], r["cpu"]
    lines = [
        f"\n## 1. steps: dm-small, batch {r['batch']} ({r['data']}), eps {r['eps']}, "
        "loss + backward, lower bounds only",
        f"{r['load_before']} (before), {r['load_after']} (after)",
        f"natural step: {w['natural'] * 1e3:.1f} ms wall, {c['natural'] * 1e3:.1f} ms CPU",
        "ratios: of best-of times (wall, cpu) and the median of per-round ratios (paired)",
        f"{'step':30s} {'ms':>8s} {'x natural':>10s} {'(cpu)':>7s} {'(paired)':>9s} {'vs auto_LiRPA':>14s} "
        f"{'(cpu)':>7s} {'(paired)':>9s} {'loss':>9s}",
    ]
    for k in w:
        if k == "natural":
            continue
        base = k.replace(" compiled", "")
        lir = f"auto_LiRPA {base}"
        vs = (
            f"{w[k] / w[lir]:14.2f} {c[k] / c[lir]:7.2f} {paired(r, k, lir):9.2f}"
            if lir in w and not k.startswith("auto")
            else f"{'':14s} {'':7s} {'':9s}"
        )
        lines.append(
            f"{k:30s} {w[k] * 1e3:8.1f} {w[k] / w['natural']:10.2f} {c[k] / c['natural']:7.2f} "
            f"{paired(r, k, 'natural'):9.2f} {vs} {r['values'][k]:9.4f}"
        )
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- 2. the paper's code


def paper_modules(directory: str):
    """The paper code's ``bound_layers`` and ``model_defs``, imported from its checkout."""
    import importlib
    import logging

    sys.path.insert(0, os.path.abspath(directory))
    try:
        model_defs = importlib.import_module("model_defs")
        bound_layers = importlib.import_module("bound_layers")
    finally:
        sys.path.pop(0)
    logging.getLogger("bound_layers").setLevel(logging.WARNING)
    return model_defs, bound_layers


def paper_model(ours, model_defs, bound_layers, opts: dict):
    """The paper's ``model_small`` (its Linear after the convolutions resized to 28x28 inputs) with
    the weights of our ``model-small`` (same layers, after our identity ``Normalize``), wrapped
    in its ``BoundSequential``."""
    import torch
    from torch import nn

    theirs = model_defs.model_small(1, 28)
    layers = [m for m in ours if not type(m).__name__ == "Normalize"]
    fixed = []
    for mine, their in zip(layers, theirs):
        if isinstance(their, nn.Linear) and their.in_features != mine.in_features:
            their = nn.Linear(mine.in_features, their.out_features)
        if isinstance(their, (nn.Linear, nn.Conv2d)):
            with torch.no_grad():
                their.weight.copy_(mine.weight)
                their.bias.copy_(mine.bias)
        fixed.append(their)
    model = bound_layers.BoundSequential.convert(nn.Sequential(*fixed), opts)
    model.define_bound_opts(opts)
    return model


def paper_loss(model, x, y, eps: float, lower_d: list | None = None):
    """The paper code's CROWN-IBP robust cross-entropy with beta 1 (interval bounds, then its
    backward pass; a clean forward first, as its training step does)."""
    import torch
    import torch.nn.functional as F

    n = 10
    model(x, method_opt="forward")
    eye = torch.eye(n, dtype=x.dtype)
    c = eye[y].unsqueeze(1) - eye.unsqueeze(0)
    keep = y.unsqueeze(1) != torch.arange(n).unsqueeze(0)
    c = c[keep].view(x.shape[0], n - 1, n)
    others = (
        torch.arange(n - 1).unsqueeze(0)
        + (torch.arange(n - 1).unsqueeze(0) >= y.unsqueeze(1)).long()
    )
    model(norm=float("inf"), x_U=x + eps, x_L=x - eps, eps=eps, C=c, method_opt="interval_range")
    kw = {} if lower_d is None else {"lower_d_list2": lower_d}
    _, _, lb, _ = model(
        norm=float("inf"), x_U=x + eps, x_L=x - eps, eps=eps, C=c, method_opt="backward_range", **kw
    )
    full = torch.zeros(x.shape[0], n, dtype=x.dtype).scatter(1, others, lb)
    return F.cross_entropy(-full, y)


def paper_tightest_loss(model, x, y, eps: float):
    """The paper code's "ours" step: random lower slopes, one signed-gradient step of size 2
    clamped to [0, 1], then the loss again with those slopes (as its training step does)."""
    import torch

    loss = paper_loss(model, x, y, eps)
    start = model.lower_d_list
    grads = torch.autograd.grad(loss, start)
    slopes = [torch.clamp(d - 2 * g.sign(), 0, 1).detach() for d, g in zip(start, grads)]
    return paper_loss(model, x, y, eps, slopes)


def run_paper(args) -> dict:
    import torch
    import torch.nn.functional as F

    from bounds import robust_cross_entropy

    setup(args)
    model_defs, bound_layers = paper_modules(args.paper_code)
    x_all, y_all, _, _, source = load_batch(80)
    x, y = x_all[:80], y_all[:80]
    eps = args.eps
    ours = build("model-small", (0.0,), (1.0,))  # the paper's MNIST setting: no input normalisation
    crown = {k: False for k in ("same-slope", "zero-lb", "one-lb", "binary", "ours", "uniform")}
    theirs_c = paper_model(ours, model_defs, bound_layers, dict(crown))
    theirs_t = paper_model(ours, model_defs, bound_layers, dict(crown, ours=True))
    opts = {
        name: torch.optim.Adam(m.parameters(), lr=5e-4)
        for name, m in (("ours", ours), ("paper_c", theirs_c), ("paper_t", theirs_t))
    }
    state = {k: [p.detach().clone() for p in o.param_groups[0]["params"]] for k, o in opts.items()}

    def with_adam(key: str, loss_fn):
        def step():
            opt = opts[key]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            opt.step()
            with torch.no_grad():  # every round starts from the same weights
                for p, p0 in zip(opt.param_groups[0]["params"], state[key]):
                    p.copy_(p0)
            return loss

        return step

    def ours_loss(slope, comp=False):
        def fn():
            F.cross_entropy(ours(x), y)  # the clean forward of a training step
            return robust_cross_entropy(
                ours,
                x,
                y,
                eps,
                "crown-ibp",
                slope,
                domain=None,
                compile=comp,
                generator=torch.Generator().manual_seed(0),
            )

        return fn

    fns = {
        "natural (ours)": with_adam("ours", lambda: F.cross_entropy(ours(x), y)),
        "crown-ibp (ours)": with_adam("ours", ours_loss("adaptive")),
        "crown-ibp (paper code)": with_adam("paper_c", lambda: paper_loss(theirs_c, x, y, eps)),
        "tightest (ours)": with_adam("ours", ours_loss("tightest")),
        "tightest (paper code)": with_adam(
            "paper_t", lambda: paper_tightest_loss(theirs_t, x, y, eps)
        ),
    }
    if not args.no_compile:
        fns["crown-ibp (ours, compiled)"] = with_adam("ours", ours_loss("adaptive", True))
        fns["tightest (ours, compiled)"] = with_adam("ours", ours_loss("tightest", True))
    values = {k: float(fn().detach()) for k, fn in fns.items()}
    out = {"load_before": load(), "data": source, "eps": eps, "values": values}
    out.update(timed(fns, args.repeats, lambda: None))
    out["load_after"] = load()
    return out


def fmt_paper(r: dict) -> str:
    w, c = r["wall"], r["cpu"]
    lines = [
        f"\n## 2. the paper code's setting: model_small, batch 80 ({r['data']}), eps {r['eps']}, unclipped box, "
        "clean forward + loss + backward + Adam step",
        f"{r['load_before']} (before), {r['load_after']} (after)",
    ]
    for k in w:
        lines.append(
            f"{k:28s} {w[k] * 1e3:8.1f} ms  {w[k] / w['natural (ours)']:6.2f}x natural "
            f"({c[k] / c['natural (ours)']:5.2f}x cpu)  loss {r['values'][k]:.4f}"
        )
    for m in ("crown-ibp", "tightest"):
        for ours in (f"{m} (ours)", f"{m} (ours, compiled)"):
            if ours in w:
                b = f"{m} (paper code)"
                lines.append(
                    f"{ours:28s} / paper code = {w[ours] / w[b]:.2f} wall, {c[ours] / c[b]:.2f} cpu, "
                    f"{paired(r, ours, b):.2f} paired"
                )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- 3. compile time


def run_compile(args) -> dict:
    """First and steady compiled steps in this process (whose disk cache the parent chose)."""
    import torch

    from bounds import robust_cross_entropy

    setup(args)
    x_all, y_all, mean, std, _ = load_batch(args.batch)
    x, y = x_all[: args.batch], y_all[: args.batch]
    model = build("dm-small", mean, std)
    out = {"load_before": load()}
    for label, method, slope in (
        ("ibp", "ibp", None),
        ("crown-ibp", "crown-ibp", "adaptive"),
        ("tightest", "crown-ibp", "tightest"),
    ):
        times = []
        for _ in range(3):
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            robust_cross_entropy(
                model,
                x,
                y,
                args.eps,
                method,
                slope,
                compile=True,
                generator=torch.Generator().manual_seed(0),
            ).backward()
            times.append(time.perf_counter() - t0)
        out[label] = {"first": times[0], "steady": min(times[1:])}
    from torch._dynamo.utils import counters

    out["cache"] = {k: v for k, v in counters["inductor"].items() if k.startswith("fxgraph_cache")}
    out["load_after"] = load()
    return out


def fmt_compile(cold: dict, warm: dict) -> str:
    lines = [
        "\n## 3. compile time (compile=True, dm-small, batch 256): first step in a fresh process",
        f"cold: {cold['load_before']}; warm: {warm['load_before']}",
        f"{'step':10s} {'empty cache':>14s} {'warm cache':>12s} {'steady step':>12s}"
        "   (seconds; compile = first - steady)",
    ]
    for k in ("ibp", "crown-ibp", "tightest"):
        lines.append(
            f"{k:10s} {cold[k]['first']:14.1f} {warm[k]['first']:12.1f} "
            f"{min(cold[k]['steady'], warm[k]['steady']):12.2f}"
        )
    lines.append(f"inductor FX-graph cache, cold: {cold['cache']}, warm: {warm['cache']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- 4. extras


EXTRA_SLOPES = (
    "adaptive",
    "zero",
    "one",
    "same-slope",
    "uniform",
    "binary",
    "optimized",
    "tightest",
)


def loss_configs() -> list[tuple[str, str, object]]:
    out = [("ibp", "adaptive", False)]
    for fused in (False, True, "min"):
        out += [("crown-ibp", s, fused) for s in EXTRA_SLOPES]
    return out


def certified_losses(model, x, y, eps: float, cfgs, opt_steps: int) -> dict:
    import torch

    from bounds import robust_cross_entropy

    out = {}
    with torch.no_grad():
        for method, slope, fused in cfgs:
            loss = robust_cross_entropy(
                model,
                x,
                y,
                eps,
                method,
                slope,
                fused=fused,
                opt_steps=opt_steps,
                generator=torch.Generator().manual_seed(0),
            )
            out[f"{method}|{slope}|{fused}"] = float(loss)
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
        loss = 0.5 * F.cross_entropy(model(xb), yb) + 0.5 * robust_cross_entropy(
            model, xb, yb, e, "ibp"
        )
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
    res = {
        f: {
            "vs_start": 0,
            "vs_adaptive": 0,
            "ties_start": 0,
            "sample_vs_start": [0, 0],
            "sample_vs_adaptive": [0, 0],
        }
        for f in ("unfused", "fused")
    }
    for i in range(n_nets):
        torch.manual_seed(seed * 100003 + i)
        d = int(torch.randint(2, 9, (1,), generator=g))
        widths = [
            int(torch.randint(4, 33, (1,), generator=g))
            for _ in range(int(torch.randint(1, 4, (1,), generator=g)))
        ]
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
                start = robust_cross_entropy(
                    model, x, y, slope="uniform", generator=torch.Generator().manual_seed(i), **kw
                )
                tight = robust_cross_entropy(
                    model, x, y, slope="tightest", generator=torch.Generator().manual_seed(i), **kw
                )
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


def run_extras(args) -> dict:
    """The MLP's crown/cap steps, certified losses at initialisation and after a short IBP
    training, and the tightest-slope statistics over random networks."""
    import torch.nn.functional as F

    from bounds import robust_cross_entropy

    setup(args)
    x_all, y_all, mean, std, source = load_batch(args.batch)
    x, y = x_all[: args.batch], y_all[: args.batch]
    mlp = build("mlp", mean, std, widths=(128, 128))
    fns = {"natural": lambda: F.cross_entropy(mlp(x), y).backward()}
    for method, slope in (
        ("ibp", None),
        ("crown-ibp", "adaptive"),
        ("crown", "adaptive"),
        ("cap", None),
    ):
        fns[method] = lambda m=method, s=slope: robust_cross_entropy(
            mlp, x, y, args.eps, m, s
        ).backward()
    out = {
        "load_before": load(),
        "data": source,
        "mlp": timed(fns, max(2, args.repeats // 3), lambda: mlp.zero_grad()),
    }
    model = build("dm-small", mean, std)
    le, cfgs = 0.02, loss_configs()
    out["loss_init"] = certified_losses(model, x, y, le, cfgs, 20)
    out["unstable_init"] = unstable_fraction(model, x, le)
    out["acc_trained"] = train_ibp(model, x_all, y_all, le, 60, min(128, args.batch))
    out["loss_trained"] = certified_losses(model, x, y, le, cfgs, 20)
    out["unstable_trained"] = unstable_fraction(model, x, le)
    out["tightest"] = tightest_stats(200)
    out["load_after"] = load()
    return out


def fmt_extras(r: dict) -> str:
    w, c = r["mlp"]["wall"], r["mlp"]["cpu"]
    lines = [
        "\n## 4. extras",
        f"{r['load_before']} (before), {r['load_after']} (after)",
        "MLP (128, 128), loss + backward: "
        + ", ".join(
            f"{k} {w[k] / w['natural']:.1f}x ({c[k] / c['natural']:.1f}x cpu)"
            for k in w
            if k != "natural"
        ),
        f"mean certified loss, dm-small, eps 0.02: init -> after 60 IBP steps (clean train acc "
        f"{r['acc_trained']:.3f}; IBP-unstable ReLUs {r['unstable_init']:.3f} -> {r['unstable_trained']:.3f})",
    ]
    for key in r["loss_init"]:
        method, slope, fused = key.split("|")
        lines.append(
            f"{method:10s} {slope:11s} fused={fused:5s} {r['loss_init'][key]:9.4f} -> {r['loss_trained'][key]:9.4f}"
        )
    t = r["tightest"]
    lines.append(
        f"tightest vs its random start and vs adaptive (crown-ibp), {t['n_nets']} random MLPs"
    )
    for key in ("unfused", "fused"):
        s = t[key]
        lines.append(
            f"{key:8s} nets with lower mean loss: vs start {s['vs_start']}/{t['n_nets']} (ties {s['ties_start']}), "
            f"vs adaptive {s['vs_adaptive']}/{t['n_nets']}; samples: vs start {s['sample_vs_start'][0]}/"
            f"{s['sample_vs_start'][1]}, vs adaptive {s['sample_vs_adaptive'][0]}/{s['sample_vs_adaptive'][1]}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- driver


def child(args, role: str, python: str | None = None, env_extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in MMAP_ENV}
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env["PYTHONPATH"] = os.pathsep.join([_ROOT, env.get("PYTHONPATH", "")])
    env.update(env_extra or {})
    cmd = [python or sys.executable, os.path.abspath(__file__), "--child", role, *args.passthrough]
    print(f"running {role} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{role} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--allocator", choices=("tuned", "default"), default="tuned")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--no-compile", action="store_true", help="skip the compiled steps and the compile times"
    )
    p.add_argument(
        "--lirpa-python", help="interpreter of an environment with auto_LiRPA installed (section 1)"
    )
    p.add_argument(
        "--paper-code", help="checkout of the paper's repository (section 2; skipped without it)"
    )
    p.add_argument(
        "--extras",
        action="store_true",
        help="also the MLP crown/cap steps, losses and tightest statistics",
    )
    p.add_argument("--json", help="write the raw results here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.passthrough = [
        "--allocator",
        args.allocator,
        "--batch",
        str(args.batch),
        "--eps",
        str(args.eps),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
    ]
    if args.no_compile:
        args.passthrough.append("--no-compile")
    if args.paper_code:
        args.passthrough += ["--paper-code", args.paper_code]
    if args.child:
        run = {"steps": run_steps, "paper": run_paper, "compile": run_compile, "extras": run_extras}
        print(json.dumps(run[args.child](args)))
        return 0
    print(f"# benchmarks/bounds.py, {time.strftime('%Y-%m-%d %H:%M')}; {load()}")
    results = {"steps": child(args, "steps", args.lirpa_python)}
    print(fmt_steps(results["steps"]), flush=True)
    if args.paper_code:
        results["paper"] = child(args, "paper")
        print(fmt_paper(results["paper"]), flush=True)
    else:
        print("\n## 2. the paper code's setting: skipped (no --paper-code DIR)")
    if not args.no_compile:
        with tempfile.TemporaryDirectory(prefix="landscape-compile-") as cache:
            env = {"LANDSCAPE_COMPILE_CACHE": cache}
            cold = child(args, "compile", env_extra=env)
            warm = child(args, "compile", env_extra=env)
        results["compile"] = {"cold": cold, "warm": warm}
        print(fmt_compile(cold, warm), flush=True)
    if args.extras:
        results["extras"] = child(args, "extras")
        print(fmt_extras(results["extras"]), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
