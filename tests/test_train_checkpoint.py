"""Checkpoints: bit-exact reload with weights_only, clear errors for every bad file."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch

from train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from train.config import TrainConfig
from train.data import DATASETS
from train.models import build_model, model_description


def _model_and_desc(name: str = "cnn-tiny", **opts):
    spec = DATASETS["digits"]
    args = (spec.input_shape, spec.n_classes, spec.mean, spec.std)
    torch.manual_seed(3)
    return build_model(name, *args, **opts), model_description(name, *args, **opts)


@pytest.fixture()
def saved(tmp_path):
    model, desc = _model_and_desc()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(4, 1, 8, 8)).sum().backward()
    opt.step()
    cfg = TrainConfig(method="crown-ibp", eps=0.1, lr_milestones=(3, 5))
    path = save_checkpoint(
        tmp_path / "ck.pt",
        model,
        model_desc=desc,
        config=cfg.to_dict(),
        epoch=2,
        step=17,
        optimizer=opt,
        metrics={"test_clean_err": 0.5},
        history=[{"a": 1.0}],
    )
    return path, model, opt, cfg


def test_reload_bit_exact_with_weights_only(saved) -> None:
    path, model, opt, cfg = saved
    raw = torch.load(path, weights_only=True)  # no arbitrary unpickling needed
    assert raw["format"] == "cert-landscape-checkpoint" and raw["epoch"] == 2 and raw["step"] == 17
    assert TrainConfig.from_dict(raw["config"]) == cfg
    assert (
        set(raw["versions"]) == {"toolkit", "torch", "python"}
        and raw["rng"]["torch"].dtype == torch.uint8
    )
    loaded, ckpt = load_model(path)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(model(x), loaded(x))
    opt2 = torch.optim.Adam(loaded.parameters(), lr=1e-3)
    opt2.load_state_dict(ckpt["optimizer"])
    assert torch.equal(
        opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temporary file


def test_missing_corrupt_and_foreign_files(tmp_path, saved) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError):  # also a FileNotFoundError for callers that expect one
        load_checkpoint(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a checkpoint" * 20)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(junk)
    path = saved[0]
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(cut)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": saved[1].state_dict()}, foreign)
    with pytest.raises(CheckpointError, match="not a cert-landscape checkpoint"):
        load_checkpoint(foreign)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "cert-landscape-checkpoint", "obj": zipfile.ZipInfo("x")}, pickled)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(pickled)
    with pytest.raises(CheckpointError, match="directory"):
        load_checkpoint(tmp_path)


def test_architecture_mismatch_and_nan_weights(tmp_path, saved) -> None:
    path, model, _, cfg = saved
    ckpt = load_checkpoint(path)
    other, other_desc = _model_and_desc("cnn-tiny", width=2)
    ckpt["model"] = other_desc
    with pytest.raises(CheckpointError, match="does not fit the model architecture"):
        load_model(ckpt)
    bad = model.state_dict()
    bad[next(iter(k for k in bad if k.endswith("weight")))][0] = float("nan")
    nan_path = save_checkpoint(
        tmp_path / "nan.pt",
        model,
        model_desc=load_checkpoint(path)["model"],
        config=cfg.to_dict(),
        epoch=1,
        step=1,
    )
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        load_model(nan_path)


def test_bytes_round_trip_of_optimizer_state_is_weights_only_safe(saved) -> None:
    buf = io.BytesIO()
    torch.save(torch.load(saved[0], weights_only=True), buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["step"] == 17
