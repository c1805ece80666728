#!/usr/bin/env bash
# The GPU suite: one command of at most 10 minutes on a GPU machine, everything it writes under OUT.
#
# Before, on a machine with the data (the GPU machine has torch but not Hydra or OmegaConf, and ../shared does not
# travel with the working tree):
#   bash ../shared/tools/device-wheels.sh      # Hydra, OmegaConf, the lr-free optimizers as wheels, into .whl/
#   bash ../shared/tools/device-data.sh        # MNIST, the text, one CIFAR-10 training batch and the test batch,
#                                              # compressed into .device-data/ (about 57 MB)
# On the GPU machine (the device tool: carry .whl and .device-data):
#   bash scripts/device_suite.sh "$OUT"
# Dry run on the CPU, tiny sizes (CI does this, tests/test_device_suite.py): bash scripts/device_suite.sh OUT --dry-run
#
# In order, each part with its own time limit so that the whole fits (the dry run sets none: a busy CI machine must
# not fail it): the tests marked cuda (every model, batched
# and not, every optimizer, bf16, channels_last, against the CPU); bench_batched and bench_overhead (ResNet-20) as
# JSON; then the largest experiment slices that fit, batched (hydra/launcher=batched): the RNN grid at 50 epochs,
# Table 1, and Figure 2 at full length on the images the device holds; last, one Table 1 run by torchrun's
# processes (distributed=ddp, NCCL, one process per GPU); then the step alone (bench_step, ResNet-20 and the
# char-GPT) and the whole step compiled, and captured in a CUDA graph (bench_compile, ResNet-20). A part cut off by
# its limit leaves the records it wrote (run again, a sweep resumes). The records and logs come back as one
# archive, OUT/runs.tar.gz.
set -uo pipefail
out=${1:?usage: bash scripts/device_suite.sh OUT [--dry-run]}
dry=${2:-}
cd "$(dirname "$0")/.."
mkdir -p "$out/logs"
python=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ "$dry" = --dry-run ] && python=.venv/bin/python
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled

if ! "$python" -c "import hydra, omegaconf" 2>/dev/null; then
    [ -d .whl ] || { echo "Hydra is missing and there is no .whl/: run bash ../shared/tools/device-wheels.sh first" >&2; exit 2; }
    "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ -d .device-data ]; then
    [ -f .device-data/unpack.sh ] && bash .device-data/unpack.sh && rm .device-data/unpack.sh
    export HYPEROPT_DATA_ROOT=$PWD/.device-data
fi

if [ "$dry" = --dry-run ]; then
    limits=(0 0 0 0 0 0 0 0 0 0)  # timeout 0: no limit
    bench=(--runs 2 --steps 1 --rounds 1 --batch-size 4)
    overhead=(--heights 0,1 --steps 1 --rounds 1 --batch-size 4 --no-reference --no-compiled)
    step=(--steps 1 --rounds 1)
    # (Adam too: on torch 2.11, the GPU machine's, only Adam's compiled step failed)
    compiled=(--configurations "SGD(1e-4, 0.9)/SGD(1e-8)" "Adam(1e-5)/SGD(1e-9)" --steps 2)
    rnn=(epochs=1 data.subset=3000 rnn.alpha=2e-3 seed=0,1)
    table1=(epochs=1 data.subset=512 'optimizer="SGD(0.01)/SGD(1e-4)","SGD(0.02)/SGD(1e-3)"' seed=0)
    figure2=(epochs=1 data.subset=256 data.test_subset=256 cifar.alpha=0.1 cifar.momentum=0.9,0.99)
    table1_exp=+exp=mnist_sgd_sgd
    ddp=(--nproc_per_node=2 experiments/train.py +exp=mnist_adam_sgd epochs=1 data.subset=512)
else
    # 505 s. The second run (an H200, torch 2.11) took 51 s for the CUDA tests (which now compile a step too), 51
    # for bench_batched, 17 for the DDP run, 22-26 for each bench_step and 78 for bench_compile (which now compiles
    # each configuration a second time, captured in a CUDA graph); the experiment slices run into their limits
    # whatever they are. A session has 15 minutes of device time: after one run and the machine's start (under a
    # minute), enough to run a failed part again.
    limits=(80 70 45 25 25 30 30 30 30 140)
    bench=()
    overhead=(--heights 0,1,2 --rounds 11 --no-reference --no-compiled)  # (compiled: bench_compile, below)
    step=()
    compiled=(--steps 10)
    rnn=(rnn.alpha=1e-4,2e-3,1e-2 seed=0,1,2)
    table1=(seed=0,1,2)
    figure2=(cifar.alpha=0.01,0.1,1.0 cifar.momentum=0.09,0.9,0.99 precision=bf16)
    table1_exp='+exp=glob(mnist_*,exclude=mnist_sensitivity)'
    ddp=(--nproc_per_node="$("$python" -c 'import torch; print(max(1, torch.cuda.device_count()))')"
         experiments/train.py +exp=mnist_adam_sgd epochs=1)
fi

part() {  # part NAME LIMIT COMMAND...: run it under its limit, its output into OUT/NAME.log, its status noted
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$out/logs/$name.log" 2>&1
    local status=$?
    echo "$name: exit $status after $((SECONDS - start)) s (limit $limit s)" | tee -a "$out/suite.txt"
}

"$python" - <<'PY' | tee "$out/suite.txt"
import torch
print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (no CUDA)", "torch", torch.__version__)
PY
part cuda_tests "${limits[0]}" "$python" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py
part bench_batched "${limits[1]}" "$python" scripts/bench_batched.py "${bench[@]}" --out "$out/bench_batched.json"
part bench_overhead "${limits[2]}" "$python" scripts/bench_overhead.py --model resnet20 "${overhead[@]}" \
    --out "$out/bench_overhead_resnet20.json"
train=("$python" experiments/train.py -m hydra/launcher=batched progress=false)
part rnn "${limits[3]}" "${train[@]}" +exp=rnn_tolstoy rnn.hyper=true,false "${rnn[@]}" hydra.sweep.dir="$out/runs/rnn"
part table1 "${limits[4]}" "${train[@]}" "$table1_exp" "${table1[@]}" hydra.sweep.dir="$out/runs/table1"
part figure2 "${limits[5]}" "${train[@]}" +exp=cifar_resnet20 cifar.hyper=true,false "${figure2[@]}" \
    hydra.sweep.dir="$out/runs/figure2"
# one run by torchrun's processes, one per GPU (NCCL; gloo in the dry run)
part ddp "${limits[6]}" "$python" -m torch.distributed.run --standalone "${ddp[@]}" distributed=ddp progress=false \
    hydra.run.dir="$out/runs/ddp"
# the step alone on ResNet-20 and the char-GPT, each path against torch.optim's foreach and fused steps; the whole
# step compiled
part bench_step "${limits[7]}" "$python" scripts/bench_step.py "${step[@]}" --out "$out/bench_step_resnet20.json"
part bench_step_gpt "${limits[8]}" "$python" scripts/bench_step.py --model char_gpt "${step[@]}" \
    --out "$out/bench_step_char_gpt.json"
part bench_compile "${limits[9]}" "$python" scripts/bench_compile.py "${compiled[@]}" \
    --out "$out/bench_compile_resnet20.json"
# The device tool brings back at most 8 files of at most 16 MiB: the five benchmarks' JSON, this summary, and one
# archive of the records and logs. A run cut off by its limit leaves its checkpoints, which the archive leaves out
# (with them, the first run's was 110 MB).
mv "$out"/*.md "$out/logs/" 2>/dev/null
mkdir -p "$out/runs"
tar -czf "$out/runs.tar.gz" --exclude='checkpoint*.pt' --exclude='.checkpoint.*' -C "$out" runs logs &&
    rm -rf "$out/runs" "$out/logs"
cat "$out/suite.txt"
