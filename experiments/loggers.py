"""Where metrics go besides the run record: nowhere (local) or a Weights & Biases mirror."""

from __future__ import annotations


def flatten(metrics: dict, prefix: str = "") -> dict:
    """{"hyperparameters": [{"lr": 0.1}]} -> {"hyperparameters/0/lr": 0.1}, as W&B charts want."""
    flat = {}
    items = metrics.items() if isinstance(metrics, dict) else enumerate(metrics)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (dict, list, tuple)):
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


class LocalLogger:
    """The run record is the log; nothing else to do."""

    def log_trajectory(self, line: str) -> None:
        pass

    def log(self, metrics: dict, line: str) -> None:
        pass

    def finish(self, summary: dict) -> None:
        pass


class WandbLogger:
    """A W&B mirror of the run record: charts of the flattened metrics, and every record line as it is written
    (`record/metrics`, `record/trajectory`, `record/summary`, `record/run`: the JSON of metrics.jsonl's and
    hyperparameters.jsonl's lines, summary.json and run.json), so that experiments/wandb_runs.py rebuilds the
    record from W&B alone. The W&B run's id is the record's: a resumed run continues the same W&B run."""

    def __init__(self, settings: dict, config: dict, directory: str, name: str, group: str, record):
        import wandb

        self.record = record
        self.run = wandb.init(project=settings["project"], entity=settings.get("entity"), mode=settings["mode"],
                              dir=directory, name=name, group=group, job_type=config.get("experiment"),
                              config=config, id=record.run["wandb_id"], resume="allow", reinit="finish_previous")

    def log_trajectory(self, line: str) -> None:
        self.run.log({"record/trajectory": line})

    def log(self, metrics: dict, line: str) -> None:
        self.run.log({**flatten(metrics), "record/metrics": line})
        self._mirror_files()

    def _mirror_files(self) -> None:
        self.run.summary.update({"record/summary": self.record.summary_json(), "record/run": self.record.run_json()})

    def finish(self, summary: dict) -> None:
        self.run.summary.update(flatten(summary))
        self._mirror_files()
        self.run.finish(exit_code=0 if summary.get("status") in ("ok", "diverged") else 1)


def make_logger(kind: str, settings: dict, config: dict, directory: str, name: str, group: str, record):
    if kind == "local":
        return LocalLogger()
    if kind == "wandb":
        return WandbLogger(settings, config, directory, name, group, record)
    raise ValueError(f"logger must be 'local' or 'wandb', not {kind!r}")
