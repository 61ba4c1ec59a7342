#!/usr/bin/env bash
# The GPU path measured in one prepared command (at most 8 minutes on one GPU):
#   benchmarks/gpu_check.sh OUT_DIR
# writes OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md (see benchmarks/gpu_check.py).
# Quantus' comparison needs the bench extra: .venv/bin/pip install -e '.[bench]'.
set -euo pipefail
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
timeout 480 "$python" benchmarks/gpu_check.py "$out" --device "${DEVICE:-cuda}"
