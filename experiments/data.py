"""Datasets as tensors on the run's device: no DataLoader, no per-sample Python in the training loop."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

DATA_ROOT_VARIABLE = "HYPEROPT_DATA_ROOT"


def default_data_root() -> str:
    """Where the data is unless a config says otherwise: $HYPEROPT_DATA_ROOT, else data/ in the current folder."""
    return os.environ.get(DATA_ROOT_VARIABLE, "data")


class DataNotFound(FileNotFoundError):
    """A dataset that is neither under the data root nor could be downloaded; the message is one line."""

    def __init__(self, name: str, where: Path, holds: str, download: bool, error: Exception | None = None):
        if download:
            reason = str(error).strip().splitlines()[-1] if error is not None and str(error).strip() else "no reason"
            how = f"downloading it failed ({reason})"
        else:
            how = "data.download=false"
        super().__init__(
            f"{name} is not under {where} and {how}. Point data.root=PATH (or the {DATA_ROOT_VARIABLE} environment "
            f"variable) at a folder that holds {holds}" + ("." if download else ", or pass data.download=true."))


@dataclass
class TensorDataset:
    """Inputs and labels of a train and a test split, already on the device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def batches(self, batch_size: int, generator: torch.Generator):
        """One epoch of shuffled training batches; the last, smaller batch is kept, as a DataLoader would."""
        order = torch.randperm(len(self.train_y), generator=generator).to(self.train_y.device)
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            yield self.train_x[index], self.train_y[index]

    def test_batches(self, batch_size: int):
        for start in range(0, len(self.test_y), batch_size):
            yield self.test_x[start:start + batch_size], self.test_y[start:start + batch_size]


class DamagedData(ValueError):
    """A data file that is there but cannot be what it should be; the message is one line naming it."""


MNIST_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
               False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000)}


def read_idx(path: Path, rank: int, count: int) -> torch.Tensor:
    """An MNIST file in the IDX layout (a magic number naming the rank, the sizes, then uint8 values), checked:
    a file of the wrong kind, cut short or too long is DamagedData."""
    data = path.read_bytes()
    kind = "image" if rank == 3 else "label"
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if magic != 0x800 + rank:
        raise DamagedData(f"{path} is not an MNIST {kind} file: it starts with "
                          f"{data[:4].hex() or 'nothing'}, not {0x800 + rank:08x}")
    sizes = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(rank)]
    expected = [count, 28, 28][:rank]
    if sizes != expected:
        raise DamagedData(f"{path} holds {' × '.join(map(str, sizes))} values, not MNIST's "
                          f"{' × '.join(map(str, expected))}")
    header, size = 4 + 4 * rank, 1
    for n in sizes:
        size *= n
    if len(data) != header + size:
        raise DamagedData(f"{path} is {len(data)} bytes, not the {header + size} of {count} {kind}s: it was cut "
                          "short or changed (fetch it again)")
    values = torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(sizes)
    if rank == 1 and int(values.max()) > 9:
        raise DamagedData(f"{path} holds labels up to {int(values.max())}, not digits 0-9: it is damaged")
    return values


def first(items, subset: int | None, what: str, key: str = "data.subset"):
    """The first `subset` of `items` (all with None). Asking for more than there are is an error, not all of them:
    a run would train on fewer steps than its config says, and its record would not say so."""
    if subset is not None and subset > len(items):
        raise ValueError(f"{key}={subset} asks for more {what} than there are ({len(items):,}); set {key} to at "
                         f"most {len(items)}, or null for all of them")
    return items[:subset]


def load_mnist(root: str | os.PathLike, device: torch.device | str = "cpu", download: bool = False,
               subset: int | None = None, dtype: torch.dtype = torch.float32) -> TensorDataset:
    """MNIST from ``root/MNIST/raw`` (torchvision's layout), scaled to [0, 1] as ToTensor does; downloaded there
    first when it is missing and `download`. A file that is there but damaged is said to be, by name."""
    root = Path(root).expanduser()
    raw = root / "MNIST" / "raw"
    if not all((raw / name).exists() for train in (True, False) for name in MNIST_FILES[train][:2]):
        try:
            if not download:
                raise FileNotFoundError
            from torchvision.datasets import MNIST
            for train in (True, False):
                MNIST(str(root), train=train, download=True)
        except (RuntimeError, OSError) as error:
            raise DataNotFound("MNIST", raw.resolve(), "MNIST/raw", download, error) from None
    splits = []
    for train in (True, False):
        images, labels, count = MNIST_FILES[train]
        x = read_idx(raw / images, 3, count).to(device=device, dtype=dtype).div_(255.0).unsqueeze(1)
        splits += [x, read_idx(raw / labels, 1, count).to(device=device, dtype=torch.int64)]
    splits[0], splits[1] = first(splits[0], subset, "MNIST training images"), splits[1][:subset]
    return TensorDataset(*splits)


def load_dataset(name: str, root: str, device: torch.device, download: bool = False,
                 subset: int | None = None, **options) -> TensorDataset:
    from experiments.cifar import load_cifar10

    loaders = {"mnist": load_mnist, "cifar10": load_cifar10}
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(loaders)}")
    return loaders[name](root, device=device, download=download, subset=subset, **options)
