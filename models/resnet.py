import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with batch norm; the shortcut is He et al.'s parameter-free "option A": subsample by
    striding and pad the new channels with zeros."""

    def __init__(self, inputs: int, outputs: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.stride, self.extra_channels = stride, outputs - inputs

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.extra_channels:
            half = self.extra_channels // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """He et al. (2015), section 4.2: the CIFAR ResNets of depth 6n + 2 (n = 3 is ResNet-20, 0.27 M parameters):
    a 3×3 convolution, three stages of n basic blocks with 16, 32 and 64 channels (the last two halve the
    resolution), global average pooling, a linear layer, log_softmax. He initialisation for the convolutions."""

    def __init__(self, blocks_per_stage: int = 3, classes: int = 10, width: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        stages, channels = [], width
        for stage in range(3):
            outputs = width * 2 ** stage
            for block in range(blocks_per_stage):
                stages.append(BasicBlock(channels, outputs, stride=2 if stage > 0 and block == 0 else 1))
                channels = outputs
        self.blocks = nn.Sequential(*stages)
        self.fc = nn.Linear(channels, classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        logits = self.fc(x.mean((2, 3)))  # (log-probabilities in float32 at least, under bf16 too)
        return F.log_softmax(logits, dim=1, dtype=torch.promote_types(logits.dtype, torch.float32))


def resnet20(classes: int = 10) -> ResNet:
    return ResNet(blocks_per_stage=3, classes=classes)
