"""Your own model and dataset as FILE.py:function / package.module:function: train, certify and scan
from the command line, checkpoints that rebuild the model without the user's code (also for a model
passed to the Python API), and one clear error for every way a function can be wrong."""

from __future__ import annotations

import json
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bounds import Normalize
from common import store
from landscape.cli import main
from train.checkpoint import CheckpointError, check_fits, describe_module, load_model
from train.config import TrainConfig
from train.data import DatasetError, dataset_spec, load_dataset
from train.models import ModelError, build_from_description, build_model, model_description
from train.usermodels import describe

MODEL_FILE = """
from torch import nn
from bounds import Normalize

def make(input_shape, n_classes, width=16, mean=None, std=None):
    c, h, w = input_shape
    return nn.Sequential(Normalize(mean, std), nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * h * w, width), nn.ReLU(), nn.Linear(width, n_classes))

def plain(input_shape, n_classes, hidden=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(__import__("math").prod(input_shape)), hidden), nn.ReLU(),
                         nn.Linear(hidden, n_classes))

def raises(input_shape, n_classes):
    raise RuntimeError("no GPU here")

def dropout(input_shape, n_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.Dropout(), nn.Linear(8, n_classes))

def module(input_shape, n_classes):
    return nn.Linear(36, n_classes)

def nothing(input_shape, n_classes):
    return None

def wrong_outputs(input_shape, n_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(36, n_classes + 1))

def wrong_inputs(input_shape, n_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(30, n_classes))

def double(input_shape, n_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(36, n_classes)).double()

CONSTANT = 3
"""

DATA_FILE = """
import numpy as np
import torch

CALLS = []

def load():
    CALLS.append(1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(120, 1, 6, 6, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0.5).long() + 2 * (x[:, 0, :3, :3].mean(dim=(1, 2)) > 0.5).long()
    return {"train_x": x[:80], "train_y": y[:80], "test_x": x[80:], "test_y": y[80:],
            "classes": ["lo", "hi", "lo+", "hi+"]}

def as_tuple():
    rng = np.random.default_rng(0)
    x = rng.random((40, 6, 6)).astype(np.float32)          # [N, H, W]: one channel
    y = np.arange(40) % 3
    return x[:30], y[:30], x[30:], y[30:]

def _good():
    rng = np.random.default_rng(1)
    x = rng.random((20, 1, 6, 6))
    return x, np.arange(20) % 2

def pixels():
    x, y = _good()
    return (x * 255).astype(np.uint8), y, x, y

def float_labels():
    x, y = _good()
    return x, y.astype(np.float32), x, y

def short_labels():
    x, y = _good()
    return x, y[:-1], x, y

def nan():
    x, y = _good()
    x[0, 0, 0, 0] = np.nan
    return x, y, x, y

def test_shape():
    x, y = _good()
    return x, y, x[:, :, :5], y

def one_class():
    x, y = _good()
    return x, y * 0, x, y * 0

def few_names():
    x, y = _good()
    return {"train_x": x, "train_y": y + 1, "test_x": x, "test_y": y, "classes": ["a", "b"]}

def missing_key():
    x, y = _good()
    return {"train_x": x, "train_y": y, "test_x": x}

def typo_key():
    x, y = _good()
    return {"train_x": x, "train_y": y, "test_x": x, "test_y": y, "means": [0.5]}

def three():
    x, y = _good()
    return x, y, x

def text():
    return "data.npz"

def bad_std():
    x, y = _good()
    return {"train_x": x, "train_y": y, "test_x": x, "test_y": y, "std": [0.0]}

def raises():
    raise FileNotFoundError("/data/mine.npz")
"""


@pytest.fixture()
def files(tmp_path, monkeypatch) -> Path:
    (tmp_path / "mymodel.py").write_text(MODEL_FILE)
    (tmp_path / "mydata.py").write_text(DATA_FILE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(capsys, args: list) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


TRAIN = [
    "--dataset",
    "mydata.py:load",
    "--model",
    "mymodel.py:make",
    "--model-option",
    "width=8",
    "--method",
    "crown-ibp",
    "--eps",
    "0.02",
    "--epochs",
    "2",
    "--batch-size",
    "40",
    "--eps-ramp-epochs",
    "1",
    "--quiet",
]


def test_train_certify_scan_from_the_command_line(files, capsys, monkeypatch) -> None:
    code, _, err = run(capsys, ["train", *TRAIN, "--out", "run"])
    assert code == 0, err
    cfg = json.loads((files / "run" / "config.json").read_text())
    assert (
        cfg["dataset"] == f"{files / 'mydata.py'}:load"
        and cfg["model"] == f"{files / 'mymodel.py'}:make"
    )
    raw = torch.load(
        files / "run" / "checkpoint.pt", weights_only=True
    )  # no code in the checkpoint
    desc = raw["model"]
    assert desc["version"] == 2 and desc["input_shape"] == [1, 6, 6] and desc["n_classes"] == 4
    assert desc["options"] == {"width": 8}
    assert [e["kind"] for e in desc["layers"]] == [
        "normalize",
        "conv",
        "relu",
        "flatten",
        "linear",
        "relu",
        "linear",
    ]
    spec = load_dataset(cfg["dataset"]).spec
    assert desc["layers"][0]["mean"] == pytest.approx(list(spec.mean)) and spec.classes == (
        "lo",
        "hi",
        "lo+",
        "hi+",
    )

    certify = [
        "certify",
        "run/checkpoint.pt",
        "--eps",
        "0.02",
        "--methods",
        "ibp,crown",
        "--pgd-steps",
        "3",
        "--json",
    ]
    code, out, err = run(
        capsys, certify
    )  # the checkpoint's dataset code runs only when the user asks
    assert (
        code == 1
        and err.startswith("Error: checkpoint 'run/checkpoint.pt' names dataset code")
        and "--trust-code" in err
        and "--dataset" in err
    ), err
    code, out, err = run(capsys, [*certify, "--dataset", "other.py:load"])
    assert code == 1 and "names dataset code" in err and "not this" in err, err
    certify.append("--trust-code")
    code, out, err = run(capsys, certify)
    assert code == 0, err
    first = json.loads(out)
    assert first["n"] == 40 and first["clean_err"] <= first["pgd_err"] <= first["verified_err"]
    for kind, extra in (("gradient", []), ("random-1d", ["--points", "3"])):
        code, _, err = run(
            capsys,
            [
                "scan",
                "run/checkpoint.pt",
                "--kind",
                kind,
                "--samples",
                "16",
                *extra,
                "--out",
                f"{kind}.h5",
                "--quiet",
                "--dataset",
                "mydata.py:load",
            ],
        )
        assert code == 0, err
        assert store.read(str(files / f"{kind}.h5"))["attrs"]["complete"]

    (files / "mymodel.py").rename(
        files / "gone.txt"
    )  # the model is rebuilt from its layer list alone
    (files / "elsewhere").mkdir()
    monkeypatch.chdir(files / "elsewhere")  # the config holds the dataset's absolute path
    code, out, err = run(capsys, ["certify", files / "run" / "checkpoint.pt", *certify[2:]])
    assert code == 0, err
    again = json.loads(out)
    assert {k: v for k, v in again.items() if k != "checkpoint"} == {
        k: v for k, v in first.items() if k != "checkpoint"
    }


def test_a_model_given_to_the_python_api_is_certified_and_scanned_from_its_checkpoint(
    tmp_path, capsys
) -> None:
    from train.loop import train

    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            norm=Normalize([0.3], [0.4]),
            conv=nn.Conv2d(1, 3, 3, stride=2, bias=False),
            act=nn.ReLU(),
            flat=nn.Flatten(),
            fc=nn.Linear(27, 10),
        )
    )
    cfg = TrainConfig(
        dataset="digits",
        model="mlp",
        method="ibp",
        eps=0.05,
        epochs=1,
        batch_size=50,
        train_size=100,
        test_size=20,
        eval_size=0,
        eps_ramp_epochs=0,
    )
    result = train(cfg, model=model, out_dir=tmp_path, progress=False)
    desc = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    assert desc["name"] == "custom" and desc["input_shape"] == [1, 8, 8] and desc["n_classes"] == 10
    assert [e["name"] for e in desc["layers"]] == ["norm", "conv", "act", "flat", "fc"]
    loaded, _ = load_model(tmp_path / "checkpoint.pt")
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))
    code, out, err = run(
        capsys,
        [
            "certify",
            tmp_path / "checkpoint.pt",
            "--methods",
            "ibp,crown-ibp",
            "--pgd-steps",
            "2",
            "--test-size",
            "20",
            "--json",
        ],
    )
    assert code == 0, err
    assert json.loads(out)["n"] == 20
    code, _, err = run(
        capsys,
        [
            "scan",
            tmp_path / "checkpoint.pt",
            "--kind",
            "gradient",
            "--samples",
            "8",
            "--out",
            tmp_path / "g.h5",
            "--quiet",
        ],
    )
    assert code == 0, err


def test_a_package_module_function(tmp_path, monkeypatch) -> None:
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(MODEL_FILE)
    (pkg / "sets.py").write_text(DATA_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = load_dataset("mypkg.sets:as_tuple", train_size=12, test_size=6, seed=1)
    assert (
        data.train_x.shape == (12, 1, 6, 6)
        and data.spec.n_classes == 3
        and data.spec.name == "mypkg.sets:as_tuple"
    )
    assert np.bincount(data.train_y.numpy()).tolist() == [
        4,
        4,
        4,
    ]  # class-balanced subset, as for any dataset
    spec = data.spec
    net = build_model(
        "mypkg.nets:plain", spec.input_shape, spec.n_classes, spec.mean, spec.std, hidden=5
    )
    assert net(data.train_x).shape == (12, 3)
    assert (
        TrainConfig(dataset="mypkg.sets:as_tuple", model="mypkg.nets:plain").model
        == "mypkg.nets:plain"
    )
    for name in ("mypkg", "mypkg.nets", "mypkg.sets"):
        sys.modules.pop(name, None)


def test_model_functions_get_mean_and_std_only_when_they_ask(files) -> None:
    spec = load_dataset("mydata.py:load").spec
    args = (spec.input_shape, spec.n_classes, spec.mean, spec.std)
    net = build_model("mymodel.py:make", *args)
    assert net[0].mean.tolist() == pytest.approx(list(spec.mean))
    assert isinstance(build_model("mymodel.py:plain", *args)[0], nn.Flatten)  # used as returned
    with pytest.raises(ValueError, match="model_options cannot set mean"):
        TrainConfig(model="mymodel.py:make", model_options={"mean": [0.0]})
    with pytest.raises(ValueError, match="raised TypeError: .*unexpected keyword argument 'depth'"):
        build_model("mymodel.py:plain", *args, depth=3)
    state = torch.get_rng_state()
    desc = model_description(
        "mymodel.py:make", *args, width=5
    )  # builds the model, leaves the RNG alone
    assert torch.equal(state, torch.get_rng_state())
    torch.manual_seed(1)
    net = build_model("mymodel.py:make", *args, width=5)
    rebuilt = build_from_description(json.loads(json.dumps(desc)))
    rebuilt.load_state_dict(net.state_dict())
    x = torch.rand(3, *spec.input_shape)
    assert torch.equal(net(x), rebuilt(x)) and str(net) == str(rebuilt)


@pytest.mark.parametrize(
    "function,message",
    [
        ("nofile.py:make", "model file .*nofile.py \\(from '.*nofile.py:make'\\) does not exist"),
        ("mymodel.py:nope", "has no function 'nope' \\(it defines double, dropout, make, .*\\)"),
        ("mymodel.py:CONSTANT", "names an object of type int, not a function"),
        (
            "mymodel.py:raises",
            "model function '.*mymodel.py:raises' raised RuntimeError: no GPU here",
        ),
        (
            "mymodel.py:dropout",
            "cannot be bounded on inputs \\(1, 6, 6\\): layer 2 \\(Dropout\\) is not supported",
        ),
        ("mymodel.py:module", "returned a Linear; the bound engine needs an nn.Sequential"),
        ("mymodel.py:nothing", "returned a NoneType, not a torch.nn.Sequential"),
        ("mymodel.py:wrong_outputs", "gives 5 outputs per sample, but the dataset has 4 classes"),
        ("mymodel.py:wrong_inputs", "layer 1 \\(Linear\\) expects 30 input features"),
        ("mymodel.py:double", "torch.float64 values in '1.weight'"),
        ("no_such_module_xyz:make", "model module 'no_such_module_xyz' .* cannot be found"),
        ("json:nope", "model module 'json' has no function 'nope'"),
        ("mymodel.py:", "must be FILE.py:function or package.module:function"),
        ("nets/mymodel.txt:make", "is not a .py file"),
        ("ghost", "unknown model 'ghost'; known models: .* or your own as FILE.py:function"),
    ],
)
def test_model_errors_are_one_line(files, capsys, function: str, message: str) -> None:
    spec = load_dataset("mydata.py:load").spec
    with pytest.raises(ValueError, match=message):
        build_model(function, spec.input_shape, spec.n_classes, spec.mean, spec.std)
    code, out, err = run(
        capsys,
        ["train", *TRAIN[:2], "--model", function, "--epochs", "1", "--out", "bad", "--quiet"],
    )
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), err
    assert not (files / "bad").exists()


@pytest.mark.parametrize(
    "function,message",
    [
        (
            "pixels",
            "train_x has values in \\[\\d+, 25\\d\\], outside \\[0, 1\\]; .*divide them by 255",
        ),
        ("float_labels", "train_y must hold integer class labels, got dtype float32"),
        ("short_labels", "train_y has shape \\(19,\\), but there are 20 images"),
        ("nan", "train_x holds NaN or infinite values"),
        ("test_shape", "train_x has images of shape \\(1, 6, 6\\) but test_x \\(1, 5, 6\\)"),
        ("one_class", "at least 2 classes"),
        ("few_names", "the labels go up to 2, but only 2 class names are given"),
        ("missing_key", "returned a dict that lacks test_y"),
        ("typo_key", "has unknown key\\(s\\) means"),
        ("three", "returned a tuple of 3 items"),
        ("text", "returned a str; expected \\(train_x, train_y, test_x, test_y\\)"),
        ("bad_std", "std must be positive"),
        (
            "raises",
            "dataset function '.*mydata.py:raises' raised FileNotFoundError: /data/mine.npz",
        ),
        ("absent", "dataset file .*mydata.py has no function 'absent'"),
    ],
)
def test_dataset_errors_are_one_line(files, capsys, function: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_dataset(f"mydata.py:{function}")
    code, out, err = run(
        capsys,
        [
            "train",
            "--dataset",
            f"mydata.py:{function}",
            "--model",
            "mlp",
            "--epochs",
            "1",
            "--out",
            "bad",
            "--quiet",
        ],
    )
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), err
    assert not (files / "bad").exists()


def test_datasets_are_read_once_and_again_after_an_edit(files) -> None:
    a = load_dataset("mydata.py:as_tuple")
    assert a.train_x.shape == (30, 1, 6, 6) and a.spec.n_classes == 3 and a.spec.classes is None
    assert a.spec.mean == pytest.approx([float(a.train_x.double().mean())])
    assert dataset_spec(str(files / "mydata.py") + ":as_tuple") == a.spec
    assert (
        dataset_spec("mydata.py:never_loaded") is None and dataset_spec("digits").name == "digits"
    )
    load_dataset("mydata.py:load")
    module = sys.modules[
        next(
            k
            for k in sys.modules
            if k.startswith("landscape_user_")
            and getattr(sys.modules[k], "__file__", "") == str(files / "mydata.py")
        )
    ]
    calls = len(module.CALLS)
    load_dataset("mydata.py:load", test_size=10)
    assert len(module.CALLS) == calls  # cached
    (files / "mydata.py").write_text(DATA_FILE + "\n# edited\n")
    import os

    os.utime(files / "mydata.py", ns=(1, 1))
    assert load_dataset("mydata.py:load").train_x.shape[0] == 80  # re-imported, called again


def test_what_the_checkpoint_records_without_an_input_shape(tmp_path) -> None:
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding="same", dilation=1, groups=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 8 * 8, 10),
    )
    desc = describe(net)  # no input shape: not known, and the conv does not fix H and W
    assert (
        desc["input_shape"] is None
        and desc["n_classes"] == 10
        and desc["layers"][0]["padding"] == [1, 1]
    )
    rebuilt = build_from_description(desc)
    rebuilt.load_state_dict(net.state_dict())
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(rebuilt(x), net(x))
    spec = load_dataset("digits", train_size=10, test_size=10).spec
    check_fits({"model": desc}, spec)  # tried on the dataset's shape instead
    with pytest.raises(
        CheckpointError, match="does not take dataset 'digits'.*expects 128 input features"
    ):
        check_fits({"model": describe(nn.Sequential(nn.Flatten(), nn.Linear(128, 10)))}, spec)
    assert describe_module(net, "digits")["input_shape"] == [1, 8, 8]
    assert (
        describe_module(net, "cifar10")["input_shape"] is None
    )  # does not fit the config's dataset
    unrecorded = describe_module(
        nn.Sequential(nn.Flatten(), nn.Dropout(), nn.Linear(64, 10)), "digits"
    )
    assert unrecorded["name"] == "custom" and "Dropout" in unrecorded["unrecorded"]
    with pytest.raises(ModelError, match="could not be recorded when it was saved .*Dropout"):
        build_from_description(unrecorded)
    with pytest.raises(ModelError, match="older toolkit, which did not record its layers"):
        build_from_description({"name": "custom"})
    with pytest.raises(ModelError, match="layer 1 \\(linear\\) is invalid"):
        build_from_description(
            {**desc, "layers": [desc["layers"][0], {"kind": "linear", "in_features": 3}]}
        )


def test_config_stores_a_file_reference_with_its_absolute_path(files) -> None:
    cfg = TrainConfig(dataset="mydata.py:load", model="./mymodel.py:make")
    assert cfg.dataset == f"{files}/mydata.py:load" and cfg.model == f"{files}/mymodel.py:make"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="dataset reference 'digits:' must be FILE.py:function"):
        TrainConfig(dataset="digits:")


def test_a_runs_stored_code_runs_on_resume_only_when_asked(files, capsys) -> None:
    """`train --resume` reads the model and dataset references from the run's config.json: they are
    imported only when --model/--dataset name them again or --trust-code is given."""
    short = [a if a != "2" else "1" for a in TRAIN]
    code, _, err = run(capsys, ["train", *short, "--out", "run"])
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in (files / "run").iterdir()}
    code, _, err = run(capsys, ["train", "--out", "run", "--resume", "--epochs", "2", "--quiet"])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert (
        code == 1
        and len(lines) == 1
        and "config.json names model code" in lines[0]
        and "--trust-code" in lines[0]
    )
    code, _, err = run(
        capsys,
        [
            "train",
            "--out",
            "run",
            "--resume",
            "--epochs",
            "2",
            "--quiet",
            "--model",
            "mymodel.py:make",
        ],
    )
    assert code == 1 and "config.json names dataset code" in err, err
    assert {p.name: p.read_bytes() for p in (files / "run").iterdir()} == before
    code, _, err = run(
        capsys, ["train", "--out", "run", "--resume", "--epochs", "2", "--quiet", "--trust-code"]
    )
    assert code == 0, err
    assert json.loads((files / "run" / "config.json").read_text())["epochs"] == 2


def test_a_model_file_edited_between_two_calls_is_imported_again(tmp_path) -> None:
    """Same process, same path, same size and modification time: the second call sees the edit."""
    import os

    from train import plugins

    f = tmp_path / "edited.py"
    f.write_text("def make():\n    return 1\n")
    st = f.stat()
    assert plugins.resolve(f"{f}:make")() == 1
    f.write_text("def make():\n    return 2\n")  # the same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same time, as within one clock tick
    assert plugins.resolve(f"{f}:make")() == 2
    spec = dataset_spec("digits")
    g = tmp_path / "net.py"
    g.write_text(
        "from torch import nn\ndef make(shape, n):\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, n))\n"
    )
    assert (
        build_model(f"{g}:make", spec.input_shape, spec.n_classes, spec.mean, spec.std)[
            1
        ].out_features
        == 10
    )
    g.write_text(
        "from torch import nn\ndef make(shape, n):\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 5))\n"
    )
    with pytest.raises(
        ValueError, match="5"
    ):  # the edited function runs (and its 5 outputs are refused)
        build_model(f"{g}:make", spec.input_shape, spec.n_classes, spec.mean, spec.std)
    d = tmp_path / "d.py"
    body = (
        "import numpy as np\ndef load():\n    x = np.full((8, 1, 2, 2), 0.{v})\n    y = np.arange(8) % 2\n"
        "    return x, y, x, y\n"
    )
    d.write_text(body.format(v=2))
    st = d.stat()
    assert float(load_dataset(f"{d}:load").train_x[0, 0, 0, 0]) == pytest.approx(0.2)
    d.write_text(body.format(v=7))
    os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert float(load_dataset(f"{d}:load").train_x[0, 0, 0, 0]) == pytest.approx(0.7)
