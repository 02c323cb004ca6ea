#!/usr/bin/env bash
# The GPU figures of bench/gpu.py in one command (about 3-6 minutes on a GPU box),
# JSON to bench/results/gpu.json and stdout. Prepared; not yet run on a GPU.
#   bash bench/gpu.sh            # on the GPU machine
#   bash bench/gpu.sh --smoke    # toy sizes on CPU: checks the script only
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec timeout 480 "$PYTHON" bench/gpu.py "$@"
