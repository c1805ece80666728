"""The networks, by the name a config gives (model.name): the paper's, and a small character-level GPT."""

from torch import nn

from .batched import Batched, batch_models
from .char_gpt import CharGPT
from .char_rnn import CharRNN
from .mlp import MLP
from .resnet import ResNet, resnet20

MODELS = {"mlp": MLP, "char_rnn": CharRNN, "char_gpt": CharGPT, "resnet20": resnet20}
BATCHABLE = ("mlp", "char_rnn", "resnet20")  # the models batch_models trains N at once


def build_model(name: str, **options) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name](**options)


__all__ = ["Batched", "batch_models", "MLP", "CharRNN", "CharGPT", "ResNet", "resnet20", "MODELS", "BATCHABLE",
           "build_model"]
