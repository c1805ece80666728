"""The paper's networks, by the name a config gives (model.name)."""

from torch import nn

from .char_rnn import CharRNN
from .mlp import MLP

MODELS = {"mlp": MLP, "char_rnn": CharRNN}


def build_model(name: str, **options) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name](**options)


__all__ = ["MLP", "CharRNN", "MODELS", "build_model"]
