#!/usr/bin/env bash
# The GPU check in one call (under 8 minutes on one GPU): the gpu-marked tests and the GPU benchmarks,
# summarised in OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md (scripts/gpu_check.py).
#
#   scripts/gpu_check.sh OUT_DIR [--budget_s 450] [--no-compile] [--no-tests]
#
# Without a CUDA device it says so, shows that the gpu tests skip, and exits 0. Needs no network access.
# Python: $PYTHON, else the repository's .venv, else python3.
set -euo pipefail
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: $0 OUT_DIR [--budget_s 450] [--no-compile] [--no-tests]" >&2
    exit 2
fi
out_dir=$(mkdir -p "$1" && cd "$1" && pwd)
shift
cd "$(dirname "$0")/.."
python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
exec "$python" -m scripts.gpu_check "$out_dir" "$@"
