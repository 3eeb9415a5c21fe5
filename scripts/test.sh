#!/usr/bin/env bash
# Install what the tests need and run them. This is the README's test command, and what .ci/run calls.
#
# - torch: the CPU build 2.13.0 when no torch is installed (a plain `torch` requirement would pull a
#   multi-GB CUDA build onto a CPU machine).
# - the project with its test extras, editable.
# - as root on Debian (CI): the single-node SLURM cluster (slurm/dev-cluster.sh) and, unless
#   FTVAR_TEST_CONTAINERS=0, podman with a locally built image (containers/) for the container tests.
#   Elsewhere the tests that need them skip and say why.
# - lint (ruff), types (mypy), the layers' import contracts (import-linter, pyproject.toml), then pytest
#   with any arguments given to this script.
# - with no arguments, then the tests of the code that calls each dependency again, in a venv of the oldest
#   versions pyproject.toml allows (scripts/floors.sh, installed in the background meanwhile;
#   FTVAR_TEST_FLOORS=0 skips it).
# - pytest runs in two workers (pytest-xdist; FTVAR_TEST_WORKERS=1 for one, or pass `-n 0`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
step() { printf '\n== %s\n' "$*"; }

step "python packages"
if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install --quiet "torch==2.13.0"
fi
"$PY" -m pip install --quiet -e ".[test]"
FLOORS=0
if [ $# -eq 0 ] && [ "${FTVAR_TEST_FLOORS:-1}" = 1 ]; then
    FLOORS=1
    FLOORS_LOG=$(mktemp)
    # the floors' venv installs in the background while the cluster, the image and the main tests run
    PYTHON="$PY" FTVAR_FLOORS_STEP=install bash scripts/floors.sh >"$FLOORS_LOG" 2>&1 &
    FLOORS_PID=$!
fi

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
# two workers: the cluster's and the image's tests in one of them, one after another (tests/conftest.py)
"$PY" -m pytest -n "${FTVAR_TEST_WORKERS:-2}" --dist loadgroup "$@"
if [ "$FLOORS" = 1 ]; then
    step "tests on the oldest dependency versions pyproject.toml allows"
    if ! wait "$FLOORS_PID"; then
        cat "$FLOORS_LOG"
        echo "the floors' venv could not be installed" >&2
        exit 1
    fi
    cat "$FLOORS_LOG"
    PYTHON="$PY" FTVAR_FLOORS_STEP=test bash scripts/floors.sh
fi
