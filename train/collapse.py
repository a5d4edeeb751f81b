"""Noticing a collapsed run: a model that predicts one class for most of the test set, or a
certified loss stuck at ``log(n_classes)`` together with the clean loss (every margin bound
and every margin 0: the network's outputs no longer depend on its input; a certified loss
alone near ``log(n_classes)`` is common mid-ramp and means nothing). Both usually mean eps grew
before the network had learnt anything. The training loop records them at every evaluated epoch
(epoch column ``collapsed``)
and reports one warning (``TrainResult.warnings``) only when the run ends collapsed: a run that
collapses for an epoch or two mid-ramp and recovers is not warned about."""

from __future__ import annotations

import math

import torch
from torch import nn

#: A class predicted for at least this share of the test samples (and for at least twice the
#: share of the most common true class) means the model has collapsed.
MAJORITY_SHARE = 0.5
#: Training certified and clean losses both within this relative distance of log(n_classes)
#: are stuck there.
STUCK_TOLERANCE = 0.01

ADVICE = (
    "a longer eps ramp (--eps-ramp-epochs), a later start (--eps-start-epoch) or a smaller --lr "
    "usually fixes it"
)


def majority_share(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512
) -> tuple[int, float, float]:
    """``(class, share, true_share)``: the class the model predicts most often on ``x``, the
    share of samples predicted as it, and the share of the most common true label in ``y``."""
    was_training = model.training
    model.eval()
    preds = []
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            preds.append(model(x[s : s + batch_size]).argmax(1).cpu())
    model.train(was_training)
    pred = torch.cat(preds)
    counts = torch.bincount(pred)
    top = int(counts.argmax())
    true_share = float(torch.bincount(y.cpu()).max()) / len(y)
    return top, float(counts[top]) / len(pred), true_share


def collapse_warning(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    robust_ce: float | None,
    clean_ce: float | None,
    when: str,
) -> str | None:
    """One warning line when the run has collapsed (see the module docstring), else None.

    ``x``, ``y``: test samples; ``robust_ce``, ``clean_ce``: the training certified and clean
    cross-entropy over the last epoch (None or NaN when not measured); ``when``: where in
    training, e.g. ``"after epoch 3"``.
    """
    if len(x) == 0:
        return None
    top, share, true_share = majority_share(model, x, y)
    if share >= max(MAJORITY_SHARE, 2.0 * true_share):
        return (
            f"the model predicts class {top} for {100 * share:.0f}% of the test samples {when}: training has "
            f"collapsed; {ADVICE}"
        )
    stuck = math.log(n_classes)

    def at_log_n(value: float | None) -> bool:
        return (
            value is not None
            and math.isfinite(value)
            and abs(value - stuck) <= STUCK_TOLERANCE * stuck
        )

    if at_log_n(robust_ce) and at_log_n(clean_ce):
        return (
            f"the certified loss is stuck at log({n_classes}) = {stuck:.3f} {when}: every margin bound is 0, "
            f"the network's outputs no longer depend on its input; {ADVICE}"
        )
    return None


class CollapseWatch:
    """Follows the collapse warnings of the evaluated epochs and gives the one to report at the
    end: the last epoch's, saying since which epoch the run has stayed collapsed (None when the
    last evaluated epoch was fine, however many earlier ones collapsed)."""

    def __init__(self) -> None:
        self.last: str | None = None
        self.since: int | None = None

    def update(self, warning: str | None, epoch: int) -> str | None:
        """``warning``: :func:`collapse_warning` after (1-based) ``epoch``, or None; returned."""
        self.last = warning
        self.since = None if warning is None else (self.since or epoch)
        return warning

    def final(self, epoch: int) -> str | None:
        if self.last is None:
            return None
        since = (
            f" (collapsed since epoch {self.since})"
            if self.since is not None and self.since < epoch
            else ""
        )
        return self.last.replace(
            ": training has collapsed;", f"{since}: training has collapsed;", 1
        )
