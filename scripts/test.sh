#!/usr/bin/env bash
# Install what the tests need and run them. This is the README's test command, and what .ci/run calls.
#
# - torch: the CPU build 2.13.0 when no torch is installed (a plain `torch` requirement would pull a
#   multi-GB CUDA build onto a CPU machine).
# - the project with its test extras, editable.
# - as root on Debian (CI): the single-node SLURM cluster (slurm/dev-cluster.sh) and, unless
#   FTVAR_TEST_CONTAINERS=0, podman with a locally built image (containers/) for the container tests.
#   Elsewhere the tests that need them skip and say why.
# - lint (ruff), types (mypy), the layers' import contracts (import-linter, pyproject.toml), then pytest with any arguments given to this script.
# - with no arguments, then the tests of the code that calls each dependency again, in a venv of the oldest
#   versions pyproject.toml allows (scripts/floors.sh; FTVAR_TEST_FLOORS=0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
step() { printf '\n== %s\n' "$*"; }

step "python packages"
if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install --quiet "torch==2.13.0"
fi
"$PY" -m pip install --quiet -e ".[test]"

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    if [ "${FTVAR_TEST_SLURM:-1}" = 1 ]; then
        step "SLURM dev cluster"
        bash slurm/dev-cluster.sh
    fi
    if [ "${FTVAR_TEST_CONTAINERS:-1}" = 1 ]; then
        step "container image"
        bash containers/setup-host.sh
        FTVAR_TEST_IMAGE=$(bash containers/build-image.sh | tail -n 1)
        export FTVAR_TEST_IMAGE
    fi
fi

step "lint, types and layers"
"$PY" -m ruff check ftvar tests bench
"$PY" -m mypy ftvar
"$PY" -c 'import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())' --no-cache
step "tests"
"$PY" -m pytest "$@"
if [ $# -eq 0 ] && [ "${FTVAR_TEST_FLOORS:-1}" = 1 ]; then
    step "tests on the oldest dependency versions pyproject.toml allows"
    PYTHON="$PY" bash scripts/floors.sh
fi
