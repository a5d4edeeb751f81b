"""Shared helpers for the investigation scripts (toolkit snapshot + paper code side by side)."""

import importlib
import os
import sys
import types

import torch
from torch import nn

PAPER = os.environ.get("PAPER_CODE", "")  # a checkout of sungyoon-lee/LossLandscapeMatters

from bounds.layers import Normalize  # noqa: E402


def toolkit_model() -> nn.Sequential:
    """The paper's model_small on 28x28 (padding 1) in the toolkit's form; torch default init."""
    return nn.Sequential(
        Normalize(mean=[0.0], std=[1.0]),
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=1, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 13 * 13, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def paper_modules():
    """Import the paper code's bound_layers / model_defs_fm with torchvision stubbed and cuda no-op."""
    if "bound_layers" in sys.modules:
        return sys.modules["bound_layers"], sys.modules["model_defs_fm"]
    for name in (
        "torchvision",
        "torchvision.datasets",
        "torchvision.transforms",
        "torchvision.transforms.functional",
    ):
        sys.modules.setdefault(name, types.ModuleType(name))
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.cuda.FloatTensor = torch.FloatTensor
    if PAPER not in sys.path:
        sys.path.append(PAPER)
    bl = importlib.import_module("bound_layers")
    md = importlib.import_module("model_defs_fm")
    return bl, md


def copy_paper_to_toolkit(paper_seq, tk_model):
    """Copy weights of a paper (Bound)Sequential into the toolkit model (same layer order)."""
    src = [m for m in paper_seq if isinstance(m, (nn.Conv2d, nn.Linear))]
    dst = [m for m in tk_model if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(src) == len(dst)
    with torch.no_grad():
        for s, d in zip(src, dst):
            d.weight.copy_(s.weight)
            d.bias.copy_(s.bias)


def load_fmnist():
    from train.data import load_dataset

    return load_dataset("fashion-mnist", data_dir="/usr/share/datasets/fashion-mnist")


def evaluate(model, x, y, eps, method, slope=None, batch=400, domain=None, seed=0):
    """Clean error and verified error (own bound, eps-ball unclipped unless domain) on (x, y)."""
    from bounds import compute_bounds, margin_spec

    model.eval()
    wrong = unver = 0
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, len(y), batch):
        xb, yb = x[i : i + batch], y[i : i + batch]
        with torch.no_grad():
            logits = model(xb)
            wrong += int((logits.argmax(1) != yb).sum())
            C = margin_spec(yb, 10)
            res = compute_bounds(
                model,
                xb,
                eps,
                method=method,
                slope=slope,
                C=C,
                y=yb,
                beta=1.0,
                domain=domain,
                need_upper=False,
                generator=gen,
            )
            unver += int((res.lower <= 0).any(1).sum())
    model.train()
    return wrong / len(y), unver / len(y)


def paper_state_to_toolkit(sd):
    """State dict of the paper's model_small28 (keys 0,2,5,7) -> toolkit model (keys 1,3,6,8)."""
    m = toolkit_model()
    mp = {"0": "1", "2": "3", "5": "6", "7": "8"}
    m.load_state_dict(
        {f"{mp[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in sd.items()}, strict=False
    )
    return m
