"""A text as tensors of character indices on the device, split by position, for truncated backpropagation through
time: the training split is cut into `batch_size` parallel streams read in consecutive windows."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from experiments.data import first

UNKNOWN = "\ufffd"  # stands for any character of the validation or test split that training never saw


@dataclass
class TextDataset:
    vocabulary: list[str]
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor

    def encode(self, text: str) -> torch.Tensor:
        return encode(text, {c: i for i, c in enumerate(self.vocabulary)}).to(self.train.device)

    def decode(self, indices) -> str:
        return "".join(self.vocabulary[int(i)] for i in indices)


def encode(text: str, index: dict[str, int]) -> torch.Tensor:
    return torch.tensor([index.get(c, 0) for c in text], dtype=torch.long)


def windows(data: torch.Tensor, batch_size: int, length: int):
    """(inputs, targets) windows of shape (streams, ≤ length), covering the split in order: stream k reads the
    k-th contiguous part, and each window continues where the previous one stopped."""
    streams = min(batch_size, max(1, (len(data) - 1) // length))
    per_stream = (len(data) - 1) // streams
    x = data[:streams * per_stream].view(streams, per_stream)
    y = data[1:streams * per_stream + 1].view(streams, per_stream)
    for start in range(0, per_stream, length):
        yield x[:, start:start + length], y[:, start:start + length]


def load_text(root: str | os.PathLike, device: torch.device | str = "cpu", file: str = "text/warpeace_input.txt",
              subset: int | None = None, split: tuple[float, float] = (0.9, 0.05)) -> TextDataset:
    """`root/file` as UTF-8, split 90/5/5 by position; the vocabulary is the training split's characters (sorted),
    after index 0, which stands for characters it lacks. `subset` keeps the first N characters (smoke runs)."""
    path = Path(root).expanduser() / file
    if not path.is_file():
        raise FileNotFoundError(f"no text at {path.resolve()}: point data.root (or HYPEROPT_DATA_ROOT) at the folder "
                                f"holding {file}, or data.file at any UTF-8 text file under it")
    data = path.read_bytes()
    try:
        text = first(data.decode("utf-8"), subset, f"characters in {path}")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text: byte {error.start} ({data[error.start:error.start + 1].hex()}) "
                         f"{error.reason}; the file is damaged or in another encoding (convert it to UTF-8)") from None
    if len(text) < 100:
        raise ValueError(f"{path} holds {len(text)} characters; a language model needs a real text")
    train_end = int(len(text) * split[0])
    valid_end = train_end + int(len(text) * split[1])
    vocabulary = [UNKNOWN] + sorted(set(text[:train_end]) - {UNKNOWN})
    index = {c: i for i, c in enumerate(vocabulary)}
    parts = [encode(part, index).to(device) for part in (text[:train_end], text[train_end:valid_end],
                                                          text[valid_end:])]
    return TextDataset(vocabulary, *parts)
