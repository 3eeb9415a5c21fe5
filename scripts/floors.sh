#!/usr/bin/env bash
# The tests on the oldest dependency versions pyproject.toml allows (scripts/floors.py says which), in a venv
# of their own outside the repository, so that a `>=` in pyproject.toml is a version that was run:
#   bash scripts/floors.sh                   # pytest --ignore=tests/test_slurm.py -m "not container"
#   bash scripts/floors.sh tests/test_cli.py # any pytest arguments instead
# Needs PyPI. The cluster and container tests are left out: the dev cluster and the image have their own
# installs, and what they test (submitit, the records) runs in the other tests too.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
V=${FTVAR_FLOORS_VENV:-${TMPDIR:-/tmp}/ftvar-floors}
"$PY" -m venv --clear "$V"
"$V/bin/python" -m pip install --quiet "torch==2.13.0"
"$PY" scripts/floors.py >"$V/floors.txt"
"$V/bin/python" -m pip install --quiet -r "$V/floors.txt"
"$V/bin/python" -m pip install --quiet --no-deps -e .
"$V/bin/python" -m pip list --format=freeze 2>/dev/null \
    | grep -iE '^(torch|transformers|datasets|tokenizers|submitit|scikit-learn|statsmodels|pandas|pyarrow|rich|matplotlib|typer|orjson|jsonschema-rs|jsonschema_rs|threadpoolctl|accelerate|numpy|scipy|huggingface-hub|huggingface_hub)=' \
    | tr '\n' ' '
echo
if [ $# -eq 0 ]; then set -- --ignore=tests/test_slurm.py -m "not container"; fi
"$V/bin/python" -m pytest -p no:cacheprovider "$@"
