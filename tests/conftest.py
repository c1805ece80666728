import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """$HYPEROPT_DATA_ROOT, else the shared data folder beside the checkout, else data/ in it."""
    root = os.environ.get("HYPEROPT_DATA_ROOT")  # experiments.data.DATA_ROOT_VARIABLE (not imported: torch alone here)
    if root is None:
        candidates = [ROOT.parent / "shared" / "data", ROOT / "data"]
        root = next((candidate for candidate in candidates if candidate.is_dir()), None)
        if root is None:
            raise RuntimeError("set HYPEROPT_DATA_ROOT to the folder that holds MNIST/raw to run the slow tests")
    return Path(root)


@pytest.fixture(scope="session")
def mnist():
    from experiments.data import load_mnist

    return load_mnist(data_root(), download=False, dtype=torch.float64)


@pytest.fixture(scope="session")
def mnist_batches(mnist):
    """Fifty real MNIST batches of 256, in a fixed order, in float64."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for x, y in mnist.batches(256, generator):
        batches.append((x, y))
        if len(batches) == 50:
            return batches


@pytest.fixture(scope="session")
def synthetic_batches():
    """Fifty MNIST-shaped batches of 256 in float64 that a network can learn from: pixels uniform in [0, 1], each
    label the class a fixed random linear teacher gives the image. No dataset needed."""
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(28 * 28, 10, generator=generator, dtype=torch.float64)
    batches = []
    for _ in range(50):
        x = torch.rand(256, 1, 28, 28, generator=generator, dtype=torch.float64)
        batches.append((x, ((x.flatten(1) - 0.5) @ teacher).argmax(1)))
    return batches
