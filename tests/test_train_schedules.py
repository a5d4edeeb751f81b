"""Training config validation and the eps / beta / kappa / lr schedules."""

from __future__ import annotations

import json

import pytest

from common.names import resolve_method
from train.config import TrainConfig, load_config
from train.schedules import Schedule, linear_ramp, lr_at, smooth_ramp


# ----------------------------------------------------------------------------- schedules
def test_linear_ramp_endpoints_and_middle() -> None:
    assert linear_ramp(0, 10, 20, 0.0, 1.0) == 0.0
    assert linear_ramp(10, 10, 20, 0.0, 1.0) == 0.0
    assert linear_ramp(20, 10, 20, 0.0, 1.0) == pytest.approx(0.5)
    assert linear_ramp(30, 10, 20, 0.0, 1.0) == 1.0
    assert linear_ramp(99, 10, 20, 0.0, 1.0) == 1.0
    assert linear_ramp(5, 5, 0, 1.0, 0.0) == 0.0  # zero length jumps at the start


def test_smooth_ramp_is_continuous_monotone_and_slow_at_first() -> None:
    start, length = 7, 100
    values = [smooth_ramp(s, start, length, 0.0, 0.3) for s in range(0, 130)]
    assert values[start] == 0.0 and values[-1] == pytest.approx(0.3)
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    # polynomial head: well below the linear ramp early on, equal at the end
    assert smooth_ramp(start + 10, start, length, 0.0, 0.3) < 0.1 * linear_ramp(
        start + 10, start, length, 0.0, 0.3
    )
    # value and slope continuous at the mid point (25 % of the ramp)
    mid = start + 25
    left = smooth_ramp(mid - 1e-6, start, length, 0.0, 1.0)
    right = smooth_ramp(mid, start, length, 0.0, 1.0)
    assert left == pytest.approx(right, abs=1e-5)
    d_left = (
        smooth_ramp(mid - 1e-3, start, length, 0, 1) - smooth_ramp(mid - 2e-3, start, length, 0, 1)
    ) / 1e-3
    d_right = (
        smooth_ramp(mid + 2e-3, start, length, 0, 1) - smooth_ramp(mid + 1e-3, start, length, 0, 1)
    ) / 1e-3
    assert d_left == pytest.approx(d_right, rel=1e-3)
    # after the mid point it is a straight line
    a, b, c = (smooth_ramp(s, start, length, 0, 1) for s in (60, 80, 100))
    assert b - a == pytest.approx(c - b)


def test_lr_milestones() -> None:
    assert lr_at(0, 1.0, [2, 4], 0.1) == 1.0
    assert lr_at(2, 1.0, [2, 4], 0.1) == pytest.approx(0.1)
    assert lr_at(5, 1.0, [2, 4], 0.1) == pytest.approx(0.01)


def test_schedule_from_config_per_step() -> None:
    cfg = TrainConfig(
        eps=0.2,
        eps_start_epoch=1,
        eps_ramp_epochs=2,
        beta_start=1.0,
        beta_end=0.0,
        kappa_start=1.0,
        kappa_end=0.5,
        lr=1e-3,
        lr_milestones=(3,),
        lr_decay=0.5,
    )
    sch = Schedule.from_config(cfg, steps_per_epoch=10)
    assert (sch.start_step, sch.ramp_steps) == (10, 20)
    assert (
        sch.eps_at(9) == 0.0
        and sch.eps_at(20) == pytest.approx(0.1)
        and sch.eps_at(30) == pytest.approx(0.2)
    )
    assert sch.beta_at(20) == pytest.approx(0.5) and sch.beta_at(31) == 0.0
    assert sch.kappa_at(0) == 1.0 and sch.kappa_at(40) == pytest.approx(0.5)
    assert sch.lr_at(29) == pytest.approx(1e-3) and sch.lr_at(30) == pytest.approx(5e-4)


def test_fractional_lr_milestone_acts_at_its_step() -> None:
    # milestones are in epochs with fractions allowed, converted to steps like the eps window
    cfg = TrainConfig(lr=1.0, lr_milestones=(1.5, 2), lr_decay=0.1)
    sch = Schedule.from_config(cfg, steps_per_epoch=10)
    assert sch.lr_at(14) == 1.0 and sch.lr_at(15) == pytest.approx(0.1)
    assert sch.lr_at(19) == pytest.approx(0.1) and sch.lr_at(20) == pytest.approx(0.01)


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "changes, words",
    [
        ({"eps": -0.1}, "eps must be >= 0"),
        ({"method": "fgsm"}, "unknown method 'fgsm'"),
        ({"slope": "steep"}, "unknown slope"),
        ({"method": "tightest", "slope": "zero"}, "fixes the slope"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"beta_end": 1.5}, "beta_end must be <= 1"),
        ({"optimizer": "rmsprop"}, "unknown optimizer"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"lr_milestones": (5, 2)}, "increasing"),
        ({"eps_schedule": "cosine"}, "unknown eps_schedule"),
        ({"batch_size": 2.5}, "batch_size must be an integer"),
        ({"device": "tpu"}, "device must be"),
        ({"eps": float("nan")}, "finite"),
    ],
)
def test_config_rejects_bad_values(changes: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        TrainConfig(**changes)


def test_config_dict_round_trip_and_unknown_key() -> None:
    cfg = TrainConfig(
        method="crown-ibp", eps=0.3, lr_milestones=(5, 8), model_options={"widths": (16, 16)}
    )
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert TrainConfig.from_dict(d) == TrainConfig.from_dict(json.loads(json.dumps(d)))
    assert TrainConfig.from_dict(d).to_dict() == d
    with pytest.raises(ValueError, match="unknown training config key 'epochz'"):
        TrainConfig.from_dict({"epochz": 3})
    assert resolve_method(cfg.method, cfg.slope, 1.0)[0] == "crown-ibp"
    assert resolve_method("tightest", None, 0.5) == ("crown-ibp", "tightest", 1.0)
    assert TrainConfig(method="cap").resolved_slope == "same-slope"


def test_config_file_yaml_and_json_with_overrides(tmp_path) -> None:
    y = tmp_path / "run.yaml"
    y.write_text("method: crown-ibp\neps: 0.3\nlr-milestones: [10, 20]\nbeta_end: 0.0\n")
    cfg = load_config(y, {"eps": 0.1, "epochs": None})
    assert (
        cfg.method == "crown-ibp"
        and cfg.eps == 0.1
        and cfg.lr_milestones == (10, 20)
        and cfg.beta_end == 0.0
    )
    j = tmp_path / "run.json"
    j.write_text(json.dumps({"method": "ibp", "epochs": 3}))
    assert load_config(j).epochs == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [unclosed\n")
    with pytest.raises(ValueError, match="not valid"):
        load_config(bad)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")
