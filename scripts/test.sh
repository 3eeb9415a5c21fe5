#!/usr/bin/env bash
# Install what the tests need and run them. This is the README's test command, and what .ci/run calls.
#
# - torch: the CPU build 2.13.0 when no torch is installed (a plain `torch` requirement would pull a
#   multi-GB CUDA build onto a CPU machine).
# - the project with its test extras, editable.
# - as root on Debian: the single-node SLURM cluster (slurm/dev-cluster.sh) for the SLURM tests.
# - lint (ruff), types (mypy), then pytest with any arguments given to this script.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install --quiet "torch==2.13.0"
fi
"$PY" -m pip install --quiet -e ".[test]"

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "${FTVAR_TEST_SLURM:-1}" = 1 ]; then
    bash slurm/dev-cluster.sh
fi

"$PY" -m ruff check ftvar tests bench
"$PY" -m mypy ftvar
"$PY" -m pytest "$@"
