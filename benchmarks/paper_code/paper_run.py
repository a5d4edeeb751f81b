"""Run the paper's train.py (a checkout at $PAPER_CODE, with paper_files/ copied in) on CPU with local IDX files.

Usage: python paper_run.py --config config/fmnist_small.json [--seed N] [overrides ...]
Only adaptations: a stand-in `torchvision` (datasets read from the local Fashion-MNIST IDX
files, ToTensor = uint8/255 as torchvision does), `.cuda()` made a no-op, and
torch.cuda.FloatTensor mapped to torch.FloatTensor. The training code itself is untouched.
"""

import gzip
import os
import sys
import types

import numpy as np
import torch

PAPER = os.environ.get("PAPER_CODE", "")  # a checkout of sungyoon-lee/LossLandscapeMatters
IDX = os.environ.get("IDX_DIR", "/usr/share/datasets/fashion-mnist")


def _read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


class _IDXDataset(torch.utils.data.Dataset):
    def __init__(self, root, train=True, download=False, transform=None):
        pre = "train" if train else "t10k"
        self.x = _read_idx(f"{IDX}/{pre}-images-idx3-ubyte.gz")
        self.y = _read_idx(f"{IDX}/{pre}-labels-idx1-ubyte.gz").astype(np.int64)
        self.transform = transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        img = self.x[i]
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.y[i])


class _ToTensor:
    def __call__(self, arr):  # torchvision: uint8 HxW -> float 1xHxW / 255
        return torch.from_numpy(np.array(arr, copy=True)).unsqueeze(0).float().div(255)


tv = types.ModuleType("torchvision")
tvd = types.ModuleType("torchvision.datasets")
tvt = types.ModuleType("torchvision.transforms")
tvtf = types.ModuleType("torchvision.transforms.functional")
tvd.MNIST = _IDXDataset
tvd.FashionMNIST = _IDXDataset
tvt.ToTensor = _ToTensor
tvt.functional = tvtf
tv.datasets, tv.transforms = tvd, tvt
sys.modules.update(
    {
        "torchvision": tv,
        "torchvision.datasets": tvd,
        "torchvision.transforms": tvt,
        "torchvision.transforms.functional": tvtf,
    }
)

# CPU: .cuda() is a no-op, cuda.FloatTensor -> FloatTensor
torch.nn.Module.cuda = lambda self, *a, **k: self
torch.Tensor.cuda = lambda self, *a, **k: self
torch.cuda.FloatTensor = torch.FloatTensor

sys.path.insert(0, PAPER)
os.chdir(PAPER)
from argparser import argparser  # noqa: E402

import train as paper_train  # noqa: E402

DUMP = os.environ.get("PAPER_DUMP")
if DUMP:
    # record (not change) the initial weights and the training data order
    os.makedirs(DUMP, exist_ok=True)
    import bound_layers

    _convert = bound_layers.BoundSequential.convert
    _saved = {"init": False}

    def _convert_and_dump(seq, bound_opts=None):
        m = _convert(seq, bound_opts)
        if not _saved["init"]:
            torch.save({k: v.clone() for k, v in m.state_dict().items()}, f"{DUMP}/init.pt")
            _saved["init"] = True
        return m

    bound_layers.BoundSequential.convert = staticmethod(_convert_and_dump)
    paper_train.BoundSequential.convert = staticmethod(_convert_and_dump)
    _orders = []
    _iter = torch.utils.data.RandomSampler.__iter__

    def _iter_and_record(self):
        idx = list(_iter(self))
        if len(idx) == 60000:
            _orders.append(torch.tensor(idx))
            torch.save(_orders, f"{DUMP}/order.pt")
        return iter(idx)

    torch.utils.data.RandomSampler.__iter__ = _iter_and_record

INIT, ORDER = os.environ.get("PAPER_INIT"), os.environ.get("PAPER_ORDER")
if INIT or ORDER:
    # factor swap: start from given initial weights and/or use a given data order
    import bound_layers

    _convert2 = bound_layers.BoundSequential.convert
    _done = {"init": False}

    def _convert_and_load(seq, bound_opts=None):
        m = _convert2(seq, bound_opts)
        if INIT and not _done["init"]:
            m.load_state_dict(torch.load(INIT))
            _done["init"] = True
            print("loaded initial weights from", INIT)
        return m

    bound_layers.BoundSequential.convert = staticmethod(_convert_and_load)
    if ORDER:
        _given = torch.load(ORDER)
        _iter2 = torch.utils.data.RandomSampler.__iter__
        _k = {"k": 0}

        def _iter_given(self):
            idx = list(_iter2(self))  # still draws from the RNG as the original does
            if len(idx) == 60000:
                idx = _given[_k["k"]].tolist()
                _k["k"] += 1
                print("using given data order, epoch", _k["k"] - 1)
            return iter(idx)

        torch.utils.data.RandomSampler.__iter__ = _iter_given

if __name__ == "__main__":
    args = argparser()
    print("torch version: ", torch.__version__, "threads", torch.get_num_threads())
    paper_train.main(args)
