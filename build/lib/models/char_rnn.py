import torch
import torch.nn.functional as F
from torch import nn


class CharRNN(nn.Module):
    """A character-level language model: embedding, a stacked LSTM (nn.LSTM, so cuDNN serves it on a GPU), and a
    linear read-out over the vocabulary. Returns log-probabilities and the LSTM state to carry on."""

    def __init__(self, vocabulary_size: int, embedding: int = 64, hidden: int = 128, layers: int = 2,
                 dropout: float = 0.0):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary_size, embedding)
        self.lstm = nn.LSTM(embedding, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.readout = nn.Linear(hidden, vocabulary_size)

    def forward(self, x: torch.Tensor, state=None):
        output, state = self.lstm(self.embedding(x), state)
        return F.log_softmax(self.readout(output), dim=-1), state
