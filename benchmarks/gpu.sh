#!/usr/bin/env bash
# Training throughput and MFU on one GPU (benchmarks/gpu.py), within 8 minutes: the Python keeps to a
# 420 s budget (cases that would pass it are recorded as skipped) and the timeout below is the backstop.
# Needs a CUDA build of torch in the venv, e.g.
#   make venv TORCH="torch --index-url https://download.pytorch.org/whl/cu128"
# Usage: benchmarks/gpu.sh [extra gpu.py arguments]; writes benchmarks/gpu_results.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
"$PYTHON" -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
exec timeout 480 "$PYTHON" -m benchmarks.gpu --out benchmarks/gpu_results.json "$@"
