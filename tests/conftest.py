import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.data import DATA_ROOT_VARIABLE, load_mnist  # noqa: E402


def data_root() -> Path:
    root = os.environ.get(DATA_ROOT_VARIABLE)
    if root is None:
        beside = ROOT.parent / "shared" / "data"
        if not beside.is_dir():
            raise RuntimeError(f"set {DATA_ROOT_VARIABLE} to the folder that holds MNIST/raw to run the tests")
        root = beside
    return Path(root)


@pytest.fixture(scope="session")
def mnist():
    return load_mnist(data_root(), dtype=torch.float64)


@pytest.fixture(scope="session")
def mnist_batches(mnist):
    """Fifty real MNIST batches of 256, in a fixed order, in float64."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for x, y in mnist.batches(256, generator):
        batches.append((x, y))
        if len(batches) == 50:
            return batches
