"""N copies of one of the paper's networks as one network: every parameter and buffer stacked on a leading run
dimension, so that one forward and one backward train N independent runs (and a hyperoptimizer with runs=N
learns each run's hyperparameters from its own slice).

The mechanism is the one each architecture runs fastest as: batched matrix products (torch.baddbmm) for the MLP
and the LSTM's gates, grouped convolutions (groups=N) with batch norm over N·C channels for ResNet-20, so one
kernel serves all runs where torch.vmap over functional_call would still launch per-run work for batch norm's
running statistics and the option-A shortcut's padding. Each equals N plain models to rounding (tested in float64).

Inputs carry the run dimension first: images (N, B, C, H, W) or (N, B, 784), characters (N, B, T); outputs are
(N, B, classes) or (N, B, T, vocabulary) log-probabilities.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .char_rnn import CharRNN
from .mlp import MLP
from .resnet import BasicBlock, ResNet


class Batched(nn.Module):
    """The parameters and buffers of N models of one architecture, stacked; plain names with '.' spelled '__'."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        if not models:
            raise ValueError("batch_models needs at least one model")
        kinds = {type(model) for model in models}
        if len(kinds) != 1:
            raise ValueError("models batched together must be of one architecture, not "
                             f"{sorted(k.__name__ for k in kinds)}")
        self.runs = len(models)
        self._template = [models[0]]  # static structure (strides, sizes), not a submodule: its weights are unused
        for name, _ in models[0].named_parameters():
            stacked = torch.stack([model.get_parameter(name).detach() for model in models]).clone()
            self.register_parameter(name.replace(".", "__"), nn.Parameter(stacked))
        for name, _ in models[0].named_buffers():
            self.register_buffer(name.replace(".", "__"), torch.stack([model.get_buffer(name) for model in models]))

    @property
    def template(self) -> nn.Module:
        return self._template[0]

    def weight(self, name: str) -> torch.Tensor:
        return getattr(self, name.replace(".", "__"))

    def run_state_dict(self, run: int) -> dict[str, torch.Tensor]:
        """Run `run`'s state_dict, as its plain model names it."""
        return {name.replace("__", "."): tensor[run].clone() for name, tensor in self.state_dict().items()}

    def run_model(self, run: int) -> nn.Module:
        """A plain model holding run `run`'s weights (for evaluation or sampling on its own)."""
        model = copy.deepcopy(self.template)
        model.load_state_dict(self.run_state_dict(run))
        return model.to(next(self.parameters()).device).train(self.training)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x (N, B, in) · weightᵀ (N, out, in) + bias (N, out): N linear layers at once."""
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


class BatchedMLP(Batched):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(_linear(x.flatten(2), self.weight("layer1.weight"), self.weight("layer1.bias")))
        return F.log_softmax(torch.tanh(_linear(x, self.weight("layer2.weight"), self.weight("layer2.bias"))), dim=-1)


class BatchedResNet(Batched):
    """Activations are (B, N·C, H, W): run n owns channels n·C to (n+1)·C - 1 of every layer."""

    def _conv(self, x: torch.Tensor, name: str, conv: nn.Conv2d) -> torch.Tensor:
        weight = self.weight(f"{name}.weight")
        return F.conv2d(x, weight.flatten(0, 1), stride=conv.stride, padding=conv.padding, groups=self.runs)

    def _norm(self, x: torch.Tensor, name: str, norm: nn.BatchNorm2d) -> torch.Tensor:
        if self.training:
            self.weight(f"{name}.num_batches_tracked").add_(1)
        running_mean, running_var = (self.weight(f"{name}.{key}").view(-1) for key in ("running_mean", "running_var"))
        return F.batch_norm(x, running_mean, running_var, self.weight(f"{name}.weight").reshape(-1),
                            self.weight(f"{name}.bias").reshape(-1), self.training, norm.momentum, norm.eps)

    def _shortcut(self, x: torch.Tensor, block: BasicBlock) -> torch.Tensor:
        if block.stride != 1:
            x = x[:, :, ::block.stride, ::block.stride]
        if block.extra_channels:
            batch, channels, height, width = x.shape
            half = block.extra_channels // 2
            x = F.pad(x.view(batch, self.runs, channels // self.runs, height, width),
                      (0, 0, 0, 0, half, block.extra_channels - half)).flatten(1, 2)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        runs, batch = images.shape[:2]
        x = images.transpose(0, 1).flatten(1, 2)  # (B, N·3, H, W)
        net = self.template
        x = F.relu(self._norm(self._conv(x, "conv", net.conv), "bn", net.bn))
        for index, block in enumerate(net.blocks):
            name = f"blocks.{index}"
            out = F.relu(self._norm(self._conv(x, f"{name}.conv1", block.conv1), f"{name}.bn1", block.bn1))
            out = self._norm(self._conv(out, f"{name}.conv2", block.conv2), f"{name}.bn2", block.bn2)
            x = F.relu(out + self._shortcut(x, block))
        features = x.mean((2, 3)).view(batch, runs, -1).transpose(0, 1)  # (N, B, C)
        logits = _linear(features, self.weight("fc.weight"), self.weight("fc.bias"))
        return F.log_softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))


class BatchedCharRNN(Batched):
    """The LSTM's gates as batched matrix products over the runs, in nn.LSTM's gate order (i, f, g, o). The state
    is (h, c), each (layers, N, B, hidden)."""

    def __init__(self, models: list[nn.Module]):
        super().__init__(models)
        if self.template.lstm.dropout:
            raise ValueError("a char-RNN with dropout between its layers cannot be batched: each run would need "
                             "its own dropout masks drawn as it draws them alone")

    def forward(self, x: torch.Tensor, state=None):
        runs, batch, length = x.shape
        lstm = self.template.lstm
        embedding = self.weight("embedding.weight")
        inputs = embedding[torch.arange(runs, device=x.device).view(runs, 1, 1), x]  # (N, B, T, E)
        if state is None:
            zeros = inputs.new_zeros(lstm.num_layers, runs, batch, lstm.hidden_size)
            state = (zeros, zeros)
        hidden, cells = [], []
        for layer in range(lstm.num_layers):
            w_ih, w_hh = self.weight(f"lstm.weight_ih_l{layer}"), self.weight(f"lstm.weight_hh_l{layer}")
            bias = self.weight(f"lstm.bias_ih_l{layer}") + self.weight(f"lstm.bias_hh_l{layer}")
            projected = _linear(inputs.flatten(1, 2), w_ih, bias).view(runs, batch, length, -1)
            h, c = state[0][layer], state[1][layer]
            outputs = []
            for t in range(length):
                gates = torch.baddbmm(projected[:, :, t], h, w_hh.transpose(1, 2))
                i, f, g, o = gates.chunk(4, dim=-1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outputs.append(h)
            inputs = torch.stack(outputs, dim=2)
            hidden.append(h)
            cells.append(c)
        logits = _linear(inputs.flatten(1, 2), self.weight("readout.weight"), self.weight("readout.bias"))
        return F.log_softmax(logits.view(runs, batch, length, -1), dim=-1), (torch.stack(hidden), torch.stack(cells))


BATCHED = {MLP: BatchedMLP, ResNet: BatchedResNet, CharRNN: BatchedCharRNN}


def batch_models(models: list[nn.Module]) -> Batched:
    """One network that trains these N models (of one architecture) at once; each keeps its own initial weights."""
    kind = type(models[0]) if models else None
    if kind not in BATCHED:
        raise ValueError(f"no batched version of {kind.__name__ if kind else 'nothing'}; batched: "
                         f"{sorted(k.__name__ for k in BATCHED)}")
    return BATCHED[kind](models)
