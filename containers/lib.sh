#!/usr/bin/env bash
# Helpers sourced by the container build scripts (not executable on its own).
# shellcheck shell=bash

# pip_build_volumes DIR: give the RUN steps of `podman build` this host's pip setup, leaving no trace
# in the image but an empty /run/ftvar-build folder. Fills the array PIP_BUILD_ARGS with podman build
# flags: a bind mount of DIR at /run/ftvar-build (read-only) and --build-arg PIP_CONFIG_FILE pointing
# to the pip.conf written there (the Dockerfiles declare ARG PIP_CONFIG_FILE, so it exists only at
# build time). That pip.conf carries
#   - the CA bundle pip must trust (CI behind a TLS-intercepting egress proxy): FTVAR_BUILD_CA, else
#     PIP_CERT, else SSL_CERT_FILE, else `pip config get global.cert` when that file exists;
#   - the host pip config's local package indexes (file:// extra-index-url) and wheel folders
#     (find-links), mounted read-only below /run/ftvar-build, so that the build uses them before PyPI.
# FTVAR_BUILD_HOST_PIP=0 turns all of it off (plain PyPI, the image's own CA bundle).
# shellcheck disable=SC2034  # PIP_BUILD_ARGS is the result, read by the sourcing script
pip_build_volumes() {
    local dir=$1 ca="" indexes="" links="" item path n=0
    local mount=/run/ftvar-build
    PIP_BUILD_ARGS=()
    [[ ${FTVAR_BUILD_HOST_PIP:-1} == 1 ]] || return 0
    local -a inner=()
    ca=${FTVAR_BUILD_CA:-${PIP_CERT:-${SSL_CERT_FILE:-}}}
    if [[ -z $ca ]] && command -v pip >/dev/null; then
        ca=$(pip config get global.cert 2>/dev/null || true)
    fi
    {
        echo "[global]"
        if [[ -n $ca && -f $ca ]]; then
            cp "$ca" "$dir/ca.crt"
            echo "cert = $mount/ca.crt"
        fi
        if command -v pip >/dev/null; then
            for item in $(pip config get global.extra-index-url 2>/dev/null || true); do
                path=${item#file://}
                path=${path%/}
                [[ $item == file://* && -d $path ]] || continue
                # a PEP 503 index's pages link to ../../files/...: mount the folder above simple/
                local sub=""
                if [[ $(basename "$path") == simple ]]; then
                    path=$(dirname "$path")
                    sub=/simple
                fi
                n=$((n + 1))
                mkdir -p "$dir/local$n"
                inner+=(-v "$path:$mount/local$n:ro")
                indexes+=" file://$mount/local$n$sub"
            done
            for item in ${PIP_FIND_LINKS:-$(pip config get global.find-links 2>/dev/null || true)}; do
                [[ -d $item ]] || continue
                n=$((n + 1))
                mkdir -p "$dir/local$n"
                inner+=(-v "$item:$mount/local$n:ro")
                links+=" $mount/local$n"
            done
        fi
        [[ -z $indexes ]] || echo "extra-index-url =$indexes"
        [[ -z $links ]] || echo "find-links =$links"
    } >"$dir/pip.conf"
    PIP_BUILD_ARGS=(-v "$dir:$mount:ro" "${inner[@]}" --build-arg "PIP_CONFIG_FILE=$mount/pip.conf")
}
