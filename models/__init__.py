"""The paper's networks."""

from .mlp import MLP

__all__ = ["MLP"]
