"""Every profile named after the paper code holds the paper code's values, item by item.

The table below is written from the paper code's configuration files and train.py
(sungyoon-lee/LossLandscapeMatters: config/{mnist,cifar10,svhn}.json over defaults.json), not
from this toolkit's files: the eps ramp runs from ``schedule_start`` epochs to ``schedule_start +
schedule_length - 1`` (its EpsilonScheduler), MNIST's lr is MultiStepLR at [130, 190] x 0.1, the
CIFAR-10 and SVHN lr is StepLR(10, 0.5) stepped with ``epoch = max(t - (start + length - 1) + 1,
0)`` after epoch t, CIFAR-10 trains on random flips and 4-pixel crops, SVHN on 4-pixel crops and
normalised inputs. Each setting's file is read and compared, and the learning rate and eps the
toolkit's schedule gives at every epoch are compared with the paper code's formulas.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from landscape.reproduce.plan import load_settings
from train.augment import crop_and_flip
from train.config import TrainConfig
from train.schedules import Schedule

PAPER_CODE = {
    # setting: (dataset, model, model_options, eps, epochs, batch, lr, schedule_start, schedule_length,
    #           lr rule, normalize_input, random crop padding, random flip)
    "mnist_eps0.4": (
        "mnist",
        "ibp-large",
        {"linear_size": 512},
        0.4,
        200,
        80,
        5e-4,
        10,
        50,
        ("multistep", [130, 190], 0.1),
        False,
        0,
        False,
    ),
    "cifar10_eps8_255": (
        "cifar10",
        "cnn-4layer",
        {"width": 8, "linear_size": 512},
        0.0313725,
        400,
        128,
        3e-4,
        20,
        241,
        ("step", 10, 0.5),
        False,
        4,
        True,
    ),
    "cifar10_eps2_255": (
        "cifar10",
        "cnn-4layer",
        {"width": 8, "linear_size": 512},
        2 / 255,
        400,
        128,
        3e-4,
        20,
        241,
        ("step", 10, 0.5),
        False,
        4,
        True,
    ),
    "svhn_eps0.01": (
        "svhn",
        "ibp-large",
        {"linear_size": 512},
        0.01,
        200,
        70,
        3e-4,
        10,
        121,
        ("step", 10, 0.5),
        True,
        4,
        False,
    ),
}
"""The paper code's values (cifar10_eps2_255 is its CIFAR-10 config at eps 2/255, as the paper runs it)."""


def _paper_lr(rule: tuple, lr0: float, epoch: int, start: int, length: int) -> float:
    """The paper code's learning rate during 0-based epoch ``epoch``."""
    if rule[0] == "multistep":
        return lr0 * rule[2] ** sum(1 for m in rule[1] if epoch >= m)
    last = (
        max(epoch - 1 - (start + length - 1) + 1, 0) if epoch > 0 else 0
    )  # step(epoch=...) after epoch - 1
    return lr0 * rule[2] ** (last // rule[1])


def _paper_eps(eps: float, step: int, spe: int, start: int, length: int) -> float:
    init, final = start * spe, (start + length - 1) * spe
    if step <= init:
        return 0.0
    return eps * min(1.0, (step - init) / (final - init))


def _settings() -> dict:
    return {s.name: s for s in load_settings() if s.profile == "paper"}


def test_every_paper_setting_is_the_paper_codes() -> None:
    settings = _settings()
    assert set(settings) == set(PAPER_CODE)
    for name, (
        dataset,
        model,
        options,
        eps,
        epochs,
        batch,
        lr,
        start,
        length,
        rule,
        norm,
        crop,
        flip,
    ) in PAPER_CODE.items():
        cfg = TrainConfig.from_dict({**settings[name].train, "method": "ibp"})
        assert (cfg.dataset, cfg.model, cfg.model_options) == (dataset, model, options), name
        assert (
            cfg.eps == pytest.approx(eps, rel=1e-5)
            and cfg.epochs == epochs
            and cfg.batch_size == batch
        ), name
        assert (
            cfg.optimizer == "adam" and cfg.lr == pytest.approx(lr) and cfg.weight_decay == 0.0
        ), name
        assert cfg.eps_start_epoch == start and cfg.eps_ramp_epochs == length - 1, name
        assert cfg.eps_schedule == "linear", name
        assert (cfg.kappa_start, cfg.kappa_end, cfg.beta_start, cfg.beta_end) == (
            0.0,
            0.0,
            1.0,
            1.0,
        ), name
        assert cfg.normalize_inputs is norm and cfg.bounded_input is False, name
        assert (cfg.random_crop, cfg.random_flip) == (crop, flip), name
        assert cfg.probe_every == 100 and cfg.eval_size == 10000, (
            name
        )  # cal_loss every 100 steps; test every epoch
        spe = 7  # any number of steps per epoch
        sched = Schedule.from_config(cfg, spe)
        for epoch in range(epochs):
            assert sched.lr_at(epoch * spe) == pytest.approx(
                _paper_lr(rule, lr, epoch, start, length)
            ), (name, epoch)
        for step in range(0, (start + length + 1) * spe, 3):
            assert sched.eps_at(step) == pytest.approx(
                _paper_eps(cfg.eps, step, spe, start, length), abs=1e-12
            ), (name, step)


def test_official_short_says_what_it_is() -> None:
    """official-short keeps the paper code's optimiser, batch, bound settings and probe, on
    model_small for 1,500 steps at eps 0.1: it must not call itself the paper code's setting."""
    (s,) = [s for s in load_settings() if s.profile == "official-short"]
    cfg = TrainConfig.from_dict({**s.train, "method": "ibp"})
    assert (cfg.model, cfg.batch_size, cfg.lr, cfg.epochs, cfg.eps) == (
        "model-small",
        80,
        5e-4,
        2,
        0.1,
    )
    assert (cfg.kappa_start, cfg.beta_start, cfg.normalize_inputs, cfg.bounded_input) == (
        0.0,
        1.0,
        False,
        False,
    )
    assert cfg.probe_every == 100 and cfg.probe_fresh_slopes
    text = s.path.read_text().lower()
    assert "not the paper code's setting" in text and "cpu-sized" in text
    assert not any(p.profile == "official" for p in load_settings())


def test_crop_and_flip_draws_windows_of_the_padded_image() -> None:
    """Every output image is the zero-padded input (mirrored or not) cut at an offset in
    [0, 2 pad]^2; about half are mirrored; the same seed gives the same batch."""
    x = torch.rand(64, 3, 6, 5)
    pad = 2
    out = crop_and_flip(x, pad, True, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(torch.cat([x, x.flip(-1)]), (pad,) * 4)
    mirrored = 0
    for i in range(64):
        hits = [
            (f, dy, dx)
            for f in (0, 1)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(padded[i + 64 * f, :, dy : dy + 6, dx : dx + 5], out[i])
        ]
        assert hits, i
        mirrored += hits[0][0]
    assert 16 <= mirrored <= 48
    again = crop_and_flip(x, pad, True, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert torch.equal(crop_and_flip(x, 0, False, torch.Generator()), x)
    with pytest.raises(ValueError, match="image batches"):
        crop_and_flip(torch.rand(4, 10), 2, False, torch.Generator())


def test_a_run_with_augmentation_trains_resumes_and_refuses_non_images(tmp_path) -> None:
    from train.data import load_dataset
    from train.loop import train

    data = load_dataset("digits", train_size=64, test_size=16)
    base = dict(
        dataset="digits",
        model="mlp",
        model_options={"widths": [8]},
        method="ibp",
        epochs=2,
        batch_size=32,
        train_size=64,
        test_size=16,
        eval_size=0,
    )
    plain = train(TrainConfig(**base), data=data, progress=False)
    aug = train(TrainConfig(**base, random_crop=1, random_flip=True), data=data, progress=False)
    w0, w1 = plain.model.state_dict(), aug.model.state_dict()
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    assert all(math.isfinite(v) for v in aug.metrics.values() if isinstance(v, float))
    # resumed from its first epoch, the augmented run ends bit-identical (the crops are seeded by step)
    out = tmp_path / "run"
    train(
        TrainConfig(**base, random_crop=1, random_flip=True), data=data, progress=False, out_dir=out
    )
    resumed = train(
        TrainConfig(**base, random_crop=1, random_flip=True),
        data=data,
        progress=False,
        resume_from=out / "checkpoint_epoch1.pt",
    )
    w2 = resumed.model.state_dict()
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    with pytest.raises(ValueError, match="must be >= 0"):
        TrainConfig(**base, random_crop=-1)


def _run_with_epochs(method: str, verified: list[float], eps_per_probe: list[float] | None = None):
    import numpy as np

    from figures.records import Meta, TrainRun

    n = len(verified)
    epochs = {
        "epoch": np.arange(n, dtype=float),
        "test_clean_err": np.linspace(0.3, 0.2, n),
        "test_verified_err_" + ("ibp" if method == "ibp" else "crown_ibp"): np.asarray(
            verified, dtype=float
        ),
    }
    probes = (
        {}
        if eps_per_probe is None
        else {"eps": np.asarray(eps_per_probe, dtype=float)[:, None].repeat(3, 1)}
    )
    return TrainRun(Meta(Path("x.h5"), "train", method=method, eps=0.1), {}, epochs, probes, None)


def test_test_selection_takes_the_last_best_epoch_after_the_ramp() -> None:
    """As the paper code: among epochs t >= start + length (0-based), the lowest test verified
    error, ties to the later epoch (``err <= best_err``); earlier epochs never count."""
    from figures.runstats import test_selection

    verified = [0.1, 0.9, 0.8, 0.5, 0.6, 0.5, 0.7]  # epoch 0 is best but inside the ramp
    sel = test_selection(_run_with_epochs("tightest", verified), "tightest", after_epoch=2.0)
    assert (
        sel["selected_epoch"] == 6.0 and sel["selected_verified_err"] == 0.5
    )  # epoch index 5, 1-based 6
    assert sel["selected_clean_err"] == pytest.approx(0.3 - 0.1 * 5 / 6)
    ibp = test_selection(_run_with_epochs("ibp", verified), "ibp", after_epoch=6.0)
    assert ibp["selected_epoch"] == 7.0
    none = test_selection(_run_with_epochs("ibp", verified), "ibp", after_epoch=10.0)
    assert math.isnan(none["selected_epoch"])


def test_probes_at_the_final_eps_are_counted() -> None:
    from figures.runstats import final_eps_probes

    run = _run_with_epochs("ibp", [0.5], eps_per_probe=[0.0, 0.05, 0.1, 0.1])
    assert final_eps_probes(run) == 2 and final_eps_probes(run, 0.05) == 1


def test_augmentation_of_non_images_is_refused() -> None:
    from train.augment import batch_augmenter

    cfg = TrainConfig(dataset="digits", random_crop=2)
    with pytest.raises(
        ValueError, match="augment images; dataset 'digits' has inputs of shape \\(64,\\)"
    ):
        batch_augmenter(cfg, torch.zeros(5, 64), lambda s: s)
    x = torch.zeros(5, 64)
    assert batch_augmenter(TrainConfig(), x, lambda s: s)(x, 3) is x
    with pytest.raises(
        ValueError, match="random_crop: 1000000 pixels of padding is more than the 8x8 images"
    ):
        batch_augmenter(TrainConfig(random_crop=1_000_000), torch.zeros(5, 1, 8, 8), lambda s: s)


def test_a_settings_hessian_work_is_read_and_checked() -> None:
    """``scan: hessian:`` is false (no Hessian scan), absent/true (the default work) or a mapping
    of known keys with whole numbers >= 1 (``layers`` a bool); anything else is one clear error."""
    from landscape.reproduce.plan import _hessian_work

    assert _hessian_work(False) is None
    assert _hessian_work(None) == {} and _hessian_work(True) == {} and _hessian_work({}) == {}
    assert _hessian_work({"top_k": 3, "layers": False}) == {"top_k": 3, "layers": False}
    for bad in ({"top_k": 0}, {"lanczos_steps": 2.5}, {"trace_samples": True}, {"layers": 1}):
        with pytest.raises(ValueError, match=r"scan\.hessian\."):
            _hessian_work(bad)
    with pytest.raises(ValueError, match="unknown keys.*lanczos"):
        _hessian_work({"lanczos": 10})
    with pytest.raises(ValueError, match="false or a mapping"):
        _hessian_work("none")
    (s,) = [s for s in load_settings() if s.profile == "official-short"]
    assert s.scan_hessian == {
        "top_k": 3,
        "lanczos_steps": 15,
        "trace_samples": 10,
        "density_runs": 1,
        "density_steps": 15,
        "layers": False,
    }
    assert all(t.scan_hessian == {} for t in load_settings() if t.profile == "quick")
