"""Tests for the model zoo (train.models): shapes on every dataset, errors, describe/rebuild."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bounds.layers import Normalize
from train.data import DATASETS
from train.models import (
    MODELS,
    ModelError,
    build_from_description,
    build_model,
    model_description,
    output_shapes,
)

# Models that cannot take 8x8 inputs: their unpadded convolutions collapse the image.
CANNOT_TAKE = {("dm-small", (1, 8, 8)), ("dm-medium", (1, 8, 8))}
SHAPES = sorted({spec.input_shape for spec in DATASETS.values()})
ALLOWED = (Normalize, nn.Conv2d, nn.ReLU, nn.Flatten, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)


def _stats(shape: tuple[int, ...]) -> tuple[list[float], list[float]]:
    return [0.5] * shape[0], [0.25] * shape[0]


def test_registry_names() -> None:
    assert set(MODELS) == {
        "mlp",
        "cnn-tiny",
        "dm-small",
        "model-small",
        "dm-medium",
        "dm-large",
        "cnn-4layer",
        "ibp-large",
        "cnn7",
    }
    assert issubclass(ModelError, ValueError)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", SHAPES)
def test_every_model_on_every_dataset_shape(name: str, shape: tuple[int, int, int]) -> None:
    mean, std = _stats(shape)
    if (name, shape) in CANNOT_TAKE:
        with pytest.raises(ModelError, match="cannot take input shape") as info:
            build_model(name, shape, 10, mean, std)
        assert name in str(info.value) and str(shape) in str(info.value)
        return
    model = build_model(name, shape, 10, mean, std)
    assert isinstance(model, nn.Sequential) and isinstance(model[0], Normalize)
    assert all(isinstance(m, ALLOWED) for m in model)
    assert isinstance(model[-1], nn.Linear) and model[-1].out_features == 10
    # every hidden Conv2d/Linear is followed by a ReLU (after its BatchNorm, if any), the output layer is not
    mods = [m for m in model if not isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    for i, m in enumerate(mods[:-1]):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert isinstance(mods[i + 1], nn.ReLU)
    with torch.no_grad():
        out = model(torch.rand(3, *shape))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    assert output_shapes(name, shape)[-1] == (10,)


def _linear_sizes(model: nn.Sequential) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)]


def _convs(model: nn.Sequential) -> list[tuple[int, int, int, int]]:
    return [
        (m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0])
        for m in model
        if isinstance(m, nn.Conv2d)
    ]


def test_published_architectures() -> None:
    mnist, cifar = (1, 28, 28), (3, 32, 32)
    small = build_model("dm-small", mnist, 10, [0.1], [0.3])
    assert _convs(small) == [(16, 4, 2, 0), (32, 4, 1, 0)]
    assert _linear_sizes(small) == [(32 * 10 * 10, 100), (100, 10)]
    assert _linear_sizes(build_model("dm-small", cifar, 10, *_stats(cifar)))[0] == (
        32 * 12 * 12,
        100,
    )
    medium = build_model("dm-medium", mnist, 10, [0.1], [0.3])
    assert _convs(medium) == [(32, 3, 1, 0), (32, 4, 2, 0), (64, 3, 1, 0), (64, 4, 2, 0)]
    assert _linear_sizes(medium) == [(64 * 4 * 4, 512), (512, 512), (512, 10)]
    large = build_model("dm-large", mnist, 10, [0.1], [0.3])
    assert _convs(large) == [
        (64, 3, 1, 1),
        (64, 3, 1, 1),
        (128, 3, 2, 1),
        (128, 3, 1, 1),
        (128, 3, 1, 1),
    ]
    assert _linear_sizes(large) == [(128 * 14 * 14, 512), (512, 10)]
    ibp = build_model("ibp-large", mnist, 10, [0.1], [0.3])
    assert _convs(ibp) == _convs(large) and _linear_sizes(ibp) == _linear_sizes(large)
    c4 = build_model("cnn-4layer", cifar, 10, *_stats(cifar))  # Lee et al.: width 8, linear 512
    assert _convs(c4) == [(32, 3, 1, 1), (32, 4, 2, 1), (64, 3, 1, 1), (64, 4, 2, 1)]
    assert _linear_sizes(c4) == [(64 * 8 * 8, 512), (512, 512), (512, 10)]
    tiny = build_model("cnn-tiny", (1, 8, 8), 10, [0.3], [0.4])
    assert _convs(tiny) == [(8, 3, 1, 1), (16, 4, 2, 1)] and _linear_sizes(tiny) == [
        (16 * 4 * 4, 64),
        (64, 10),
    ]


def test_options_change_the_network() -> None:
    mlp = build_model("mlp", (1, 8, 8), 3, [0.3], [0.4], widths=(7, 5, 4))
    assert _linear_sizes(mlp) == [(64, 7), (7, 5), (5, 4), (4, 3)]
    assert isinstance(mlp[1], nn.Flatten)
    c4 = build_model("cnn-4layer", (3, 32, 32), 10, *_stats((3, 32, 32)), width=1, linear_size=16)
    assert _convs(c4)[-1][0] == 8 and _linear_sizes(c4) == [(8 * 8 * 8, 16), (16, 16), (16, 10)]
    assert _linear_sizes(build_model("dm-large", (1, 8, 8), 10, [0.3], [0.4], linear_size=32))[
        -1
    ] == (32, 10)
    flat = build_model(
        "mlp", (4,), 2, [0.0] * 4, [1.0] * 4, widths=[3]
    )  # 1-D inputs for toy problems
    assert flat(torch.rand(5, 4)).shape == (5, 2)


def test_normalize_holds_mean_and_std() -> None:
    spec = DATASETS["cifar10"]
    model = build_model("cnn-tiny", spec.input_shape, 10, spec.mean, spec.std)
    assert torch.allclose(model[0].mean, torch.tensor(spec.mean))
    assert torch.allclose(model[0].std, torch.tensor(spec.std))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="resnet"), "unknown model 'resnet'; known models: mlp"),
        (
            dict(name="mlp", options={"width": 3}),
            "model 'mlp' has no option width; accepted options: widths",
        ),
        (dict(name="dm-small", options={"linear_size": 3}), "accepted options: none"),
        (dict(name="mlp", options={"widths": []}), "widths must be a non-empty list"),
        (dict(name="mlp", options={"widths": [4, 0]}), "positive integer"),
        (dict(name="cnn-4layer", options={"width": 1.5}), "width must be a positive integer"),
        (dict(name="cnn-4layer", options={"width": True}), "width must be a positive integer"),
        (
            dict(name="cnn-4layer", options={"linear_size": "big"}),
            "linear_size must be a positive integer",
        ),
        (dict(name="cnn-tiny", shape=(8, 8)), r"input_shape must be \(C, H, W\)"),
        (dict(name="cnn-tiny", shape=(1, 0, 8)), "input_shape"),
        (dict(name="cnn-tiny", mean=[0.1, 0.2]), "mean has 2 entries but the input has 1 channel"),
        (dict(name="cnn-tiny", std=[0.0]), "std must be positive"),
        (dict(name="cnn-tiny", n_classes=1), "n_classes must be an integer >= 2"),
        (dict(name="cnn-4layer", shape=(1, 3, 3)), "'cnn-4layer' cannot take input shape"),
    ],
)
def test_errors(kwargs: dict, match: str) -> None:
    args = dict(name="cnn-tiny", shape=(1, 8, 8), n_classes=10, mean=[0.3], std=[0.4], options={})
    args.update(kwargs)
    with pytest.raises(ModelError, match=match):
        build_model(
            args["name"],
            args["shape"],
            args["n_classes"],
            args["mean"],
            args["std"],
            **args["options"],
        )
    with pytest.raises(ModelError, match=match):
        model_description(
            args["name"],
            args["shape"],
            args["n_classes"],
            args["mean"],
            args["std"],
            **args["options"],
        )


def test_deterministic_given_seed() -> None:
    torch.manual_seed(3)
    a = build_model("dm-small", (1, 28, 28), 10, [0.1], [0.3])
    torch.manual_seed(3)
    b = build_model("dm-small", (1, 28, 28), 10, [0.1], [0.3])
    torch.manual_seed(4)
    c = build_model("dm-small", (1, 28, 28), 10, [0.1], [0.3])
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb) and not torch.equal(pa, pc)


@pytest.mark.parametrize(
    "name,shape,options",
    [
        ("mlp", (1, 8, 8), {"widths": (16, 8)}),
        ("cnn-tiny", (1, 8, 8), {}),
        ("dm-small", (1, 28, 28), {}),
        ("dm-medium", (3, 32, 32), {}),
        ("dm-large", (1, 8, 8), {"linear_size": 32}),
        ("cnn-4layer", (3, 32, 32), {"width": 1, "linear_size": 32}),
        ("ibp-large", (1, 8, 8), {}),
    ],
)
def test_describe_rebuild_round_trip(name: str, shape: tuple, options: dict) -> None:
    mean, std = [0.2] * shape[0], [0.3] * shape[0]
    torch.manual_seed(0)
    model = build_model(name, shape, 7, mean, std, **options)
    d = model_description(name, shape, 7, mean, std, **options)
    d = json.loads(json.dumps(d))  # JSON-able, and survives a trip through a checkpoint
    assert d["name"] == name and d["input_shape"] == list(shape) and d["n_classes"] == 7
    assert set(d["options"]) == set(MODELS[name].defaults)  # defaults filled in
    torch.manual_seed(0)
    rebuilt = build_from_description(d)
    x = torch.rand(4, *shape)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))
        other = build_from_description(d)  # different init, same architecture
        other.load_state_dict(model.state_dict())
        assert torch.equal(model(x), other(x))
    assert str(rebuilt) == str(model)


def test_build_from_description_errors() -> None:
    good = model_description("cnn-tiny", (1, 8, 8), 10, [0.3], [0.4])
    with pytest.raises(ModelError, match="lacks input_shape"):
        build_from_description({k: v for k, v in good.items() if k != "input_shape"})
    with pytest.raises(ModelError, match="version 99"):
        build_from_description({**good, "version": 99})
    with pytest.raises(ModelError, match="unknown model"):
        build_from_description({**good, "name": "nope"})
    with pytest.raises(ModelError, match="input_shape must be a list"):
        build_from_description({**good, "input_shape": 8})
    with pytest.raises(ModelError, match="n_classes"):
        build_from_description({**good, "n_classes": "ten"})
    with pytest.raises(ModelError, match="must be a dict"):
        build_from_description([1, 2])  # type: ignore[arg-type]


def test_output_shapes_track_the_arithmetic() -> None:
    assert output_shapes("dm-small", (1, 28, 28)) == [(16, 13, 13), (32, 10, 10), (100,), (10,)]
    # the paper code's model_small pads its convolutions: 5,408 features, 550,406 parameters
    assert output_shapes("model-small", (1, 28, 28)) == [(16, 14, 14), (32, 13, 13), (100,), (10,)]
    small = build_model("model-small", (1, 28, 28), 10, [0.0], [1.0])
    assert sum(p.numel() for p in small.parameters()) == 550_406
    assert (
        sum(p.numel() for p in build_model("dm-small", (1, 28, 28), 10, [0.0], [1.0]).parameters())
        == 329_606
    )
    assert output_shapes("dm-large", (1, 7, 7), 3)[2] == (
        128,
        4,
        4,
    )  # odd sides round up with padding 1
