#!/usr/bin/env bash
# The whole chain (cache -> train -> score -> generate --ablate) on a GPU, with throughputs next to plain generation.
#   bash scripts/check_gpu.sh                 # cuda, float32
#   DEVICE=cuda:1 DTYPE=float16 bash scripts/check_gpu.sh
#   DEVICE=cpu bash scripts/check_gpu.sh      # the same chain on the CPU (what CI-less machines can check)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" scripts/check_gpu.py --device "${DEVICE:-cuda}" --dtype "${DTYPE:-float32}" "$@"
