"""One training step of a plain PyTorch loop, and the precision of its forward pass: torch alone, so that the
library's tests and the benchmarks take the same step as the harness."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def forward_precision(precision: str, device: torch.device):
    """The context of a forward pass: bf16 autocast, or nothing. Weights, gradients, hyperparameters and
    hypergradients stay in float32 either way: the optimizer steps outside it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; choose one of {sorted(PRECISIONS)}")
    if PRECISIONS[precision] is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


def train_step(model, optimizer, x, y, precision: str = "fp32") -> torch.Tensor:
    """One step of a plain PyTorch loop; a hyperoptimizer needs nothing more (the reference code, as a backend,
    needs the graph of the backward pass: create_graph)."""
    with forward_precision(precision, x.device):
        loss = F.nll_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward(create_graph=getattr(optimizer, "create_graph", False))
    optimizer_step(optimizer, loss)
    return loss.detach()


def optimizer_step(optimizer, loss: torch.Tensor) -> None:
    """optimizer.step(), handing the loss to an optimizer whose step bounds itself with it (MoMo's; a stack's with
    polyak=True, which takes one per run)."""
    if getattr(optimizer, "needs_loss", False):
        optimizer.step(loss=loss.detach())
    else:
        optimizer.step()
