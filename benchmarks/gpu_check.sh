#!/usr/bin/env bash
# The GPU path measured in one prepared command (at most 9 minutes on one GPU):
#   benchmarks/gpu_check.sh OUT_DIR
# writes OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md (see benchmarks/gpu_check.py), then
# every model-calling metric against the model's limit and the peers (benchmarks/metrics_limit.py)
# into OUT_DIR/metrics_limit.json and OUT_DIR/metrics_limit.md (the JSON is written after each
# metric, so a timeout keeps what was measured).
# Quantus' comparison needs the bench extra: .venv/bin/pip install -e '.[bench]'.
set -uo pipefail
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$out"
python=${PYTHON:-.venv/bin/python}
status=0
timeout 300 "$python" benchmarks/gpu_check.py "$out" --device "${DEVICE:-cuda}" || status=$?
timeout 240 "$python" benchmarks/metrics_limit.py --device "${DEVICE:-cuda}" --repeats 2 \
    --json "$out/metrics_limit.json" > "$out/metrics_limit.md" || status=$?
exit "$status"
