"""What a run trains on: image classification (MNIST) or character-level language modelling (a text). A task
gives the batches of an epoch, takes a step, evaluates, and adds what it alone has to the run's summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from experiments.data import load_dataset
from experiments.step import forward_precision, optimizer_step, train_step
from experiments.text import load_text, windows


def _nll_per_run(log_probabilities: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
    """The negative log-likelihood of each run: log-probabilities (runs, ..., classes), targets (runs, ...)."""
    picked = log_probabilities.flatten(1, -2).gather(-1, y.flatten(1).unsqueeze(-1)).squeeze(-1)
    return -(picked.sum(1) if reduction == "sum" else picked.mean(1))


def _backward_and_step(losses: torch.Tensor, optimizer) -> torch.Tensor:
    # The runs are independent, so the gradient of their sum is each run's own gradient.
    optimizer.zero_grad()
    losses.sum().backward()
    optimizer_step(optimizer, losses)  # (each run's loss, where the step bounds itself by it)
    return losses.detach()


class OneRun(torch.nn.Module):
    """A lone model seen as a batched network of one run (inputs and outputs with a leading run dimension), so that
    one evaluation serves both."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, *state):
        output = self.model(x[0], *state)
        if isinstance(output, tuple):
            return output[0].unsqueeze(0), output[1]
        return output.unsqueeze(0)


class Classification:
    """Images (MNIST, CIFAR-10) to classes; the test set is evaluated after each epoch."""

    headline = "test_error"

    def __init__(self, cfg: DictConfig, device: torch.device):
        options = {key: cfg.data[key] for key in ("augment", "test_subset") if key in cfg.data}
        self.data = load_dataset(cfg.data.name, cfg.data.root, device, cfg.data.download, cfg.data.subset,
                                 **options)
        self.batch_size, self.eval_batch_size = cfg.batch_size, cfg.data.eval_batch_size
        self.precision = cfg.precision
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model_options: dict = {}
        self.steps_per_epoch = -(-len(self.data.train_y) // self.batch_size)
        self.train_examples = len(self.data.train_y)
        self.description = f"{self.train_examples} training examples"

    def batches(self, generator: torch.Generator):
        return self.data.batches(self.batch_size, generator)

    def batch_rows(self) -> set[int]:
        """The sizes of an epoch's batches (several processes split each into equal shares)."""
        return {self.batch_size, self.train_examples % self.batch_size or self.batch_size}

    def step(self, model, optimizer, batch) -> torch.Tensor:
        x, y = batch
        return train_step(model, optimizer, x.contiguous(memory_format=self.memory_format), y, self.precision)

    def evaluate(self, model, train_loss: float) -> dict:
        return self.evaluate_runs(OneRun(model), [train_loss])[0]

    @torch.no_grad()
    def evaluate_runs(self, model, train_losses: list[float]) -> list[dict]:
        """Test loss and error of each of the runs a batched network trains (one per train loss)."""
        runs = len(train_losses)
        model.eval()
        loss = torch.zeros(runs, dtype=torch.float64, device=self.data.test_y.device)
        wrong = torch.zeros(runs, dtype=torch.long, device=loss.device)
        count = 0
        for x, y in self.data.test_batches(self.eval_batch_size):
            with forward_precision(self.precision, x.device):
                x = x.contiguous(memory_format=self.memory_format)
                log_probabilities = model(x.expand(runs, *x.shape)).float()
            loss += _nll_per_run(log_probabilities, y.expand(runs, -1), "sum").double()
            wrong += (log_probabilities.argmax(-1) != y).sum(1)
            count += len(y)
        model.train()
        return [{"test_loss": float(l) / count, "test_error": 100.0 * int(w) / count}
                for l, w in zip(loss.cpu(), wrong.cpu())]

    def step_runs(self, model, optimizer, x, y) -> torch.Tensor:
        """One step of `runs` runs batched in one network (x: (runs, B, ...)); each run's loss, (runs,)."""
        with forward_precision(self.precision, x.device):
            log_probabilities = model(x)
        return _backward_and_step(_nll_per_run(log_probabilities.float(), y, "mean"), optimizer)

    def finish(self, model, directory: Path | None, seed: int) -> dict:
        return {"classes": int(self.data.train_y.max()) + 1}

    def state_dict(self) -> dict:
        """What a checkpoint within an epoch needs beyond the batches' order: nothing, for images."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    @staticmethod
    def describe(metrics: dict) -> str:
        return f"test error {metrics['test_error']:.2f}%"


class LanguageModelling:
    """Truncated backpropagation through consecutive windows; the LSTM state is carried from one window to the
    next and detached, and starts afresh each epoch. Losses are reported in bits per character."""

    headline = "test_bpc"

    def __init__(self, cfg: DictConfig, device: torch.device):
        self.data = load_text(cfg.data.root, device, cfg.data.file, cfg.data.subset)
        self.batch_size, self.length = cfg.batch_size, cfg.data.sequence_length
        self.sample_length, self.temperature = cfg.data.sample_length, cfg.data.temperature
        self.precision = cfg.precision
        self.model_options = {"vocabulary_size": len(self.data.vocabulary)}
        self.steps_per_epoch = sum(1 for _ in windows(self.data.train, self.batch_size, self.length))
        self.train_examples = len(self.data.train)  # characters
        self.description = (f"{len(self.data.train)} training characters, vocabulary of "
                            f"{len(self.data.vocabulary)}")
        self.state = None

    def batches(self, generator: torch.Generator):
        self.state = None
        return windows(self.data.train, self.batch_size, self.length)

    def batch_rows(self) -> set[int]:
        """The rows (streams) of every window."""
        return {len(next(windows(self.data.train, self.batch_size, self.length))[0])}

    def state_dict(self) -> dict:
        """The LSTM state carried into the next window."""
        return {"state": None if self.state is None else tuple(s.cpu() for s in self.state)}

    def load_state_dict(self, state: dict) -> None:
        device = self.data.train.device
        self.state = None if state["state"] is None else tuple(s.to(device) for s in state["state"])

    def step(self, model, optimizer, batch) -> torch.Tensor:
        x, y = batch
        with forward_precision(self.precision, x.device):
            log_probabilities, state = model(x, self.state)
        self.state = tuple(s.detach() for s in state)
        loss = F.nll_loss(log_probabilities.float().flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward(create_graph=getattr(optimizer, "create_graph", False))
        optimizer_step(optimizer, loss)
        return loss.detach()

    def step_runs(self, model, optimizer, x, y) -> torch.Tensor:
        with forward_precision(self.precision, x.device):
            log_probabilities, state = model(x, self.state)
        self.state = tuple(s.detach() for s in state)
        return _backward_and_step(_nll_per_run(log_probabilities.float(), y, "mean"), optimizer)

    def bits_per_character(self, model, data: torch.Tensor) -> float:
        return self.bits_per_character_runs(OneRun(model), 1, data)[0]

    @torch.no_grad()
    def bits_per_character_runs(self, model, runs: int, data: torch.Tensor) -> list[float]:
        """Bits per character of each of the runs a batched network trains."""
        model.eval()
        state, count = None, 0
        total = torch.zeros(runs, dtype=torch.float64, device=data.device)
        for x, y in windows(data, self.batch_size, self.length):
            log_probabilities, state = model(x.expand(runs, *x.shape), state)
            total += _nll_per_run(log_probabilities.float(), y.expand(runs, -1, -1), "sum").double()
            count += y.numel()
        model.train()
        return [float(t) / count / math.log(2) for t in total.cpu()]

    def evaluate(self, model, train_loss: float) -> dict:
        return self.evaluate_runs(OneRun(model), [train_loss])[0]

    def evaluate_runs(self, model, train_losses: list[float]) -> list[dict]:
        valid = self.bits_per_character_runs(model, len(train_losses), self.data.valid)
        return [{"train_bpc": loss / math.log(2), "valid_bpc": bpc} for loss, bpc in zip(train_losses, valid)]

    @torch.no_grad()
    def sample(self, model, seed: int, prime: str = "\n") -> str:
        """`sample_length` characters drawn at `temperature`, seeded, after `prime`."""
        generator = torch.Generator().manual_seed(seed)
        model.eval()
        x = self.data.encode(prime).unsqueeze(0)
        log_probabilities, state = model(x)
        drawn = []
        for _ in range(self.sample_length):
            probabilities = torch.softmax(log_probabilities[0, -1].float().cpu() / self.temperature, dim=-1)
            index = int(torch.multinomial(probabilities, 1, generator=generator))
            drawn.append(index)
            log_probabilities, state = model(torch.tensor([[index]], device=x.device), state)
        model.train()
        return self.data.decode(drawn)

    def finish(self, model, directory: Path | None, seed: int) -> dict:
        """The run's test bits per character and a sample, written into `directory` (None: a process that writes
        nothing, under several)."""
        sample = self.sample(model, seed)
        if directory is not None:
            (directory / "sample.txt").write_text(sample, encoding="utf-8")
            (directory / "vocabulary.json").write_text(json.dumps(self.data.vocabulary, ensure_ascii=False),
                                                        encoding="utf-8")
        return {"test_bpc": self.bits_per_character(model, self.data.test), "sample": sample,
                "vocabulary_size": len(self.data.vocabulary)}

    @staticmethod
    def describe(metrics: dict) -> str:
        return f"validation {metrics['valid_bpc']:.3f} bits per character"


TASKS = {"mnist": Classification, "cifar10": Classification, "text": LanguageModelling}


def make_task(cfg: DictConfig, device: torch.device):
    if cfg.data.name not in TASKS:
        raise ValueError(f"unknown dataset {cfg.data.name!r}; known: {sorted(TASKS)}")
    return TASKS[cfg.data.name](cfg, device)
