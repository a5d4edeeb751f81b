"""The training loop: every method learns, resume is bit-exact, callbacks see the raw step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bounds import Normalize, margin_ce
from train.callbacks import BaseCallback, StepContext
from train.config import TrainConfig
from train.data import load_dataset
from train.loop import train
from train.objective import certified_loss
from train.recorder import ScalarRecorder


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_size=128, test_size=64, seed=0)


def small_config(method: str, **kw) -> TrainConfig:
    base = dict(
        dataset="digits",
        model="mlp",
        model_options={"widths": [32, 32]},
        method=method,
        eps=0.02,
        epochs=4,
        batch_size=32,
        lr=3e-3,
        eps_ramp_epochs=0,
        kappa_start=0.0,
        kappa_end=0.0,
        eval_size=0,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize(
    "method, fused",
    [
        ("natural", False),
        ("ibp", False),
        ("crown-ibp", False),
        ("crown", False),
        ("cap", False),
        ("tightest", False),
        ("crown-ibp", True),
    ],
)
def test_every_method_decreases_its_loss(digits, method: str, fused: bool) -> None:
    rec = ScalarRecorder()
    train(small_config(method, fused_loss=fused), callbacks=[rec], progress=False, data=digits)
    loss = rec.table()["loss"]
    assert len(loss) == 16 and np.isfinite(loss).all()
    assert loss[-4:].mean() < loss[:4].mean() - 0.02, loss


def test_other_slope_policy_trains(digits) -> None:
    rec = ScalarRecorder()
    res = train(
        small_config("crown-ibp", slope="zero", epochs=2),
        callbacks=[rec],
        progress=False,
        data=digits,
    )
    assert res.step == 8 and np.isfinite(rec.table()["loss"]).all()


def test_loss_is_kappa_mix_and_stats(digits) -> None:
    model = nn.Sequential(
        Normalize([0.3], [0.4]), nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)
    )
    x, y = digits.train_x[:16], digits.train_y[:16]
    clean, s0 = certified_loss(model, x, y, 0.05, method="natural")
    rob, s1 = certified_loss(model, x, y, 0.05, method="ibp", kappa=0.0)
    mix, s2 = certified_loss(model, x, y, 0.05, method="ibp", kappa=0.25)
    assert mix.item() == pytest.approx(0.25 * clean.item() + 0.75 * rob.item(), rel=1e-5)
    assert s1["robust_ce"] == pytest.approx(rob.item(), rel=1e-6)
    assert 0.0 <= s1["clean_err"] <= s1["robust_err"] <= 1.0
    assert 0.0 <= s1["unstable_frac_l0"] <= 1.0 and math.isnan(s0["robust_err"])
    # CE of the negated margin lower bounds equals logsumexp([0, -lb])
    lb = torch.tensor([[1.0, -2.0, 0.5]])
    assert float(margin_ce(lb, reduction="mean")) == pytest.approx(
        math.log(1 + math.exp(-1) + math.exp(2) + math.exp(-0.5))
    )
    with pytest.raises(ValueError, match="unknown training method"):
        certified_loss(model, x, y, 0.1, method="pgd")


def test_resume_equals_uninterrupted_bit_exact(digits, tmp_path) -> None:
    cfg = small_config(
        "tightest", epochs=3, eps_ramp_epochs=2, kappa_start=1.0, eps_schedule="smooth"
    )
    full = train(cfg, progress=False, data=digits, out_dir=tmp_path / "full")
    part_cfg = cfg.replace(epochs=1)
    train(part_cfg, progress=False, data=digits, out_dir=tmp_path / "part")
    resumed = train(
        cfg,
        progress=False,
        data=digits,
        out_dir=tmp_path / "part",
        resume_from=tmp_path / "part" / "checkpoint_epoch1.pt",
    )
    assert resumed.step == full.step == 12
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="different config"):
        train(
            cfg.replace(eps=0.05),
            progress=False,
            data=digits,
            resume_from=tmp_path / "part" / "checkpoint_epoch1.pt",
        )


class Inspector(BaseCallback):
    """Checks the protocol: grads present, params not yet stepped, loss_fn repeats the loss."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.epochs: list[int] = []
        self.ended = False

    def on_step(self, ctx: StepContext) -> None:
        assert all(p.grad is not None for p in ctx.model.parameters())
        before = [p.detach().clone() for p in ctx.model.parameters()]
        again = ctx.loss_fn(ctx.model)
        assert float(again.detach()) == pytest.approx(ctx.loss, rel=1e-6, abs=1e-7)
        final = ctx.final_loss_fn(ctx.model)
        assert math.isfinite(float(final.detach()))
        # the gradient of loss_fn equals the gradient the step will use
        grads = torch.autograd.grad(again, list(ctx.model.parameters()))
        for g, p in zip(grads, ctx.model.parameters()):
            assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6)
        assert all(torch.equal(a, p) for a, p in zip(before, ctx.model.parameters()))
        assert ctx.optimizer.param_groups[0]["lr"] == ctx.lr and ctx.method == "tightest"
        self.steps.append(ctx.step)

    def on_epoch_end(self, epoch, model, metrics) -> None:
        self.epochs.append(epoch)

    def on_train_end(self, model, metrics) -> None:
        self.ended = True


def test_callback_protocol_and_sink(digits) -> None:
    rows: dict[str, list] = {}

    def sink(group, cols):
        rows.setdefault(group, []).append(cols)

    insp = Inspector()
    cfg = small_config(
        "tightest", epochs=2, record_every=3, grad_every=4, eps_ramp_epochs=1, kappa_start=1.0
    )
    train(cfg, callbacks=[insp], sink=sink, progress=False, data=digits)
    assert insp.steps == list(range(8)) and insp.epochs == [0, 1] and insp.ended
    steps = {k: np.concatenate([c[k] for c in rows["steps"]]) for k in rows["steps"][0]}
    assert steps["step"].tolist() == list(range(8)) and steps["step"].dtype == np.int64
    for name in (
        "loss",
        "robust_ce",
        "clean_err",
        "robust_err",
        "grad_norm",
        "eps",
        "beta",
        "kappa",
        "lr",
        "wall_time",
        "unstable_frac_l0",
        "unstable_frac_l1",
    ):
        assert steps[name].dtype == np.float32 and len(steps[name]) == 8, name
    assert steps["eps"][0] == 0.0 and steps["eps"][-1] == pytest.approx(0.02)
    assert steps["kappa"][0] == 1.0 and steps["kappa"][-1] == 0.0
    assert np.all(np.diff(steps["wall_time"]) >= 0)
    grads = rows["grads"]
    assert np.concatenate([g["step"] for g in grads]).tolist() == [0, 4]
    n_params = sum(
        p.numel()
        for p in train(cfg.replace(epochs=1), progress=False, data=digits).model.parameters()
    )
    assert grads[0]["grad"].dtype == np.float16 and grads[0]["grad"].shape[1] == n_params
    assert len(rows["epochs"]) == 2 and int(rows["epochs"][1]["epoch"][0]) == 1


def test_hand_built_model_natural_and_diverging_loss(digits) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Normalize([0.3], [0.4]), nn.Flatten(), nn.Linear(64, 10))
    res = train(
        small_config("natural", epochs=3, lr=0.05, eval_size=64),
        model=model,
        progress=False,
        data=digits,
    )
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert 0.0 <= res.metrics["test_clean_err"] < 0.5
    with pytest.raises(RuntimeError, match="diverged"):
        train(
            small_config("natural", lr=1e30, optimizer="sgd", epochs=3), progress=False, data=digits
        )
