#!/usr/bin/env bash
# Stop the single-node SLURM dev cluster started by slurm/dev-cluster.sh.
# Idempotent: daemons that are not running are skipped.  State (jobs, job ids,
# accounting database) is kept; the next dev-cluster.sh resumes from it.
# Job steps still running under slurmstepd are not killed (scancel them first).
set -euo pipefail

T0=$(date +%s)
log() { printf '[dev-cluster-stop %3ss] %s\n' "$(($(date +%s) - T0))" "$*"; }

[[ $(id -u) -eq 0 ]] || { echo "[dev-cluster-stop] ERROR: must be run as root" >&2; exit 1; }

# shellcheck source=slurm/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# stop NAME:PIDFILE...: SIGTERM to all of them, wait up to 30 s, then SIGKILL.
stop() {
    local spec name pidfile pid i left
    local -a pids=() names=()
    for spec in "$@"; do
        name=${spec%%:*}
        pidfile=${spec#*:}
        if pid=$(daemon_pid "$name" "$pidfile"); then
            log "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            names+=("$name")
        else
            log "$name not running"
        fi
        rm -f "$pidfile"
    done
    for ((i = 0; i < 150; i++)); do
        left=0
        for pid in "${pids[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then left=1; fi
        done
        [[ $left -eq 0 ]] && return 0
        sleep 0.2
    done
    for i in "${!pids[@]}"; do
        if kill -0 "${pids[$i]}" 2>/dev/null; then
            log "${names[$i]} did not exit after 30 s, sending SIGKILL"
            kill -KILL "${pids[$i]}" 2>/dev/null || true
        fi
    done
}

# Order matters: slurmctld flushes accounting to slurmdbd, which needs mariadb;
# everything authenticates through munge.
stop slurmd:/run/slurmd.pid slurmctld:/run/slurmctld.pid
stop slurmdbd:/run/slurmdbd.pid
# mariadbd (or mysqld, depending on how it was started); mysqld_safe, if it
# was used, exits by itself once the server is gone.
if ! daemon_pid mariadbd /run/mysqld/mysqld.pid >/dev/null &&
    daemon_pid mysqld /run/mysqld/mysqld.pid >/dev/null; then
    stop mysqld:/run/mysqld/mysqld.pid munged:/run/munge/munged.pid
else
    stop mariadbd:/run/mysqld/mysqld.pid munged:/run/munge/munged.pid
fi
log "all stopped"
