"""``cap`` is one bound everywhere (CROWN-IBP with same-slope lines at beta = 1, as the training
method and Lee et al. 2021 use it), and full CROWN refuses, before it allocates, a batch whose
differentiable intermediate passes would not fit in memory."""

from __future__ import annotations

import pytest
import torch

from bounds import compute_bounds, memory, robust_cross_entropy
from train.models import build_model


def _model_small() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("model-small", (1, 28, 28), 10, (0.0,), (1.0,))


def test_cap_equals_crown_ibp_with_same_slopes_on_model_small_at_batch_80() -> None:
    model = _model_small()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(80, 1, 28, 28, generator=g), torch.randint(0, 10, (80,), generator=g)
    cap = robust_cross_entropy(model, x, y, 0.1, method="cap", slope="same-slope", domain=None)
    cib = robust_cross_entropy(
        model, x, y, 0.1, method="crown-ibp", slope="same-slope", domain=None
    )
    assert torch.isfinite(cap) and abs(cap.detach().item() - cib.detach().item()) <= 1e-5
    fused = robust_cross_entropy(model, x[:8], y[:8], 0.1, method="cap", domain=None, fused=True)
    fused_cib = robust_cross_entropy(
        model, x[:8], y[:8], 0.1, method="crown-ibp", slope="same-slope", domain=None, fused=True
    )
    assert abs(fused.detach().item() - fused_cib.detach().item()) <= 1e-5


def test_cap_ignores_beta_as_the_training_method_does() -> None:
    model = _model_small()
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    a = compute_bounds(model, x, 0.05, method="cap", beta=0.2)
    b = compute_bounds(model, x, 0.05, method="crown-ibp", slope="same-slope", beta=1.0)
    assert torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper)


def test_full_crown_refuses_a_batch_that_does_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model_small()
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
    monkeypatch.setattr(memory, "available_memory", lambda device: 2**30)  # 1 GiB free
    with pytest.raises(
        MemoryError,
        match=r"about \d+\.\d GiB .* more than the 1\.0 GiB available; use "
        r"method='crown-ibp'",
    ):
        robust_cross_entropy(model, x, y, 0.1, method="crown", slope="same-slope", domain=None)
    with torch.no_grad():  # without gradients one chunk at a time: no refusal
        lower = compute_bounds(
            model, x[:2], 0.1, method="crown", slope="same-slope", domain=None
        ).lower
    assert torch.isfinite(lower).all()


def test_the_estimate_grows_with_the_batch_and_is_about_the_measured_peak() -> None:
    """model_small at batch 4 kept 2.7-2.8 GiB (peak RSS) for the backward pass when measured;
    the estimate must stay within a factor 2 of that and grow linearly with the batch (at batch
    80, the paper code's, it is tens of GiB: more than a 24 GiB machine has)."""
    from bounds.interval import ibp, input_box
    from bounds.network import layer_ops

    model = _model_small()
    est = {}
    for B in (4, 8):
        x = torch.rand(B, 1, 28, 28, generator=torch.Generator().manual_seed(B))
        ops = layer_ops(model, (1, 28, 28), x.dtype, x.device, x=x)
        c, r = input_box(x, 0.1, None)
        est[B] = memory.crown_memory_estimate(ops, ibp(ops, c, r, None).preact, c)
    assert 1.4 * 2**30 < est[4] < 5.6 * 2**30
    assert 1.6 < est[8] / est[4] < 2.4


def test_the_command_line_gives_one_error_line(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from landscape.cli import main

    monkeypatch.setattr(memory, "available_memory", lambda device: 1024)  # 1 KiB free
    code = main(
        [
            "train",
            "--dataset",
            "digits",
            "--model",
            "cnn-tiny",
            "--method",
            "crown",
            "--epochs",
            "1",
            "--eps",
            "0.3",
            "--eps-start-epoch",
            "0",
            "--eps-ramp-epochs",
            "0",
            "--train-size",
            "64",
            "--test-size",
            "16",
            "--eval-size",
            "0",
            "--out",
            str(tmp_path / "r"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.count("Error: full CROWN bounds") == 1 and "method='crown-ibp'" in err
