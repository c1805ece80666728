#!/usr/bin/env bash
# Make .venv with the library, the experiments' harness and the tests' dependencies. torch 2.14.1 / torchvision
# 0.29.1 are pinned here (not in pyproject.toml, which accepts a range) because this machine installs exactly those
# from files on disk. Where a copy of the data is at hand ($HYPEROPT_DATA_ROOT, or ../shared/data beside the
# checkout) and data/ does not exist yet, data/ becomes a link to it, so that the configs' default root finds it;
# elsewhere the experiments download MNIST and CIFAR-10 into data/ when they first need them.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[experiments,test]"
if [ ! -e data ]; then
    for candidate in "${HYPEROPT_DATA_ROOT:-}" ../shared/data; do
        if [ -n "$candidate" ] && [ -d "$candidate" ]; then
            ln -s "$(cd "$candidate" && pwd)" data
            echo "data/ -> $(readlink data)"
            break
        fi
    done
fi
