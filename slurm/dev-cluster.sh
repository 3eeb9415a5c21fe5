#!/usr/bin/env bash
# Start (installing if needed) a single-node SLURM dev cluster on localhost.
#
# Debian 12 / Slurm 22.05, run as root, no systemd needed.  Daemons:
#   munged (user munge) -> mariadbd (127.0.0.1) -> slurmdbd -> slurmctld -> slurmd
# Idempotent: anything already running is only checked.  The script returns
# once the node is up, a trivial batch job (with an srun step) has run and
# sacct reports it.  Stop everything with slurm/dev-cluster-stop.sh.
#
# Tunables (environment): FTVAR_SLURM_CPUS (8), FTVAR_SLURM_MEM_MB (16000),
# FTVAR_SLURM_GPUS (4).  CPUs/memory/GPUs are declared, not detected.
set -Eeuo pipefail

CLUSTER=ftvar-dev
PARTITION=gpu
NODE=$(hostname -s 2>/dev/null || uname -n)
NODE=${NODE%%.*}
CPUS=${FTVAR_SLURM_CPUS:-8}
MEM_MB=${FTVAR_SLURM_MEM_MB:-16000}
NGPUS=${FTVAR_SLURM_GPUS:-4}
for v in CPUS MEM_MB NGPUS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "[dev-cluster] ERROR: $v must be a positive integer, got '${!v}'" >&2; exit 1; }
done
DEF_MEM_PER_CPU=$((MEM_MB / CPUS))

ETC=/etc/slurm
LOGDIR=/var/log/slurm
STATEDIR=/var/lib/slurm
GPUDIR=/var/lib/ftvar-dev-cluster/dev
MYSQL_LOG=/var/log/mysql/error.log
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=ftvar-dev-slurm
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)

T0=$(date +%s)
log() { printf '[dev-cluster %3ss] %s\n' "$(($(date +%s) - T0))" "$*"; }

dump_logs() {
    local f
    for f in /var/log/munge/munged.log "$MYSQL_LOG" "$LOGDIR/slurmdbd.log" \
        "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" "$LOGDIR/start-stderr.log"; do
        if [[ -s $f ]]; then
            echo "----- last 40 lines of $f -----" >&2
            tail -n 40 "$f" >&2 || true
        fi
    done
}

die() {
    echo "[dev-cluster] ERROR: $*" >&2
    dump_logs
    exit 1
}

on_err() {
    local rc=$1 line=$2 cmd=$3
    trap - ERR
    echo "[dev-cluster] ERROR: command failed (exit $rc) at line $line: $cmd" >&2
    dump_logs
    exit "$rc"
}
trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR

[[ $(id -u) -eq 0 ]] || die "must be run as root"

# shellcheck source=slurm/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.5 s.
wait_for() {
    local secs=$1 what=$2 i
    shift 2
    for ((i = 0; i < secs * 2; i++)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.5
    done
    die "timed out after ${secs}s waiting for $what"
}

# write_if_changed FILE MODE OWNER: content on stdin.  Returns 0 if FILE changed.
write_if_changed() {
    local file=$1 mode=$2 owner=$3 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        chmod "$mode" "$file"
        chown "$owner" "$file"
        return 1
    fi
    install -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$tmp" "$file"
    rm -f "$tmp"
    return 0
}

stop_daemon() {
    local name=$1 pidfile=$2 pid i
    pid=$(daemon_pid "$name" "$pidfile") || return 0
    log "stopping $name (pid $pid) to apply new configuration"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 60; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    kill -KILL "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------- install
POLICY_RC=/usr/sbin/policy-rc.d
created_policy=0
cleanup() {
    if [[ $created_policy -eq 1 ]]; then rm -f "$POLICY_RC"; fi
}
trap cleanup EXIT

missing=()
for p in "${PACKAGES[@]}"; do
    # shellcheck disable=SC2016  # ${...} is dpkg-query syntax, not shell
    if [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true) != installed ]]; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    log "installing ${missing[*]} (apt-get)"
    if [[ ! -e $POLICY_RC ]]; then
        # keep package scripts from starting daemons with default configs
        printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC"
        chmod 755 "$POLICY_RC"
        created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" >/tmp/ftvar-dev-cluster-apt.log 2>&1 ||
        { tail -n 50 /tmp/ftvar-dev-cluster-apt.log >&2; die "apt-get install failed"; }
    cleanup
    created_policy=0
    log "installed"
else
    log "packages already installed"
fi
id slurm >/dev/null 2>&1 || die "user 'slurm' missing after install"

# ---------------------------------------------------------------- directories
install -d -m 755 -o slurm -g slurm "$LOGDIR" "$STATEDIR" "$STATEDIR/slurmctld"
install -d -m 755 -o root -g root "$STATEDIR/slurmd" "$ETC" "$GPUDIR"
: >"$LOGDIR/start-stderr.log"

# Fake GPUs: GRES File= must be character devices; c 1 3 is the /dev/null device.
for ((i = 0; i < NGPUS; i++)); do
    if [[ ! -c $GPUDIR/gpu$i ]]; then
        rm -f "$GPUDIR/gpu$i"
        mknod -m 666 "$GPUDIR/gpu$i" c 1 3
    fi
done

# ---------------------------------------------------------------- configuration
# A running daemon whose config file is newer than its pidfile gets restarted
# (covers both "config just changed" and "an earlier run failed half-way").
config_newer() {
    local pidfile=$1 f
    shift
    for f in "$@"; do
        if [[ $f -nt $pidfile ]]; then return 0; fi
    done
    return 1
}

# start_daemon NAME CONFIG...: restart NAME if a config file is newer than its pidfile, start it unless running.
start_daemon() {
    local name=$1 pidfile=/run/$1.pid
    shift
    if config_newer "$pidfile" "$@"; then
        stop_daemon "$name" "$pidfile"
    fi
    if daemon_pid "$name" "$pidfile" >/dev/null; then
        log "$name already running"
    else
        log "starting $name"
        "$name" 2>>"$LOGDIR/start-stderr.log" || die "$name failed to start"
    fi
}

if write_if_changed "$ETC/slurm.conf" 644 root:root <<EOF; then
# Generated by slurm/dev-cluster.sh -- single-node ftvar dev cluster.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Requeued jobs wait cred_expire seconds before they may start again (default 120).
AuthInfo=cred_expire=10
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATEDIR/slurmctld
SlurmdSpoolDir=$STATEDIR/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM_PER_CPU
GresTypes=gpu
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
MaxArraySize=1001
SchedulerType=sched/backfill
# sched_interval: the periodic pass that starts e.g. requeued jobs once their BeginTime passes (default 60 s)
SchedulerParameters=sched_interval=2,bf_interval=2,sched_min_interval=100000
KillWait=5
MinJobAge=300
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=60
MessageTimeout=10
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:$NGPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    log "wrote $ETC/slurm.conf"
fi

if write_if_changed "$ETC/gres.conf" 644 root:root <<EOF; then
# Generated by slurm/dev-cluster.sh -- fake GPUs (character devices, c 1 3).
AutoDetect=off
Name=gpu File=$GPUDIR/gpu[0-$((NGPUS - 1))]
EOF
    log "wrote $ETC/gres.conf"
fi

if write_if_changed "$ETC/slurmdbd.conf" 600 slurm:slurm <<EOF; then
# Generated by slurm/dev-cluster.sh
AuthType=auth/munge
DbdHost=$NODE
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=slurm
DebugLevel=info
LogFile=$LOGDIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
    log "wrote $ETC/slurmdbd.conf"
fi

write_if_changed /etc/mysql/mariadb.conf.d/99-ftvar-dev-cluster.cnf 644 root:root <<EOF || true
# Generated by slurm/dev-cluster.sh
[mysqld]
bind-address = 127.0.0.1
log_error = $MYSQL_LOG
innodb_buffer_pool_size = 128M
innodb_lock_wait_timeout = 900
EOF

# ---------------------------------------------------------------- munge
munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }
if munge_ok; then
    log "munged already running"
else
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating munge key"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key --force
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        fi
    fi
    chown -R munge:munge /etc/munge
    chmod 700 /etc/munge
    chmod 400 /etc/munge/munge.key
    install -d -m 700 -o munge -g munge /var/lib/munge /var/log/munge
    install -d -m 755 -o munge -g munge /run/munge
    if ! daemon_pid munged /run/munge/munged.pid >/dev/null; then
        log "starting munged"
        rm -f /run/munge/munged.pid
        runuser -u munge -- /usr/sbin/munged 2>>"$LOGDIR/start-stderr.log" ||
            die "munged failed to start"
    fi
    wait_for 15 "munge" munge_ok
    log "munged is up"
fi

# ---------------------------------------------------------------- mariadb
mysql_ok() { mysqladmin --protocol=socket ping >/dev/null 2>&1; }
if mysql_ok; then
    log "mariadb already running"
else
    install -d -m 755 -o mysql -g mysql /run/mysqld
    install -d -m 2750 -o mysql -g adm /var/log/mysql
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        log "initialising mariadb data directory"
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db \
            >>"$LOGDIR/start-stderr.log" 2>&1
    fi
    log "starting mariadb"
    mysqld_bin=$(command -v mariadbd || echo /usr/sbin/mysqld)
    setsid "$mysqld_bin" --user=mysql </dev/null >>"$LOGDIR/start-stderr.log" 2>&1 &
    wait_for 60 "mariadb to answer" mysql_ok
    log "mariadb is up"
fi
mysql --protocol=socket <<EOF
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'localhost';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF

# ---------------------------------------------------------------- slurmdbd
dbd_ok() { sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1; }
start_daemon slurmdbd "$ETC/slurmdbd.conf"
wait_for 60 "slurmdbd to answer (sacctmgr list cluster)" dbd_ok
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    log "registering cluster $CLUSTER in accounting"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi
log "slurmdbd is up"

# ---------------------------------------------------------------- slurmctld
ctld_ok() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
start_daemon slurmctld "$ETC/slurm.conf" "$ETC/gres.conf"
wait_for 30 "slurmctld (scontrol ping)" ctld_ok
log "slurmctld is up"

# ---------------------------------------------------------------- slurmd
start_daemon slurmd "$ETC/slurm.conf" "$ETC/gres.conf"

node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1; }
node_ready() {
    local s
    s=$(node_state)
    case $s in
        idle | mixed | allocated) return 0 ;;
        *drain* | down | fail*)
            # drained/down but responding: bring it back
            scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
            return 1
            ;;
        *) return 1 ;;
    esac
}
for ((i = 0; i < 120; i++)); do
    node_ready && break
    sleep 0.5
done
node_ready || die "timed out after 60s waiting for node $NODE to become idle (state: $(node_state))"
log "node $NODE is $(node_state)"

# ---------------------------------------------------------------- smoke test
# (polling sacct ourselves: sbatch --wait polls slowly and adds ~8 s)
log "smoke test: sbatch --wrap 'srun true', waiting for sacct to report COMPLETED"
jobid=$(cd /tmp && sbatch --parsable -J dev-cluster-smoke -p "$PARTITION" -n 1 -t 2 \
    --mem=100M -o /dev/null --wrap 'srun true') || die "sbatch failed"
jobid=${jobid%%;*}
sacct_state() { sacct -n -X -P -j "$jobid" -o State 2>/dev/null | head -n 1; }
state=
for ((i = 0; i < 240; i++)); do
    state=$(sacct_state || true)
    case $state in
        COMPLETED) break ;;
        FAILED | CANCELLED* | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE)
            die "smoke-test job $jobid ended in state $state" ;;
    esac
    sleep 0.5
done
[[ $state == COMPLETED ]] ||
    die "timed out after 120s waiting for smoke-test job $jobid (sacct: '$state'; squeue: '$(squeue -h -j "$jobid" -o '%T %R' 2>/dev/null || true)')"
log "job $jobid COMPLETED (sacct agrees)"
sinfo
log "SLURM dev cluster '$CLUSTER' is ready (partition '$PARTITION', node '$NODE', ${CPUS} CPUs, ${MEM_MB} MB, ${NGPUS} GPUs)"
