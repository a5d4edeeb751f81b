"""The paper code's own setting: its padded model_small, unnormalised inputs and an eps-ball
that is not clipped to the pixel range, as options (clipping stays the default)."""

from __future__ import annotations

import torch

from common import store
from landscape.cli import main
from train.config import TrainConfig, run_domain
from train.data import DATASETS


def test_unnormalised_unclipped_runs_record_and_use_their_setting(tmp_path) -> None:
    from bounds.bound_spec import training_bound
    from train.checkpoint import load_model
    from train.objective import certified_loss

    assert run_domain(TrainConfig(), DATASETS["digits"]) == (0.0, 1.0)
    assert run_domain({"bounded_input": False}, DATASETS["digits"]) is None
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--dataset",
                "digits",
                "--model",
                "mlp",
                "--model-option",
                "widths=[8]",
                "--method",
                "crown-ibp",
                "--epochs",
                "1",
                "--train-size",
                "64",
                "--test-size",
                "32",
                "--eval-size",
                "0",
                "--config",
                str(_yaml(tmp_path)),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    model, ckpt = load_model(out / "checkpoint.pt")
    assert model[0].mean.tolist() == [0.0] and model[0].std.tolist() == [
        1.0
    ]  # the pixels as they are
    assert ckpt["config"]["bounded_input"] is False
    x = torch.ones(4, 1, 8, 8)  # at the top of the pixel range: clipping matters here
    y = torch.arange(4)
    clipped, _ = certified_loss(
        model, x, y, 0.3, "crown-ibp", training_bound("crown-ibp", domain=(0.0, 1.0))
    )
    free, _ = certified_loss(
        model, x, y, 0.3, "crown-ibp", training_bound("crown-ibp", domain=None)
    )
    assert float(free.detach()) > float(clipped.detach())
    scan = tmp_path / "g.h5"
    assert (
        main(
            [
                "scan",
                str(out / "checkpoint.pt"),
                "--points",
                "1",
                "--samples",
                "8",
                "--out",
                str(scan),
                "--quiet",
            ]
        )
        == 0
    )
    assert '"domain":null' in store.read(scan)["attrs"]["args_json"]


def _yaml(tmp_path):
    path = tmp_path / "paper.yaml"
    path.write_text("normalize_inputs: false\nbounded_input: false\n")
    return path


def test_cap_is_crown_ibp_with_same_slopes_and_certify_takes_method_slope_pairs(
    tmp_path, capsys
) -> None:
    import json

    from bounds.bound_spec import training_bound
    from train.evaluate import evaluate, verifier
    from train.models import build_model
    from train.objective import certified_loss

    torch.manual_seed(0)
    net = build_model("mlp", (1, 8, 8), 10, (0.3,), (0.4,), widths=[32, 32])
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 10
    cap, _ = certified_loss(net, x, y, 0.1, method="cap")
    same, _ = certified_loss(
        net, x, y, 0.1, "crown-ibp", training_bound("crown-ibp", slope="same-slope")
    )
    assert torch.equal(cap, same)
    assert verifier("cap") == ("crown-ibp", "same-slope") and verifier("tightest") == (
        "crown-ibp",
        "tightest",
    )
    assert verifier("crown:same-slope") == ("crown", "same-slope") and verifier("crown-ibp") == (
        "crown-ibp",
        "adaptive",
    )
    res = evaluate(
        net, x, y, 0.02, methods=["ibp", "cap", "crown-ibp:tightest"], pgd_steps=2, progress=False
    )
    assert res["union"] == ["crown-ibp:same-slope", "crown-ibp:tightest", "ibp"]
    for key in ("verified_err_ibp", "verified_err_cap", "verified_err_crown_ibp_tightest"):
        assert res["verified_err"] <= res[key]
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--dataset",
                "digits",
                "--model",
                "mlp",
                "--model-option",
                "widths=[8]",
                "--method",
                "cap",
                "--epochs",
                "1",
                "--train-size",
                "64",
                "--test-size",
                "16",
                "--eval-size",
                "0",
                "--out",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "certify",
                str(run / "checkpoint.pt"),
                "--methods",
                "cap,crown:same-slope",
                "--pgd-steps",
                "1",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["union"] == ["crown-ibp:same-slope", "crown:same-slope"]
    assert main(["certify", str(run / "checkpoint.pt"), "--methods", "crown-ibp:bogus"]) == 1
    assert "unknown slope 'bogus'" in capsys.readouterr().err
