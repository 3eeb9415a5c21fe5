#!/usr/bin/env bash
# The tests on the oldest dependency versions pyproject.toml allows (scripts/floors.py says which), in a venv
# of their own outside the repository, so that a `>=` in pyproject.toml is a version that was run:
#   bash scripts/floors.sh            # the tests of the code that calls each floored package
#                                     # (about 3 min of tests on 2 cores, after the install)
#   bash scripts/floors.sh --ignore=tests/test_slurm.py -m "not container"   # all but the cluster and image
# Needs PyPI. scripts/test.sh runs it with no arguments after the main tests (FTVAR_TEST_FLOORS=0: not).
# The default files: typer (test_cli), orjson and jsonschema-rs (test_record, test_junk_records,
# test_collect), pandas and pyarrow (test_collect), transformers, tokenizers, datasets and accelerate
# (test_engines, test_stack, test_train; transformers' attention and mask interfaces: test_noise, and the
# encoders' layers: test_remedies), submitit (test_launch), matplotlib and statsmodels (test_plots, and
# test_cli's and test_launch's reports).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
V=${FTVAR_FLOORS_VENV:-${TMPDIR:-/tmp}/ftvar-floors}
# FTVAR_FLOORS_STEP: install | test | all (default). scripts/test.sh installs while the main tests run (pip
# mostly waits on the network and the disk), then tests.
STEP=${FTVAR_FLOORS_STEP:-all}
if [ "$STEP" != test ]; then
    "$PY" -m venv --clear "$V"
    "$PY" scripts/floors.py >"$V/floors.txt"
    "$V/bin/python" -m pip install --quiet -r "$V/floors.txt"
    "$V/bin/python" -m pip install --quiet --no-deps -e .
    echo "floors: $(tr '\n' ' ' <"$V/floors.txt")"
    echo "installed: $("$V/bin/python" -m pip list --format=freeze 2>/dev/null | grep -iE \
        '^(torch|transformers|datasets|tokenizers|huggingface.hub|accelerate|numpy|scipy|click)=' | tr '\n' ' ')"
fi
[ "$STEP" = install ] && exit 0
if [ $# -eq 0 ]; then
    set -- -q -n 2 --dist loadgroup tests/test_cli.py tests/test_record.py tests/test_junk_records.py \
        tests/test_collect.py tests/test_engines.py tests/test_stack.py tests/test_train.py tests/test_launch.py \
        tests/test_plots.py tests/test_noise.py tests/test_remedies.py
fi
"$V/bin/python" -m pytest -p no:cacheprovider "$@"
