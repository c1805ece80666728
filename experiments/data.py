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


def load_mnist(root: str | os.PathLike, device: torch.device | str = "cpu", download: bool = False,
               subset: int | None = None, dtype: torch.dtype = torch.float32) -> TensorDataset:
    """MNIST from ``root/MNIST/raw`` (torchvision's layout), scaled to [0, 1] as ToTensor does; downloaded there
    first when it is missing and `download`."""
    from torchvision.datasets import MNIST

    root = Path(root).expanduser()
    splits = []
    for train in (True, False):
        try:
            dataset = MNIST(str(root), train=train, download=download)
        except (RuntimeError, OSError) as error:
            raise DataNotFound("MNIST", root.resolve() / "MNIST" / "raw", "MNIST/raw", download, error) from None
        x = dataset.data.to(device=device, dtype=dtype).div_(255.0).unsqueeze(1)
        splits += [x, dataset.targets.to(device)]
    if subset is not None:
        splits[0], splits[1] = splits[0][:subset], splits[1][:subset]
    return TensorDataset(*splits)


def load_dataset(name: str, root: str, device: torch.device, download: bool = False,
                 subset: int | None = None, **options) -> TensorDataset:
    from experiments.cifar import load_cifar10

    loaders = {"mnist": load_mnist, "cifar10": load_cifar10}
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(loaders)}")
    return loaders[name](root, device=device, download=download, subset=subset, **options)
