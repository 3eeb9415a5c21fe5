#!/usr/bin/env bash
# Build the ftvar image from ./Dockerfile on a locally made base image (no registry needed):
#
#   containers/build-image.sh      # prints the image name on the last line of stdout
#
# Environment:
#   FTVAR_IMAGE            the tag to build (default localhost/ftvar:test); also written into the image
#                          as FTVAR_CONTAINER_IMAGE, so records name it
#   FTVAR_BASE_IMAGE       build on this base instead of making one with containers/build-base.sh
#                          (e.g. pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime where a registry is reachable)
#   FTVAR_CONTAINER_ENGINE podman (default) or docker (classic builder: DOCKER_BUILDKIT=0; the host pip
#                          setup of containers/lib.sh is then not passed, as `docker build` has no -v)
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# shellcheck source=containers/lib.sh
source "$HERE/lib.sh"
T0=$(date +%s)
log() { printf '[build-image %3ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
trap 'log "ERROR: command failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

ENGINE=${FTVAR_CONTAINER_ENGINE:-podman}
IMAGE=${FTVAR_IMAGE:-localhost/ftvar:test}
BASE=${FTVAR_BASE_IMAGE:-}
if [[ -z $BASE ]]; then
    BASE=$("$HERE/build-base.sh" | tail -n 1)
fi
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$ROOT/ftvar/__init__.py")
SOURCE=$(git -C "$ROOT" remote get-url origin 2>/dev/null || echo https://github.com/ftvar/ftvar)

args=(--build-arg "BASE=$BASE" --build-arg "IMAGE_NAME=$IMAGE" --build-arg "VERSION=$VERSION"
    --build-arg "SOURCE=$SOURCE" -t "$IMAGE" -f "$ROOT/Dockerfile")
PIPCONF=$(mktemp -d)
trap 'rm -rf "$PIPCONF"' EXIT
if [[ $ENGINE == podman ]]; then
    args+=(--format docker) # OCI images have no SHELL
    # podman 4.3's layer cache reuses an ENV layer built from another IMAGE_NAME (the build-arg value is not
    # part of its cache key): set the name in the final image's config directly
    args+=(--env "FTVAR_CONTAINER_IMAGE=$IMAGE" --label "org.opencontainers.image.ref.name=$IMAGE")
    pip_build_volumes "$PIPCONF"
    args+=("${PIP_BUILD_ARGS[@]}")
else
    export DOCKER_BUILDKIT=0
fi

log "$ENGINE build $IMAGE (ftvar $VERSION) on $BASE"
"$ENGINE" build "${args[@]}" "$ROOT" >&2
named=$("$ENGINE" image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" |
    sed -n 's/^FTVAR_CONTAINER_IMAGE=//p')
if [[ $named != "$IMAGE" ]]; then
    log "ERROR: $IMAGE says it is '$named' (FTVAR_CONTAINER_IMAGE): records would name the wrong image"
    exit 1
fi
size=$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE")
log "done: $IMAGE ($(numfmt --to=iec "$size")B)"
echo "$IMAGE"
