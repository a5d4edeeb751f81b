"""PGD attacks and evaluation: clean <= PGD <= verified error on a briefly trained model."""

from __future__ import annotations

import pytest
import torch

from train.attacks import margin_objective, pgd_attack
from train.config import TrainConfig
from train.data import load_dataset
from train.evaluate import evaluate
from train.loop import train


@pytest.fixture(scope="module")
def trained():
    data = load_dataset("digits", train_size=600, test_size=200, seed=0)
    cfg = TrainConfig(
        dataset="digits",
        model="mlp",
        model_options={"widths": [64, 64]},
        method="crown-ibp",
        eps=0.05,
        epochs=6,
        batch_size=50,
        lr=3e-3,
        eps_ramp_epochs=3,
        eval_size=0,
    )
    return train(cfg, progress=False, data=data).model, data


def test_pgd_between_clean_and_verified(trained) -> None:
    model, data = trained
    for eps in (0.02, 0.06):
        res = evaluate(
            model,
            data.test_x,
            data.test_y,
            eps,
            methods=("ibp", "crown-ibp", "crown", "cap"),
            pgd_steps=20,
            pgd_restarts=2,
            batch_size=64,
            progress=False,
        )
        assert res["n"] == 200
        assert res["clean_err"] < 0.3
        assert res["clean_err"] <= res["pgd_err"] <= res["verified_err"]
        for key in (
            "verified_err_ibp",
            "verified_err_crown_ibp",
            "verified_err_crown",
            "verified_err_cap",
        ):
            assert res["verified_err"] <= res[key] <= 1.0
    assert res["pgd_err"] > res["clean_err"]  # at eps 0.06 the attack breaks some samples
    zero = evaluate(model, data.test_x, data.test_y, 0.0, methods=("ibp",), progress=False)
    assert zero["clean_err"] == zero["pgd_err"] == zero["verified_err"]


def test_pgd_stays_in_ball_and_domain_and_finds_real_errors(trained) -> None:
    model, data = trained
    x, y = data.test_x[:64], data.test_y[:64]
    eps = 0.1
    for objective in ("margin", "ce"):
        adv, success = pgd_attack(
            model,
            x,
            y,
            eps,
            steps=10,
            restarts=2,
            objective=objective,
            generator=torch.Generator().manual_seed(1),
        )
        assert adv.shape == x.shape and success.dtype == torch.bool
        assert float((adv - x).abs().max()) <= eps + 1e-6
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
        with torch.no_grad():
            wrong = model(adv).argmax(1) != y
        assert torch.equal(
            wrong | ~success, torch.ones_like(success)
        )  # every success is a real error
        assert success.float().mean() > (model(x).argmax(1) != y).float().mean()
    # a stronger attack never does worse than no attack
    _, none = pgd_attack(model, x, y, eps, steps=0, random_start=False)
    assert torch.equal(none, margin_objective(model(x).detach(), y) > 0)


def test_bad_evaluation_inputs(trained) -> None:
    model, data = trained
    with pytest.raises(ValueError, match="unknown verification method"):
        evaluate(
            model, data.test_x[:4], data.test_y[:4], 0.1, methods=("zonotope",), progress=False
        )
    with pytest.raises(ValueError, match="eps"):
        evaluate(model, data.test_x[:4], data.test_y[:4], -0.1, progress=False)
    with pytest.raises(ValueError, match="objective"):
        pgd_attack(model, data.test_x[:4], data.test_y[:4], 0.1, objective="kl")
