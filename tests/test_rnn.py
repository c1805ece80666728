"""The character-level language model: the text reader, its vocabulary, the windows of truncated
backpropagation through time, and the rnn_tolstoy experiment end to end."""

import json

import pandas as pd
import pytest
import torch

from experiments.records import read_records
from experiments.tasks import LanguageModelling
from experiments.text import UNKNOWN, load_text, windows
from models import CharRNN
from tests.conftest import data_root
from tests.harness import compose_experiment, script, train
from tests.pictures import share_in_colour


@pytest.mark.slow
def test_reads_war_and_peace_with_the_training_splits_vocabulary():
    data = load_text(data_root())
    text = (data_root() / "text/warpeace_input.txt").read_text(encoding="utf-8")
    total = len(data.train) + len(data.valid) + len(data.test)
    assert total == len(text)
    assert abs(len(data.train) / total - 0.9) < 1e-4 and abs(len(data.valid) / total - 0.05) < 1e-4
    assert data.vocabulary[0] == UNKNOWN and len(data.vocabulary) <= 83
    assert data.decode(data.train[:20]) == text[:20]


def test_characters_unseen_in_training_map_to_unknown(tmp_path):
    (tmp_path / "tiny.txt").write_text("abcab" * 36 + "ab" * 5 + "zzz", encoding="utf-8")
    data = load_text(tmp_path, file="tiny.txt")
    assert data.vocabulary == [UNKNOWN, "a", "b", "c"]
    assert "z" not in data.vocabulary and (data.test == 0).any()
    assert data.decode(data.test).count(UNKNOWN) == 3


def test_a_missing_empty_or_damaged_text_is_a_clear_error(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "damaged.txt").write_bytes("War and Peace ".encode() * 20 + b"\xff\xfe" + b"Tolstoy" * 20)
    for file, message in (("absent.txt", "no text at"), ("empty.txt", "holds 0 characters"),
                          ("damaged.txt", "damaged.txt is not UTF-8 text: byte 280 (ff) invalid start byte")):
        try:
            load_text(tmp_path, file=file)
        except (FileNotFoundError, ValueError) as error:
            assert message in str(error)
        else:
            raise AssertionError("no error")


def test_windows_cover_the_text_in_order():
    data = torch.arange(1001)
    seen_x = []
    for x, y in windows(data, batch_size=4, length=100):
        assert x.shape[0] == 4 and x.shape == y.shape and torch.equal(y, x + 1)
        seen_x.append(x)
    streams = torch.cat(seen_x, dim=1)
    assert torch.equal(streams.flatten(), torch.arange(1000))  # each stream continues the previous window


def test_the_lstm_state_is_carried_and_detached_between_windows(tmp_path):
    (tmp_path / "t.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    config = compose_experiment("rnn_tolstoy", [f"data.root={tmp_path}", "data.file=t.txt", "batch_size=4",
                                                "data.sequence_length=10"])
    task = LanguageModelling(config, torch.device("cpu"))
    model = CharRNN(**task.model_options)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = task.batches(torch.Generator())
    task.step(model, optimizer, next(batches))
    first = task.state
    assert first is not None and all(not s.requires_grad for s in first)
    task.step(model, optimizer, next(batches))  # would fail to backpropagate into the freed graph if attached
    assert task.state[0].data_ptr() != first[0].data_ptr()
    task.batches(torch.Generator())
    assert task.state is None  # a new epoch starts afresh


@pytest.mark.slow
def test_rnn_tolstoy_runs_and_writes_a_record_with_a_text_sample(tmp_path):
    train("-m", "+exp=rnn_tolstoy", "rnn.hyper=true,false", "epochs=1", "data.subset=30000",
          f"hydra.sweep.dir={tmp_path}")
    records = read_records(tmp_path)
    assert sorted(r["summary"]["optimizer_initial"] for r in records) == ["Adam^α(0.002)", "Adam^α(0.002)/Adam(0.01)"]
    for record in records:
        summary = record["summary"]
        assert summary["status"] == "ok" and 0 < summary["test_bpc"] < 8
        assert {"train_bpc", "valid_bpc", "hyperparameters"} <= set(record["metrics"][0])
        sample = (tmp_path / record["directory"].split("/")[-1] / "sample.txt").read_text(encoding="utf-8")
        assert len(sample) == 300 and sample == summary["sample"]
        assert json.loads((tmp_path / record["directory"].split("/")[-1] / "vocabulary.json").read_text())[0] == UNKNOWN
    out = tmp_path / "figure"
    script("figure_rnn", str(tmp_path), "--out", str(out), "--export-records", str(out / "runs"))
    table = pd.read_csv(out / "rnn.csv")
    assert sorted(table["arm"]) == ["fixed", "hyperoptimized"] and set(table["seeds"]) == {1}
    fixed = table.set_index("arm").loc["fixed"]
    assert fixed["final_alpha"] == 0.002  # a fixed α stays where it started
    assert len(list((out / "runs").rglob("sample.txt"))) == 2
    hyper = next(r for r in records if r["run"]["config"]["rnn"]["hyper"])
    assert table.set_index("arm").loc["hyperoptimized", "final_alpha"] == hyper["summary"]["hyperparameters"][0]["lr"]
    assert (out / "rnn.md").read_text().startswith("**Not the paper's protocol:** epochs: 1 instead of 50; trained "
                                                   "on the first 30000 examples only")
    assert share_in_colour(out / "figure_rnn.png", "firebrick") > 0
