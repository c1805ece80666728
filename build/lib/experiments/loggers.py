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

    def log(self, metrics: dict, step: int) -> None:
        pass

    def finish(self, summary: dict) -> None:
        pass


class WandbLogger:
    def __init__(self, settings: dict, config: dict, directory: str, name: str, group: str):
        import wandb

        self.run = wandb.init(project=settings["project"], entity=settings.get("entity"), mode=settings["mode"],
                              dir=directory, name=name, group=group, job_type=config.get("experiment"),
                              config=config, reinit="finish_previous")

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(flatten(metrics), step=step)

    def finish(self, summary: dict) -> None:
        self.run.summary.update(flatten(summary))
        self.run.finish(exit_code=0 if summary.get("status") in ("ok", "diverged") else 1)


def make_logger(kind: str, settings: dict, config: dict, directory: str, name: str, group: str):
    if kind == "local":
        return LocalLogger()
    if kind == "wandb":
        return WandbLogger(settings, config, directory, name, group)
    raise ValueError(f"logger must be 'local' or 'wandb', not {kind!r}")
