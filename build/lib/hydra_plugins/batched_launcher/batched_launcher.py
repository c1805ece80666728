"""hydra/launcher=batched: a sweep's runs that can share one network train as one batched run.

    python experiments/train.py -m +exp=mnist_sgd seed=0,1,2 hydra/launcher=batched

The runs that share the model, the data, the batch size, the number of epochs, the device and precision and the
structure of their optimizer stack (seeds, initial hyperparameter values and so data order may differ) form a group,
trained as one network with a stack of runs (experiments/loop.py); each run still gets its own folder and the
record a lone run writes. Runs that cannot share one (a learning-rate-free optimizer, a step schedule, a group of
one) run alone, as the basic launcher runs them.
"""


import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class BatchedLauncherConf:
    _target_: str = "hydra_plugins.batched_launcher.batched_launcher.BatchedLauncher"
    max_runs: Optional[int] = None  # the most runs one network trains (device memory); null: no limit


ConfigStore.instance().store(group="hydra/launcher", name="batched", node=BatchedLauncherConf,
                             provider="gdtuo-hyperopt")


class BatchedLauncher(Launcher):
    def __init__(self, max_runs: Optional[int] = None) -> None:
        if max_runs is not None and max_runs < 1:
            raise ValueError(f"hydra.launcher.max_runs must be ≥ 1 or null, not {max_runs}")
        self.max_runs = max_runs
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _run(self, job: DictConfig, task_function: TaskFunction) -> JobReturn:
        returned = run_job(hydra_context=self.hydra_context, task_function=task_function, config=job,
                           job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returned

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from experiments.batched import group_jobs
        from experiments.loop import train_group
        from experiments.runs import open_run

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = []
        for number, overrides in enumerate(job_overrides, initial_job_idx):
            job = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(job):
                job.hydra.job.id = job.hydra.job.num = number
            jobs.append(job)
        groups = group_jobs(jobs, self.max_runs)
        log.info("Launching %d jobs as %d groups trained together and %d alone", len(jobs),
                 sum(len(group) > 1 for group in groups), sum(len(group) == 1 for group in groups))
        returns = {}
        for group in groups:
            for index in group:
                log.info("\t#%d : %s", index + initial_job_idx, " ".join(filter_overrides(job_overrides[index])))
            if len(group) == 1:
                returns[group[0]] = self._run(jobs[group[0]], self.task_function)
                continue
            opened = []
            for index in group:
                returns[index] = self._run(jobs[index], open_run)
                if returns[index].status.name == "COMPLETED" and returns[index].return_value is not None:
                    opened.append(returns[index].return_value)
            if opened:
                train_group(opened, as_one_network=True)
        return [returns[index] for index in range(len(jobs))]
