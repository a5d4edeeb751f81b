"""Standard attacks from a maintained library: AutoAttack and APGD (Croce and Hein 2020) of the
Adversarial Robustness Toolbox (ART), on the same clipped L-inf ball as the toolkit's PGD.

``make_attack(name, eps, domain)`` returns ``attack(model, x, y) -> x_adv`` ``[N, *shape]``:

- ``autoattack``: ART's AutoAttack with its default ensemble (APGD on the cross-entropy, APGD on
  the difference-of-logits ratio, DeepFool, Square), untargeted, L-inf, ``eps``;
- ``apgd-ce``: APGD on the cross-entropy (100 iterations, 5 random starts);
- ``apgd-t``: targeted APGD on the difference-of-logits ratio against each of the 9 classes
  (or all wrong classes, if fewer) with the largest clean logits after the label; a sample's
  example is the first target's that misclassifies it.

ART projects onto ``[x - eps, x + eps]`` and clips to ``clip_values = domain``: the clipped ball.
The optional dependency is installed by ``pip install 'cert-landscape[attack]'``; without it
:func:`make_attack` raises ImportError with that line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["make_attack", "ART_ATTACKS"]

ART_ATTACKS = ("autoattack", "apgd-ce", "apgd-t")


class _Float32(nn.Module):
    """The model on float32 inputs (ART hands float32 arrays), whatever its own dtype."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.dtype = next(model.parameters()).dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


def _import_art():
    try:
        import art  # noqa: F401
        from art.attacks.evasion import AutoAttack, AutoProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier
    except ImportError as exc:
        raise ImportError(
            f"--attack needs the Adversarial Robustness Toolbox ({exc}); install it with "
            "pip install 'cert-landscape[attack]'"
        ) from None
    return AutoAttack, AutoProjectedGradientDescent, PyTorchClassifier


def make_attack(
    name: str, eps: float, domain: Sequence[float], seed: int = 0, batch_size: int = 256
) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The attack ``name`` (one of :data:`ART_ATTACKS`) at radius ``eps`` on ``domain``; see the
    module docstring. ValueError for another name, ImportError without ART."""
    if name not in ART_ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {', '.join(ART_ATTACKS)}")
    AutoAttack, APGD, PyTorchClassifier = _import_art()
    eps = float(eps)

    def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if eps == 0:
            return x.clone()
        np.random.seed(seed)
        torch.manual_seed(seed)
        model.eval()
        with torch.no_grad():
            logits = model(x)
        n_classes = int(logits.shape[1])
        clf = PyTorchClassifier(
            _Float32(model),
            loss=nn.CrossEntropyLoss(),
            input_shape=tuple(x.shape[1:]),
            nb_classes=n_classes,
            clip_values=(float(domain[0]), float(domain[1])),
            device_type="cpu",
        )
        xs = x.detach().float().numpy()
        ys = y.numpy()
        step = eps / 4
        if name == "autoattack":
            att = AutoAttack(clf, norm=np.inf, eps=eps, eps_step=step, batch_size=batch_size)
            return torch.from_numpy(att.generate(xs, y=ys)).to(x.dtype)
        if name == "apgd-ce":
            att = APGD(
                clf,
                norm=np.inf,
                eps=eps,
                eps_step=step,
                max_iter=100,
                nb_random_init=5,
                batch_size=batch_size,
                loss_type="cross_entropy",
                verbose=False,
            )
            return torch.from_numpy(att.generate(xs, y=ys)).to(x.dtype)
        # apgd-t: one targeted run per target class, the most likely wrong classes first
        out = xs.copy()
        broken = np.zeros(len(xs), dtype=bool)
        order = logits.masked_fill(
            nn.functional.one_hot(y, n_classes).bool(), float("-inf")
        ).argsort(1, descending=True)
        att = APGD(
            clf,
            norm=np.inf,
            eps=eps,
            eps_step=step,
            max_iter=100,
            targeted=True,
            nb_random_init=1,
            batch_size=batch_size,
            loss_type="difference_logits_ratio",
            verbose=False,
        )
        for r in range(min(9, n_classes - 1)):
            todo = np.nonzero(~broken)[0]
            if todo.size == 0:
                break
            target = order[todo, r].numpy()
            adv = att.generate(xs[todo], y=np.eye(n_classes, dtype=np.float32)[target])
            with torch.no_grad():
                pred = model(torch.from_numpy(adv).to(x.dtype)).argmax(1).numpy()
            hit = pred != ys[todo]
            out[todo[hit]] = adv[hit]
            broken[todo[hit]] = True
        return torch.from_numpy(out).to(x.dtype)

    return attack
