#!/usr/bin/env bash
# Install and configure what the container stage of CI needs on a Debian 12 host (run as root):
# podman + runc (crun cannot set RLIMIT_NOFILE in unprivileged CI sandboxes), debootstrap for the
# local base image, and shellcheck for the lint tests. Idempotent: installed packages and an
# existing configuration are left as they are.
set -Eeuo pipefail

log() { printf '[setup-host] %s\n' "$*"; }

PACKAGES=(podman runc debootstrap shellcheck uidmap fuse-overlayfs)
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    log "packages already installed: ${PACKAGES[*]}"
fi

CONF=/etc/containers/containers.conf
if [[ -f $CONF ]] && grep -q '^runtime = "runc"' "$CONF"; then
    log "$CONF already selects runc"
else
    log "writing $CONF (runtime runc, explicit ulimits)"
    mkdir -p "$(dirname "$CONF")"
    if [[ -f $CONF ]]; then
        cp "$CONF" "$CONF.ftvar-bak"
    fi
    cat >"$CONF" <<'CONFEOF'
# Written by containers/setup-host.sh: crun fails here with
# "setrlimit RLIMIT_NOFILE: Operation not permitted", runc with explicit ulimits works.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
CONFEOF
fi

podman --version
podman info --format '{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}}'
