"""Train one run and write its record: the command line (the loop is experiments/loop.py).

    python experiments/train.py +exp=mnist_sgd                         # one row of Table 1
    python experiments/train.py +exp=mnist_adam_sgd seed=1 epochs=1    # any value can be overridden
    python experiments/train.py 'optimizer="Adam^α/SGD(1e-5)"'         # any stack (quoted for the shell and Hydra)
    python experiments/train.py -m +exp=mnist_sgd seed=0,1,2           # a sweep (Hydra multirun)

The record (run.json, metrics.jsonl, summary.json; see experiments/records.py) goes into Hydra's run folder,
hydra.run.dir=PATH to choose it. Every value is checked before the run starts (experiments/config.py). A run that
diverges is recorded as such; a run that fails, before its first step or during training, is recorded with its
error; a sweep goes on either way, and ends with a tally and a non-zero exit if any run failed.
"""

# The task is the importable experiments.loop.main, not a function of this script: a launcher that pickles the task
# to run it elsewhere (SLURM through submitit) can then refer to it by name.
from experiments.loop import main

if __name__ == "__main__":
    main()
