# Helpers sourced by dev-cluster.sh and dev-cluster-stop.sh (not executable on its own).
# shellcheck shell=bash

# pid of a running daemon: from its pidfile (checked against /proc/PID/comm),
# else by scanning /proc.  Prints nothing and fails if not running.
daemon_pid() {
    local name=$1 pidfile=${2:-} pid='' f c
    if [[ -n $pidfile && -r $pidfile ]]; then
        { read -r pid <"$pidfile"; } 2>/dev/null || true
        c=
        if [[ $pid =~ ^[0-9]+$ ]]; then { read -r c <"/proc/$pid/comm"; } 2>/dev/null || true; fi
        if [[ -n $c && $c == "$name" ]]; then
            echo "$pid"
            return 0
        fi
    fi
    for f in /proc/[0-9]*/comm; do
        c=
        { read -r c <"$f"; } 2>/dev/null || true
        if [[ $c == "$name" ]]; then
            pid=${f#/proc/}
            echo "${pid%/comm}"
            return 0
        fi
    done
    return 1
}
