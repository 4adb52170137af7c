#!/usr/bin/env bash
# One trial on one GPU, one 2-worker trial sharing it, two trials sharing it: epoch times,
# devices per rank and the MIRACL/BCE epoch-time ratio (see bench/gpu_check.py).
# Usage: [PYTHON=...] bench/gpu_check.sh [--patients 700] [--epochs 4] [--storage DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" RAY_TRAIN_V2_ENABLED=1 HF_HUB_OFFLINE=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# PYTHON overrides the interpreter; otherwise the one ./run set up, otherwise python on PATH
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
exec "$PYTHON" bench/gpu_check.py "$@"
