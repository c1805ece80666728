"""A small character-level GPT (causal self-attention, pre-norm blocks, learned positions), with the interface of
CharRNN: it takes the characters and a state and returns log-probabilities and the state to carry on. Its state is
the characters it last saw, as many as its context has room for beside the next input, so that a window as long as
the context carries nothing and one character at a time (sampling) still sees the context before it."""

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attention_norm, self.mlp_norm = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.projection = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        batch, length, width = h.shape
        q, k, v = (part.view(batch, length, self.heads, width // self.heads).transpose(1, 2)
                   for part in self.qkv(self.attention_norm(h)).split(width, dim=-1))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.projection(attended.transpose(1, 2).reshape(batch, length, width))
        return h + self.mlp(self.mlp_norm(h))


class CharGPT(nn.Module):
    def __init__(self, vocabulary_size: int, width: int = 128, layers: int = 2, heads: int = 4, context: int = 64):
        super().__init__()
        if width % heads:
            raise ValueError(f"model.width={width} must be a multiple of model.heads={heads}")
        self.context = context
        self.embedding = nn.Embedding(vocabulary_size, width)
        self.position = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.readout = nn.Linear(width, vocabulary_size)

    def forward(self, x: torch.Tensor, state=None):
        if x.shape[1] > self.context:
            raise ValueError(f"a window of {x.shape[1]} characters is longer than the model's context of "
                             f"{self.context}: set data.sequence_length ≤ model.context")
        seen = x if state is None else torch.cat([state[0], x], dim=1)[:, -self.context:]
        positions = torch.arange(seen.shape[1], device=x.device)
        h = self.embedding(seen) + self.position(positions)
        for block in self.blocks:
            h = block(h)
        logits = self.readout(self.norm(h[:, -x.shape[1]:]))
        return F.log_softmax(logits, dim=-1), (seen[:, -(self.context - 1):],)
