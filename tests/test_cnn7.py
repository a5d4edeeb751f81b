"""The zoo's ``cnn7`` (CNN7 with BatchNorm, Shi et al. 2021 / CTBench): its layers, its bounds on
8x8 digits in both BatchNorm modes, a short CLI training run and its certification, and that the
checkpoint keeps BatchNorm's running statistics."""

from __future__ import annotations

import json

import torch
from bn_helpers import batch_stat_copy
from bounds_helpers import assert_le, empirical_margin_range, input_box, tolerance
from torch import nn

from bounds import compute_bounds, margin_spec
from landscape.cli import main
from train.models import build_model, output_shapes

BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def test_cnn7_layers_follow_the_published_network() -> None:
    model = build_model("cnn7", (3, 32, 32), 10, [0.5] * 3, [0.25] * 3)
    convs = [
        (m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0])
        for m in model
        if isinstance(m, nn.Conv2d)
    ]
    assert convs == [(64, 3, 1, 1), (64, 3, 1, 1), (128, 3, 2, 1), (128, 3, 1, 1), (128, 3, 1, 1)]
    assert [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)] == [
        (128 * 16 * 16, 512),
        (512, 10),
    ]
    kinds = [type(m).__name__ for m in model]
    assert kinds.count("BatchNorm2d") == 5 and kinds.count("BatchNorm1d") == 1
    for i, m in enumerate(model):  # BatchNorm right after every hidden Conv/Linear, then ReLU
        if isinstance(m, BN):
            assert isinstance(model[i - 1], (nn.Conv2d, nn.Linear)) and isinstance(
                model[i + 1], nn.ReLU
            )
    assert sum(p.numel() for p in model.parameters()) == 17_192_650
    for shape in ((1, 8, 8), (1, 28, 28), (3, 32, 32)):
        assert output_shapes("cnn7", shape, width=2, linear_size=8)[-1] == (10,)
        small = build_model(
            "cnn7", shape, 10, [0.5] * shape[0], [0.25] * shape[0], width=2, linear_size=8
        )
        assert small(torch.rand(2, *shape)).shape == (2, 10)


def test_cnn7_bounds_on_digits_in_both_modes() -> None:
    torch.manual_seed(0)
    model = build_model("cnn7", (1, 8, 8), 10, [0.3], [0.3], width=4, linear_size=16)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 3, 5, 9])
    C = margin_spec(y, 10)
    model.train()
    model(torch.rand(64, 1, 8, 8))  # running statistics away from their initial (0, 1)
    lo, hi = input_box(x, 0.02, (0.0, 1.0))
    for mode in ("eval", "train"):
        model.train(mode == "train")
        ref = batch_stat_copy(model, x) if mode == "train" else model
        before = [b.clone() for b in model.buffers()]
        vmin, vmax = empirical_margin_range(
            ref, C, lo, hi, n_uniform=8, n_corners=8, pgd_steps=5, restarts=1
        )
        for method in ("ibp", "crown-ibp"):
            res = compute_bounds(model, x, 0.02, method=method, C=C)
            tol = tolerance(torch.float32, vmin, vmax, res.lower, res.upper)
            assert_le(res.lower, vmin, tol, f"cnn7 {mode} {method} lower")
            assert_le(vmax, res.upper, tol, f"cnn7 {mode} {method} upper")
        assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))


def test_cnn7_trains_from_the_command_line_and_certifies(tmp_path, capsys) -> None:
    out = tmp_path / "cnn7"
    args = [
        "train",
        "--dataset",
        "digits",
        "--model",
        "cnn7",
        "--model-option",
        "width=2",
        "--model-option",
        "linear_size=16",
        "--method",
        "crown-ibp",
        "--eps",
        "0.02",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--train-size",
        "64",
        "--test-size",
        "32",
        "--eps-ramp-epochs",
        "0",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(args) == 0, capsys.readouterr().err
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    state = ckpt["state_dict"]
    assert any(k.endswith("running_mean") for k in state) and any(
        k.endswith("running_var") for k in state
    )
    moved = [k for k in state if k.endswith("running_mean") and state[k].abs().sum() > 0]
    assert moved, (
        "training in train mode updates BatchNorm's running statistics, and the checkpoint keeps them"
    )
    capsys.readouterr()
    code = main(
        [
            "certify",
            str(out / "checkpoint.pt"),
            "--eps",
            "0.02",
            "--methods",
            "ibp,crown-ibp",
            "--pgd-steps",
            "3",
            "--test-size",
            "32",
            "--json",
        ]
    )
    stdout, err = capsys.readouterr()
    assert code == 0, err
    res = json.loads(stdout)
    assert 0.0 <= res["clean_err"] <= res["verified_err"] <= 1.0


def test_probes_leave_the_running_statistics_alone(tmp_path, capsys) -> None:
    """A run with gradient probes at every step ends with the same weights and BatchNorm
    statistics as one without (the probes' forward passes in training mode are undone)."""
    base = [
        "train",
        "--dataset",
        "digits",
        "--model",
        "cnn7",
        "--model-option",
        "width=2",
        "--model-option",
        "linear_size=8",
        "--method",
        "ibp",
        "--eps",
        "0.02",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--train-size",
        "64",
        "--test-size",
        "16",
        "--eps-ramp-epochs",
        "0",
        "--quiet",
    ]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0, capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "probed"), "--probe-every", "1"]) == 0, (
        capsys.readouterr().err
    )
    a = torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "probed" / "checkpoint.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (
        "probes changed the model"
    )


def test_certify_rows_uses_evaluation_mode() -> None:
    from landscape.certification import certify_rows

    model = build_model("cnn7", (1, 8, 8), 10, [0.3], [0.3], width=2, linear_size=8).train()
    before = [b.clone() for b in model.buffers()]
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    certify_rows(model, x, y, [0.01], ["ibp"], "test", pgd_steps=2)
    assert not model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers())), (
        "certification moved the running stats"
    )


def test_layer_list_records_batchnorm_and_avgpool() -> None:
    """A model outside the zoo with BatchNorm and AvgPool2d is recorded as a layer list and
    rebuilt with the same function (state dict, running statistics included); a residual block
    is refused with a message naming it."""
    import pytest

    from bounds.layers import Residual
    from train.models import ModelError
    from train.usermodels import build, describe

    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.BatchNorm2d(3, momentum=0.2),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(48, 5),
        nn.BatchNorm1d(5, affine=False),
        nn.ReLU(),
        nn.Linear(5, 3),
    )
    model(torch.rand(16, 1, 8, 8))  # move the running statistics
    d = json.loads(json.dumps(describe(model.eval(), (1, 8, 8))))
    twin = build(d)
    twin.load_state_dict(model.state_dict())
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(twin.eval()(x), model(x))
    with pytest.raises(ModelError, match=r"layer 0 \(Residual\)"):
        describe(nn.Sequential(Residual(nn.Sequential(nn.Linear(4, 4))), nn.Linear(4, 2)))


def test_evaluate_runs_in_evaluation_mode_and_restores_the_mode() -> None:
    from train.evaluate import evaluate

    model = build_model("cnn7", (1, 8, 8), 10, [0.3], [0.3], width=2, linear_size=8).train()
    model(torch.rand(32, 1, 8, 8))  # running statistics away from (0, 1)
    before = [b.clone() for b in model.buffers()]
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    res = evaluate(model, x, y, 0.01, methods=["ibp"], pgd_steps=2, batch_size=3, progress=False)
    assert model.training, "evaluate restores the caller's mode"
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers())), (
        "evaluation moved the running stats"
    )
    with torch.no_grad():
        wrong = (model.eval()(x).argmax(1) != y).float().mean()
    assert res["clean_err"] == float(wrong)
