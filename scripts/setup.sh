#!/usr/bin/env bash
# Make .venv with the project and its test dependencies. torch 2.14.1 / torchvision 0.29.1 are pinned here (not in
# pyproject.toml, which accepts a range) because this machine installs exactly those from files on disk.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[test]"
