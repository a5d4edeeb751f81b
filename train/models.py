"""Model zoo: plain ``nn.Sequential`` networks of Normalize, Conv2d, ReLU, Flatten, Linear and
(``cnn7``) BatchNorm; the table of models is :mod:`train.zoo`.

>>> from train.data import DATASETS
>>> from train.models import build_model, model_description, build_from_description
>>> spec = DATASETS["digits"]
>>> net = build_model("cnn-tiny", spec.input_shape, spec.n_classes, spec.mean, spec.std)
>>> d = model_description("cnn-tiny", spec.input_shape, spec.n_classes, spec.mean, spec.std)
>>> same_arch = build_from_description(d)        # JSON-able d goes into checkpoints

Every network is ``Normalize(mean, std)`` followed by a *plan* of layers; the plan is turned into
modules by shape arithmetic, so any input ``(C, H, W)`` works as long as no spatial size
collapses. A convolution with kernel ``k``, stride ``s`` and padding ``p`` maps a side of
length ``n`` to ``floor((n + 2p - k) / s) + 1``; when that is ``<= 0`` the model cannot take the
shape and :class:`ModelError` names the model, the shape and the layer. A ReLU follows every
hidden Conv2d/Linear (after its BatchNorm, if it has one); the last Linear gives the
``n_classes`` logits. BatchNorm models must be put in ``eval()`` mode to certify.

Zoo (``C`` input channels, ``n`` classes; ``Conv k x k / s, p`` = kernel, stride, padding)
------------------------------------------------------------------------------------------
``mlp``         Flatten, then ``Linear(., w) - ReLU`` for every ``w`` in ``widths`` (default
                ``(256, 256)``), then ``Linear(., n)``. Also takes a 1-D input shape ``(D,)``.
``cnn-tiny``    for 8x8 digits: Conv(C, 8w, 3/1, p1) - Conv(8w, 16w, 4/2, p1) - FC(linear_size)
                - FC(n); options ``width=1``, ``linear_size=64``.
``dm-small``    Gowal et al. 2018 / CROWN-IBP (Zhang et al. 2020) DM-small: Conv16 4x4/2 - Conv32
                4x4/1 - FC100 - FC(n), *no padding* ("VALID", as in DeepMind's IBP code; on
                28x28 this gives the 32*10*10 features of the published models).
``model-small`` the ``model_small`` of Lee et al. 2021's code (and of Zhang et al.'s CROWN-IBP
                code): Conv16 4x4/2, p1 - Conv32 4x4/1, p1 - FC100 - FC(n); *padded*, unlike
                ``dm-small``: on 28x28 it has 32*13*13 = 5,408 features and 550,406 parameters
                (``dm-small``: 3,200 and 329,606).
``dm-medium``   DM-medium: Conv32 3x3/1 - Conv32 4x4/2 - Conv64 3x3/1 - Conv64 4x4/2 - FC512 -
                FC512 - FC(n), no padding ("VALID").
``dm-large``    DM-large: Conv64 3x3/1 - Conv64 3x3/1 - Conv128 3x3/2 - Conv128 3x3/1 - Conv128
                3x3/1 - FC(linear_size=512) - FC(n), padding 1 ("SAME"), exactly CROWN-IBP's
                ``IBP_large``.
``ibp-large``   the MNIST (and SVHN) model of Lee et al. 2021 ("Towards Better Understanding of
                Training Certifiably Robust Models against Adversarial Examples" / "Loss Landscape
                Matters"): their config uses CROWN-IBP's ``IBP_large``, so it is the same
                network as ``dm-large``; kept as its own name so runs can say which paper they
                follow. Option ``linear_size=512``.
``cnn-4layer``  the CIFAR-10 model of Lee et al. 2021 (their ``model_cnn_4layer`` with
                ``width=8, linear_size=512``): Conv(C, 4w, 3/1, p1) - Conv(4w, 4w, 4/2, p1) -
                Conv(4w, 8w, 3/1, p1) - Conv(8w, 8w, 4/2, p1) - FC(linear_size) -
                FC(linear_size) - FC(n). (auto_LiRPA's smaller ``cnn_4layer``, two convolutions
                and one hidden FC, is a different network despite the name.)
``cnn7``        CNN7 of Shi et al. 2021 and CTBench (their code's ``cnn_7layer_bn2``):
                Conv(C, w, 3/1, p1) - Conv(w, w, 3/1, p1) - Conv(w, 2w, 3/2, p1) - Conv(2w, 2w,
                3/1, p1) - Conv(2w, 2w, 3/1, p1) - FC(linear_size) - FC(n), BatchNorm after every
                hidden Conv/FC (before its ReLU; auto_LiRPA's example ``cnn_7layer_bn`` has none
                after the FC); options ``width=64``, ``linear_size=512`` (CIFAR-10: 17.2M parameters).

Your own model
--------------
Any name of the form ``FILE.py:function`` or ``package.module:function`` is a model function
instead of a zoo entry: ``function(input_shape, n_classes, **options)`` returns the
``nn.Sequential`` (``mean=``/``std=`` are passed too when it takes them); the description is
then the model's layer list, which rebuilds it without your code. See :mod:`train.usermodels`.

On 8x8 inputs ``dm-small`` (3x3 after the first conv, then a 4x4 kernel) and ``dm-medium``
(2x2 before a 3x3 kernel) collapse and raise :class:`ModelError`; every other model builds.

Initialisation is torch's default for Conv2d/Linear (Kaiming-uniform weights with
``a = sqrt(5)``, uniform biases), as in the CROWN-IBP and Lee et al. code, so a model is a
deterministic function of ``torch``'s global seed at build time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from bounds.layers import Normalize
from train import plugins
from train.usermodels import ModelError
from train.zoo import MODELS, Conv, Dense, ModelSpec, PlanEntry

__all__ = [
    "ModelError",
    "ModelSpec",
    "MODELS",
    "build_model",
    "model_description",
    "build_from_description",
    "output_shapes",
    "DESCRIPTION_VERSION",
]

DESCRIPTION_VERSION = 1
"""Version of the dict :func:`model_description` writes for a zoo model; bumped if its layout ever
changes. A layer-list description (your own model, :mod:`train.usermodels`) is version 2."""


# --------------------------------------------------------------------------- validation


def _spec(name: object) -> ModelSpec:
    if not isinstance(name, str) or name not in MODELS:
        raise ModelError(
            f"unknown model {name!r}; known models: {', '.join(MODELS)}, or your own as "
            "FILE.py:function or package.module:function"
        )
    return MODELS[name]


def _positive_int(model: str, key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ModelError(
                f"model {model!r}: option {key} must be a positive integer, got {value!r}"
            )
    if value <= 0:
        raise ModelError(f"model {model!r}: option {key} must be a positive integer, got {value}")
    return int(value)


def _options(spec: ModelSpec, options: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overridden by ``options``, every value checked; unknown keys are an error."""
    unknown = sorted(set(options) - set(spec.defaults))
    if unknown:
        accepted = ", ".join(spec.defaults) if spec.defaults else "none"
        raise ModelError(
            f"model {spec.name!r} has no option {', '.join(unknown)}; accepted options: {accepted}"
        )
    merged = {**spec.defaults, **options}
    out: dict[str, Any] = {}
    for key, value in merged.items():
        if key == "widths":
            if (
                isinstance(value, (str, bytes))
                or not isinstance(value, Sequence)
                or len(value) == 0
            ):
                raise ModelError(
                    f"model {spec.name!r}: option widths must be a non-empty list of positive integers, got {value!r}"
                )
            out[key] = tuple(_positive_int(spec.name, "widths", v) for v in value)
        else:
            out[key] = _positive_int(spec.name, key, value)
    return out


def _shape(name: str, input_shape: object, spatial: bool) -> tuple[int, ...]:
    try:
        shape = tuple(input_shape)  # type: ignore[arg-type]
    except TypeError:
        raise ModelError(
            f"model {name!r}: input_shape must be a tuple (C, H, W), got {input_shape!r}"
        ) from None
    ok_len = (3,) if spatial else (1, 3)
    if len(shape) not in ok_len or any(
        isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in shape
    ):
        want = "(C, H, W)" if spatial else "(C, H, W) or (D,)"
        raise ModelError(
            f"model {name!r}: input_shape must be {want} of positive integers, got {input_shape!r}"
        )
    return shape


def _stats(name: str, values: object, channels: int, what: str) -> tuple[float, ...]:
    try:
        flat = tuple(
            float(v) for v in torch.as_tensor(values, dtype=torch.float64).flatten().tolist()
        )
    except (TypeError, ValueError, RuntimeError):
        raise ModelError(
            f"model {name!r}: {what} must be a sequence of numbers, got {values!r}"
        ) from None
    if len(flat) != channels:
        raise ModelError(
            f"model {name!r}: {what} has {len(flat)} entries but the input has {channels} channel(s)"
        )
    if what == "std" and any(not v > 0 for v in flat):
        raise ModelError(f"model {name!r}: std must be positive, got {list(flat)}")
    return flat


def output_shapes(
    name: str, input_shape: Sequence[int], n_classes: int = 10, **options: Any
) -> list[tuple[int, ...]]:
    """Shapes (without batch) after each planned layer, ending with ``(n_classes,)``.

    Pure shape arithmetic (no modules built); raises :class:`ModelError` where a spatial size
    collapses to ``<= 0``.
    """
    spec = _spec(name)
    opts = _options(spec, options)
    shape = _shape(name, input_shape, spec.spatial)
    return [s for _, s in _plan(spec, opts, shape, n_classes)]


def _plan(
    spec: ModelSpec, opts: Mapping[str, Any], shape: tuple[int, ...], n_classes: int
) -> list[tuple[PlanEntry, tuple[int, ...]]]:
    """Pair every plan entry (plus the final Dense(n_classes)) with its output shape."""
    out: list[tuple[PlanEntry, tuple[int, ...]]] = []
    current = shape
    entries = [*spec.plan(opts), Dense(n_classes)]
    for i, entry in enumerate(entries):
        if isinstance(entry, Conv):
            if len(current) != 3:
                raise ModelError(
                    f"model {spec.name!r}: layer {i} is a convolution but its input has shape {current}"
                )
            c, h, w = current
            nh = (h + 2 * entry.padding - entry.kernel) // entry.stride + 1
            nw = (w + 2 * entry.padding - entry.kernel) // entry.stride + 1
            if nh <= 0 or nw <= 0:
                raise ModelError(
                    f"model {spec.name!r} cannot take input shape {tuple(shape)}: its convolution {i + 1} "
                    f"(kernel {entry.kernel}, stride {entry.stride}, padding {entry.padding}) gets a {h}x{w} "
                    f"input and its output would be {nh}x{nw}"
                )
            current = (entry.out, nh, nw)
        else:
            current = (entry.out,)
        out.append((entry, current))
    return out


def _validate_classes(name: str, n_classes: object) -> int:
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ModelError(f"model {name!r}: n_classes must be an integer >= 2, got {n_classes!r}")
    return n_classes


# --------------------------------------------------------------------------- public API


def model_description(
    name: str,
    input_shape: Sequence[int],
    n_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    **options: Any,
) -> dict[str, Any]:
    """JSON-able description with everything :func:`build_from_description` needs.

    ``{"version": 1, "name", "input_shape": [C, H, W], "n_classes", "mean": [...],
    "std": [...], "options": {every option, defaults filled in}}``. Validates exactly like
    :func:`build_model` (including the shape check) without building any module. For a model
    function (``FILE.py:function``) it builds the model, leaving torch's random state as it was,
    and returns its layer list (:func:`train.usermodels.describe`).
    """
    if plugins.is_reference(name):
        return _user_model(name, input_shape, n_classes, mean, std, options, describe=True)
    spec = _spec(name)
    opts = _options(spec, options)
    shape = _shape(name, input_shape, spec.spatial)
    classes = _validate_classes(name, n_classes)
    mean_t = _stats(name, mean, shape[0], "mean")
    std_t = _stats(name, std, shape[0], "std")
    _plan(spec, opts, shape, classes)
    return {
        "version": DESCRIPTION_VERSION,
        "name": spec.name,
        "input_shape": list(shape),
        "n_classes": classes,
        "mean": list(mean_t),
        "std": list(std_t),
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in opts.items()},
    }


def build_model(
    name: str,
    input_shape: Sequence[int],
    n_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    **options: Any,
) -> nn.Sequential:
    """Build zoo model ``name`` for inputs ``[B, *input_shape]`` in pixel units.

    Returns ``nn.Sequential(Normalize(mean, std), Conv2d/Linear, ReLU, ..., Flatten, ...,
    Linear(., n_classes))`` with torch's default initialisation (deterministic given
    ``torch.manual_seed``). ``options`` are model specific (see :data:`MODELS` and the module
    docstring). Raises :class:`ModelError` for an unknown name or option, a bad value, a
    mean/std that does not match the channel count, or a shape the model cannot take. ``name``
    may be a model function, ``FILE.py:function`` or ``package.module:function`` (module
    docstring); its errors (a missing file or function, a function that raises, a layer the
    bound engine cannot take) are ValueErrors too.
    """
    if plugins.is_reference(name):
        return _user_model(name, input_shape, n_classes, mean, std, options, describe=False)
    desc = model_description(name, input_shape, n_classes, mean, std, **options)
    spec = MODELS[desc["name"]]
    opts = _options(spec, desc["options"])
    shape = tuple(desc["input_shape"])
    layers: list[nn.Module] = [Normalize(desc["mean"], desc["std"])]
    current: tuple[int, ...] = shape
    flattened = len(shape) == 1
    planned = _plan(spec, opts, shape, desc["n_classes"])
    for i, (entry, out_shape) in enumerate(planned):
        if isinstance(entry, Conv):
            layers.append(
                nn.Conv2d(
                    current[0], entry.out, entry.kernel, stride=entry.stride, padding=entry.padding
                )
            )
        else:
            if not flattened:
                layers.append(nn.Flatten())
                flattened = True
            layers.append(nn.Linear(math.prod(current), entry.out))
        if entry.bn:
            layers.append(
                nn.BatchNorm2d(entry.out) if isinstance(entry, Conv) else nn.BatchNorm1d(entry.out)
            )
        if i < len(planned) - 1:
            layers.append(nn.ReLU())
        current = out_shape
    return nn.Sequential(*layers)


def _user_model(
    name: str,
    input_shape: Any,
    n_classes: Any,
    mean: Any,
    std: Any,
    options: Mapping[str, Any],
    describe: bool,
) -> Any:
    from train import usermodels

    shape = _shape(name, input_shape, False)
    classes = _validate_classes(name, n_classes)
    mean_t, std_t = _stats(name, mean, shape[0], "mean"), _stats(name, std, shape[0], "std")
    make = usermodels.describe_reference if describe else usermodels.build_user_model
    return make(name, shape, classes, mean_t, std_t, options)


def build_from_description(d: Mapping[str, Any]) -> nn.Sequential:
    """Rebuild the architecture recorded by :func:`model_description` or, for a layer-list
    description (version 2), by :func:`train.usermodels.describe` (weights come from a state dict)."""
    if not isinstance(d, Mapping):
        raise ModelError(f"a model description must be a dict, got {type(d).__name__}")
    version = d.get("version", DESCRIPTION_VERSION)
    if isinstance(version, bool) or version not in (
        DESCRIPTION_VERSION,
        2,
    ):  # never build a newer one as an older
        raise ModelError(
            f"model description version {version!r} is not supported (this toolkit reads "
            f"{DESCRIPTION_VERSION} and 2; a newer cert-landscape wrote it)"
        )
    if d.get("version") == 2 or "layers" in d or d.get("unrecorded"):
        from train import usermodels

        return usermodels.build(d)
    if d.get("name") == "custom" and "input_shape" not in d:
        raise ModelError(
            "this checkpoint's model was passed to train.loop.train by an older toolkit, which did not "
            "record its layers; build it with your own code and load the checkpoint's state_dict"
        )
    missing = [k for k in ("name", "input_shape", "n_classes", "mean", "std") if k not in d]
    if missing:
        raise ModelError(f"model description lacks {', '.join(missing)}")
    if not isinstance(d["name"], str) or d["name"] not in MODELS:  # never import what a file names
        raise ModelError(
            f"unknown model {d['name']!r} in a model description: it is not a model of the zoo "
            f"({', '.join(MODELS)}); a description names a zoo model or lists its layers, and loading "
            "one never imports or runs code"
        )
    version = d.get("version", DESCRIPTION_VERSION)
    if version != DESCRIPTION_VERSION:
        raise ModelError(
            f"model description version {version!r} is not supported (this toolkit reads "
            f"{DESCRIPTION_VERSION} and 2)"
        )
    options = d.get("options") or {}
    if not isinstance(options, Mapping):
        raise ModelError(f"model description options must be a dict, got {type(options).__name__}")
    shape = d["input_shape"]
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise ModelError(
            f"model description input_shape must be a list such as [C, H, W], got {shape!r}"
        )
    return build_model(
        d["name"], tuple(shape), d["n_classes"], d["mean"], d["std"], **dict(options)
    )
