#!/usr/bin/env bash
# Build the local base image that CI uses in place of the official PyTorch CUDA image:
# Debian 12 minbase (debootstrap) + Debian's Python 3.11 in a venv at /opt/venv + the CPU torch
# wheel found on this machine (copied into the build context; no CUDA torch is ever downloaded).
#
#   containers/build-base.sh            # prints the image name on the last line of stdout
#
# Cached: nothing is done when the image already exists in podman's storage; the debootstrap
# root filesystem is kept as a tarball in $FTVAR_CONTAINER_CACHE so that a rebuild skips it.
# Environment:
#   FTVAR_LOCAL_BASE      image to build (default localhost/ftvar-base:bookworm-torch<version>-cpu)
#   FTVAR_TORCH_WHEEL     the CPU torch wheel (default: newest /opt/wheels/torch-*+cpu-cp311-*.whl)
#   FTVAR_CONTAINER_CACHE cache folder (default /var/cache/ftvar-containers)
#   DEBIAN_MIRROR         default: the first .../debian URI of apt's sources
#   FTVAR_REBUILD_BASE=1  rebuild even if the image exists
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=containers/lib.sh
source "$HERE/lib.sh"
T0=$(date +%s)
log() { printf '[build-base %3ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
trap 'log "ERROR: command failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap and rootful podman)"
command -v podman >/dev/null || die "podman is missing: run containers/setup-host.sh"

SUITE=bookworm
CACHE=${FTVAR_CONTAINER_CACHE:-/var/cache/ftvar-containers}
ROOTFS_TAR=$CACHE/rootfs-$SUITE-minbase.tar
ROOTFS_IMAGE=localhost/ftvar-rootfs:$SUITE

WHEEL=${FTVAR_TORCH_WHEEL:-}
if [[ -z $WHEEL ]]; then
    WHEEL=$(find /opt/wheels -maxdepth 1 -name 'torch-*+cpu-cp311-*.whl' 2>/dev/null | sort -V | tail -n 1)
fi
[[ -n $WHEEL && -f $WHEEL ]] || die "no CPU torch wheel found; set FTVAR_TORCH_WHEEL=/path/to/torch-X+cpu-cp311-...whl"
TORCH_VERSION=$(basename "$WHEEL" | cut -d- -f2)
TORCH_VERSION=${TORCH_VERSION%%+*}
BASE_IMAGE=${FTVAR_LOCAL_BASE:-localhost/ftvar-base:$SUITE-torch$TORCH_VERSION-cpu}

if [[ ${FTVAR_REBUILD_BASE:-0} != 1 ]] && podman image exists "$BASE_IMAGE"; then
    log "$BASE_IMAGE already exists: nothing to do"
    echo "$BASE_IMAGE"
    exit 0
fi

# 1. the root filesystem (cached as a tarball)
if [[ ! -s $ROOTFS_TAR ]]; then
    command -v debootstrap >/dev/null || die "debootstrap is missing: run containers/setup-host.sh"
    MIRROR=${DEBIAN_MIRROR:-}
    if [[ -z $MIRROR ]]; then
        MIRROR=$(grep -hoE '(https?)://[^ ]+/debian/?$' /etc/apt/sources.list /etc/apt/sources.list.d/* \
            2>/dev/null | head -n 1 || true)
        [[ -n $MIRROR ]] || die "no Debian mirror in apt's sources: set DEBIAN_MIRROR to one"
    fi
    mkdir -p "$CACHE"
    ROOTFS=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    log "debootstrap --variant=minbase $SUITE from $MIRROR"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$ROOTFS" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -n 30 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
    # keep the image small: no package cache, no lists, no docs
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
        "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/*
    tar -C "$ROOTFS" --numeric-owner -cf "$ROOTFS_TAR.part" .
    mv "$ROOTFS_TAR.part" "$ROOTFS_TAR"
    rm -rf "$ROOTFS"
    log "root filesystem cached in $ROOTFS_TAR ($(du -h "$ROOTFS_TAR" | cut -f1))"
else
    log "using cached root filesystem $ROOTFS_TAR"
fi

# 2. import it
log "podman import -> $ROOTFS_IMAGE"
podman import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' \
    "$ROOTFS_TAR" "$ROOTFS_IMAGE" >/dev/null

# 3. Python venv + the CPU torch wheel (the wheel is the only file in the build context)
CONTEXT=$(mktemp -d)
cp "$WHEEL" "$CONTEXT/"
cp "$HERE/base.Dockerfile" "$CONTEXT/Dockerfile"
PIPCONF=$(mktemp -d)
trap 'rm -rf "$CONTEXT" "$PIPCONF"' EXIT
pip_build_volumes "$PIPCONF"
log "podman build $BASE_IMAGE (torch $TORCH_VERSION from $(basename "$WHEEL"))"
podman build "${PIP_BUILD_ARGS[@]}" --build-arg "ROOTFS=$ROOTFS_IMAGE" --build-arg "TORCH_WHEEL=$(basename "$WHEEL")" \
    -t "$BASE_IMAGE" "$CONTEXT" >&2
podman image rm "$ROOTFS_IMAGE" >/dev/null 2>&1 || true
log "done: $BASE_IMAGE ($(podman image inspect --format '{{.Size}}' "$BASE_IMAGE" | numfmt --to=iec)B)"
echo "$BASE_IMAGE"
