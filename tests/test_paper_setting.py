"""The paper code's own setting: its padded model_small, unnormalised inputs and an eps-ball
that is not clipped to the pixel range, as options (clipping stays the default)."""

from __future__ import annotations

import torch

from landscape import store
from landscape.cli import main
from train.config import TrainConfig, run_domain
from train.data import DATASETS


def test_unnormalised_unclipped_runs_record_and_use_their_setting(tmp_path) -> None:
    from train.checkpoint import load_model
    from train.objective import certified_loss

    assert run_domain(TrainConfig(), DATASETS["digits"]) == (0.0, 1.0)
    assert run_domain({"bounded_input": False}, DATASETS["digits"]) is None
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--model", "mlp", "--model-option", "widths=[8]", "--method",
                 "crown-ibp", "--epochs", "1", "--train-size", "64", "--test-size", "32", "--eval-size", "0",
                 "--config", str(_yaml(tmp_path)), "--out", str(out), "--quiet"]) == 0
    model, ckpt = load_model(out / "checkpoint.pt")
    assert model[0].mean.tolist() == [0.0] and model[0].std.tolist() == [1.0]  # the pixels as they are
    assert ckpt["config"]["bounded_input"] is False
    x = torch.ones(4, 1, 8, 8)  # at the top of the pixel range: clipping matters here
    y = torch.arange(4)
    clipped, _ = certified_loss(model, x, y, 0.3, method="crown-ibp", domain=(0.0, 1.0))
    free, _ = certified_loss(model, x, y, 0.3, method="crown-ibp", domain=None)
    assert float(free.detach()) > float(clipped.detach())
    scan = tmp_path / "g.h5"
    assert main(["scan", str(out / "checkpoint.pt"), "--points", "1", "--samples", "8", "--out", str(scan),
                 "--quiet"]) == 0
    assert '"domain":null' in store.read(scan)["attrs"]["args_json"]


def _yaml(tmp_path):
    path = tmp_path / "paper.yaml"
    path.write_text("normalize_inputs: false\nbounded_input: false\n")
    return path
