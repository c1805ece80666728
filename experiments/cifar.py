"""CIFAR-10 from either release, held on the device as uint8 images; the standard augmentation (4-pixel pad,
random 32×32 crop, horizontal flip) and the per-channel normalisation are done there, a batch at a time."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from pathlib import Path

import numpy
import torch

from experiments.data import DataNotFound, TensorDataset, first

log = logging.getLogger(__name__)

BINARY, PICKLE = "cifar-10-batches-bin", "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
RECORD = 1 + 3 * 32 * 32  # the binary layout: a label byte, then the R, G and B planes
MEAN = (0.4914, 0.4822, 0.4465)  # of the 50,000 training images, per channel
STD = (0.2470, 0.2435, 0.2616)
PAD = 4


def read_binary(path: Path) -> tuple[numpy.ndarray, numpy.ndarray]:
    raw = numpy.fromfile(path, dtype=numpy.uint8)
    if raw.size == 0 or raw.size % RECORD:
        raise ValueError(f"{path} is not a CIFAR-10 binary batch: {raw.size} bytes is not a multiple of {RECORD}")
    records = raw.reshape(-1, RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(numpy.int64)


class ArraysOnly(pickle.Unpickler):
    """An unpickler of the python release's batches that builds dicts, lists, bytes and numpy arrays and nothing
    else: a pickle names the functions it calls, and a planted one would run code when loaded."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it would call {module}.{name}, which a CIFAR-10 batch never does")
        return super().find_class(module, name)


def read_pickle(path: Path) -> tuple[numpy.ndarray, numpy.ndarray]:
    with open(path, "rb") as file:
        try:
            batch = ArraysOnly(file, encoding="bytes").load()
        except pickle.UnpicklingError as error:
            raise ValueError(f"{path} is not a CIFAR-10 python batch and was not loaded: {error}") from None
    images = numpy.asarray(batch[b"data"], dtype=numpy.uint8).reshape(-1, 3, 32, 32)
    return images, numpy.asarray(batch[b"labels"], dtype=numpy.int64)


RELEASES = {BINARY: (".bin", read_binary), PICKLE: ("", read_pickle)}


def md5_mismatches(folder: Path, names: list[str]) -> list[str]:
    """The files among `names` whose md5 differs from the folder's MD5SUMS (none checked if it has none)."""
    sums = folder / "MD5SUMS"
    if not sums.exists():
        return []
    expected = dict(reversed(line.split()) for line in sums.read_text().splitlines() if line.strip())
    return [name for name in names
            if name in expected and hashlib.md5((folder / name).read_bytes()).hexdigest() != expected[name]]


def find_release(root: Path, download: bool) -> Path:
    for release in RELEASES:
        if (root / release / (TEST_BATCH + RELEASES[release][0])).exists():
            return root / release
    if download:
        from torchvision.datasets import CIFAR10
        try:
            CIFAR10(str(root), train=True, download=True)
        except (RuntimeError, OSError) as error:
            raise DataNotFound("CIFAR-10", root.resolve(), f"{BINARY}/ or {PICKLE}/", download, error) from None
        return root / PICKLE
    raise DataNotFound("CIFAR-10", root.resolve(), f"{BINARY}/ (the official binary release) or {PICKLE}/ (the "
                       "python release), each with a test batch and at least one training batch", download)


class AugmentedImages(TensorDataset):
    """uint8 images on the device. Each epoch's shuffle, crop offsets and flips are drawn from the run's (CPU)
    generator, so a seed gives the same batches on any device; the crop and the flip are one gather."""

    def __init__(self, *splits: torch.Tensor, augment: bool = True):
        super().__init__(*splits)
        self.augment = augment
        device = self.train_x.device
        self.scale = (1.0 / (255.0 * torch.tensor(STD, device=device))).view(1, 3, 1, 1)
        self.shift = (torch.tensor(MEAN, device=device) / torch.tensor(STD, device=device)).view(1, 3, 1, 1)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().mul_(self.scale).sub_(self.shift)

    def batches(self, batch_size: int, generator: torch.Generator):
        count, device = len(self.train_y), self.train_y.device
        order = torch.randperm(count, generator=generator).to(device)
        if self.augment:
            offsets = torch.randint(0, 2 * PAD + 1, (count, 2), generator=generator).to(device)
            flips = (torch.rand(count, generator=generator) < 0.5).to(device)
        for start in range(0, count, batch_size):
            index = order[start:start + batch_size]
            images = self.train_x[index]
            if self.augment:
                images = crop_and_flip(images, offsets[index], flips[index])
            yield self.normalise(images), self.train_y[index]

    def test_batches(self, batch_size: int):
        for x, y in super().test_batches(batch_size):
            yield self.normalise(x), y


def crop_and_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """For each image, the 32×32 window at (row, column) = offsets of the image zero-padded by 4 pixels, mirrored
    left to right where `flips`."""
    count, channels, height, width = images.shape
    padded = torch.nn.functional.pad(images, (PAD, PAD, PAD, PAD))
    rows = offsets[:, :1] + torch.arange(height, device=images.device)
    columns = offsets[:, 1:] + torch.arange(width, device=images.device)
    columns = torch.where(flips[:, None], columns.flip(1), columns)
    return padded[torch.arange(count, device=images.device)[:, None, None, None],
                  torch.arange(channels, device=images.device)[None, :, None, None],
                  rows[:, None, :, None], columns[:, None, None, :]]


def load_cifar10(root: str | os.PathLike, device: torch.device | str = "cpu", download: bool = False,
                 subset: int | None = None, test_subset: int | None = None,
                 augment: bool = True) -> AugmentedImages:
    """CIFAR-10 from ``root/cifar-10-batches-bin`` or ``root/cifar-10-batches-py``, with whichever of the five
    training batches are there."""
    folder = find_release(Path(root).expanduser(), download)
    suffix, read = RELEASES[folder.name]
    names = [name + suffix for name in TRAIN_BATCHES if (folder / (name + suffix)).exists()]
    if not names:
        raise FileNotFoundError(f"{folder} has a test batch but no training batch ({TRAIN_BATCHES[0]}{suffix}, ...)")
    bad = md5_mismatches(folder, names + [TEST_BATCH + suffix])
    if bad:
        raise ValueError(f"{', '.join(bad)} in {folder} differ from the md5 sums in its MD5SUMS: the files are "
                         "damaged or incomplete; copy them again")
    train = [read(folder / name) for name in names]
    train_x, train_y = numpy.concatenate([x for x, _ in train]), numpy.concatenate([y for _, y in train])
    test_x, test_y = read(folder / (TEST_BATCH + suffix))
    log.info("CIFAR-10 from %s: %d training images from %d of 5 batches (%s), %d test images", folder,
             len(train_y), len(names), ", ".join(names), len(test_y))
    train_x, train_y = first(train_x, subset, f"training images in {folder}"), train_y[:subset]
    test_x, test_y = first(test_x, test_subset, f"test images in {folder}", "data.test_subset"), test_y[:test_subset]
    splits = [torch.from_numpy(numpy.ascontiguousarray(a)).to(device) for a in (train_x, train_y, test_x, test_y)]
    return AugmentedImages(*splits, augment=augment)
