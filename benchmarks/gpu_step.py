"""One timing of a certified training step on the GPU: CNN7 (with BatchNorm, Shi et al. 2021) on
CIFAR-10-shaped inputs (random images 3x32x32, 10 classes), eps 8/255, batch 128.

Each step is forward + certified loss + backward (lower bounds only), timed with
``torch.cuda.synchronize()`` around it: IBP and CROWN-IBP of the engine against a natural step
(cross-entropy + backward) on the same model and batch, and auto_LiRPA's IBP and CROWN-IBP on the
same model, box and margin specification when ``auto_LiRPA`` can be imported. Prints the median
milliseconds over ``--repeats`` interleaved rounds (after ``--warmup`` calls each) and the ratio
to the natural step, and one JSON line with the numbers. ``benchmarks/gpu_check.sh`` runs it.

    .venv/bin/python benchmarks/gpu_step.py                     # cuda
    .venv/bin/python benchmarks/gpu_step.py --device cpu --batch 8 --repeats 2   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--eps", type=float, default=8 / 255)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from bounds import margin_spec, robust_cross_entropy
    from train.models import build_model

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("Error: no CUDA GPU visible (run with --device cpu for a smoke test)")
    torch.manual_seed(0)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    model = (
        build_model("cnn7", input_shape=(3, 32, 32), n_classes=10, mean=mean, std=std)
        .to(dev)
        .train()
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32, generator=gen).to(dev)
    y = torch.randint(0, 10, (args.batch,), generator=gen).to(dev)
    eps = args.eps

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def natural():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    def engine(method: str, slope: str | None) -> Callable:
        def step():
            loss = robust_cross_entropy(model, x, y, eps, method, slope, domain=(0.0, 1.0))
            loss.backward()
            return loss

        return step

    fns: dict[str, Callable] = {
        "natural": natural,
        "ibp": engine("ibp", None),
        "crown-ibp": engine("crown-ibp", "adaptive"),
    }
    notes = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

            bounded = BoundedModule(model, torch.zeros_like(x[:1]), device=dev.type)
            ptb = PerturbationLpNorm(
                norm=float("inf"), eps=eps, x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1)
            )
            C = margin_spec(y, 10)
            zeros = torch.zeros(x.shape[0], dtype=torch.long, device=dev)

            def lirpa(method: str) -> Callable:
                def step():
                    lb, _ = bounded.compute_bounds(
                        x=(BoundedTensor(x, ptb),), C=C, method=method, bound_upper=False
                    )
                    loss = F.cross_entropy(torch.cat([torch.zeros_like(lb[:, :1]), -lb], 1), zeros)
                    loss.backward()
                    return loss

                return step

            fns["auto_LiRPA ibp"] = lirpa("IBP")
            fns["auto_LiRPA crown-ibp"] = lirpa("CROWN-IBP")
    except Exception as exc:  # not installed, or it cannot take this model
        notes.append(f"auto_LiRPA rows skipped: {type(exc).__name__}: {exc}")

    rounds: dict[str, list[float]] = {k: [] for k in fns}
    values = {}
    for k, fn in fns.items():
        for _ in range(args.warmup):
            model.zero_grad(set_to_none=True)
            values[k] = float(fn().detach())
        sync()
    for _ in range(args.repeats):
        for k, fn in fns.items():
            model.zero_grad(set_to_none=True)
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            rounds[k].append(time.perf_counter() - t0)
    ms = {k: 1e3 * statistics.median(v) for k, v in rounds.items()}
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(
        f"CNN7 (BatchNorm), CIFAR-10-shaped batch {args.batch}, eps {eps:.4g}, on {name}, torch {torch.__version__}"
    )
    print(f"{'step':24s} {'ms (median)':>12s} {'x natural':>10s} {'loss':>10s}")
    for k in fns:
        print(f"{k:24s} {ms[k]:12.2f} {ms[k] / ms['natural']:10.2f} {values[k]:10.4f}")
    for k in ("ibp", "crown-ibp"):
        if f"auto_LiRPA {k}" in ms:
            print(f"{k}: auto_LiRPA / engine = {ms[f'auto_LiRPA {k}'] / ms[k]:.2f}")
    for n in notes:
        print("note:", n)
    print(
        json.dumps(
            {"device": name, "batch": args.batch, "ms": ms, "values": values, "notes": notes}
        )
    )


if __name__ == "__main__":
    main()
