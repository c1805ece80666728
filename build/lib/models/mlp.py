import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """The paper's MNIST network, 784-128-10 with tanh; like the reference model it also applies tanh to the
    logits before log_softmax. PyTorch's default initialisation."""

    def __init__(self, inputs: int = 784, hidden: int = 128, classes: int = 10):
        super().__init__()
        self.layer1 = nn.Linear(inputs, hidden)
        self.layer2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.layer1(x.flatten(1)))
        return F.log_softmax(torch.tanh(self.layer2(x)), dim=1)
