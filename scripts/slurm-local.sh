#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for trying and testing camri's submitit executor
# (docs/scale-out.md, "Try it on one machine"). Needs root (slurmd runs jobs as their users) and Debian or
# Ubuntu's packages, which it installs with apt-get when they are missing. No systemd: the daemons
# (munged, MariaDB, slurmdbd, slurmctld, slurmd) run in the background, and `down` stops exactly the ones
# `up` started, by the PIDs it recorded.
#
#   scripts/slurm-local.sh up       install if needed, configure, start, wait until the node is idle
#                                   and the cluster is registered with accounting (harmless when up)
#   scripts/slurm-local.sh down     cancel this cluster's jobs, stop the daemons this script started
#   scripts/slurm-local.sh status   the daemons, their PIDs, sinfo; exit 0 when the cluster is up
#   scripts/slurm-local.sh env      the line to paste into a shell to use the cluster: export SLURM_CONF=...
#   scripts/slurm-local.sh missing  the packages still to install (none: nothing printed)
#   scripts/slurm-local.sh purge    down, then delete the cluster's folder (config, accounting database)
#
# Settings (environment):
#   CAMRI_SLURM_DIR        the folder this script owns (config, logs, state, database);
#                          default /var/lib/camri-slurm
#   CAMRI_SLURM_PORT       slurmctld's port; slurmd and slurmdbd take the next two (default 6817)
#   CAMRI_SLURM_TIMEOUT_S  how long `up` waits for the cluster (default 120)
#
# Everything lives in CAMRI_SLURM_DIR, including munged's socket and key and MariaDB's socket: the script
# touches no system configuration and runs beside a system munged or MariaDB. Client commands find the
# cluster through SLURM_CONF=<dir>/etc/slurm.conf (`eval "$(scripts/slurm-local.sh env)"`).
set -euo pipefail

DIR=${CAMRI_SLURM_DIR:-/var/lib/camri-slurm}
PORT=${CAMRI_SLURM_PORT:-6817}
TIMEOUT_S=${CAMRI_SLURM_TIMEOUT_S:-120}
CLUSTER=camri
ACCOUNT=camri
PACKAGES=(munge mariadb-server slurmdbd slurmctld slurmd slurm-client)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)  # start order; stopped in reverse
PIDS=$DIR/run/daemons  # "name pid start-time" per daemon this script started
NODE=$(hostname -s)
export SLURM_CONF=$DIR/etc/slurm.conf

say() { echo "slurm-local: $*" >&2; }
die() { say "error: $*"; exit 1; }

# ---- packages ------------------------------------------------------------------------------------------

missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}

install_packages() {
    local missing
    missing=$(missing_packages)
    [ -z "$missing" ] && return 0
    command -v apt-get >/dev/null || die "these packages are missing and there is no apt-get: $missing"
    say "installing $(echo $missing) (apt-get; the packages' scripts start no daemon without systemd)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >&2
}

# ---- processes -----------------------------------------------------------------------------------------

start_time() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null || true; }

# The PID recorded for daemon $1, when that process is still the one started (same PID and start time,
# so a reused PID is never taken for it); empty otherwise.
live_pid() {
    local name=$1 pid start
    [ -f "$PIDS" ] || return 0
    read -r pid start < <(awk -v n="$name" '$1 == n {print $2, $3}' "$PIDS") || true
    [ -n "${pid:-}" ] && [ -n "${start:-}" ] && [ "$(start_time "$pid")" = "$start" ] && echo "$pid"
    return 0
}

record_pid() {  # name pid
    local start
    start=$(start_time "$2")
    [ -n "$start" ] || return 1
    mkdir -p "$DIR/run"
    { [ -f "$PIDS" ] && awk -v n="$1" '$1 != n' "$PIDS"; echo "$1 $2 $start"; } > "$PIDS.tmp"
    mv "$PIDS.tmp" "$PIDS"
}

forget_pid() {
    [ -f "$PIDS" ] || return 0
    awk -v n="$1" '$1 != n' "$PIDS" > "$PIDS.tmp"
    mv "$PIDS.tmp" "$PIDS"
}

log_of() {
    case $1 in
        munged) echo "$DIR/munge/munged.log" ;;
        mariadbd) echo "$DIR/mysql/mariadbd.log" ;;
        *) echo "$DIR/log/$1.log" ;;
    esac
}

show_logs() {  # the last lines of each daemon's log: the reason a start failed is usually there
    local name log
    for name in "$@"; do
        log=$(log_of "$name")
        [ -s "$log" ] || continue
        echo "---- $log (last lines) ----" >&2
        tail -n 15 "$log" >&2
    done
}

# Run "$@" detached from this shell's session and terminal (a Ctrl-C of `make test` must not reach the
# daemons: `down` stops them), output to log $1 of daemon name $2; records its PID.
spawn() {
    local name=$1 log=$2 pid
    shift 2
    setsid "$@" </dev/null >>"$log" 2>&1 &
    pid=$!
    sleep 0.2
    kill -0 "$pid" 2>/dev/null || { show_logs "$name"; die "$name exited at once"; }
    record_pid "$name" "$pid"
}

wait_for() {  # seconds description command...: poll the command until it succeeds
    local seconds=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            say "timed out after ${seconds} s waiting for $what"
            return 1
        fi
        sleep 0.5
    done
}

# ---- configuration -------------------------------------------------------------------------------------

write_config() {
    mkdir -p "$DIR"/{etc,log,run,state,spool}
    chmod 755 "$DIR"
    # munged's own folder: its socket's folder must be searchable by all and writable only by munge;
    # the key is readable only by munge.
    install -d -o munge -g munge -m 755 "$DIR/munge"
    if [ ! -s "$DIR/munge/munge.key" ]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    fi
    chown munge:munge "$DIR/munge/munge.key"
    chmod 400 "$DIR/munge/munge.key"
    # MariaDB dies silently unless its socket, pid and log files are in a folder owned by mysql.
    install -d -o mysql -g mysql -m 750 "$DIR/mysql"

    # The node as slurmd sees it (CPUs, sockets, cores, threads, memory): a node configured larger than
    # its hardware would be drained.
    local hardware
    hardware=$(slurmd -C | head -n 1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ UpTime=.*//')
    local socket="$DIR/munge/munged.socket"
    # AuthInfo: munged's socket, and cred_expire=10 s (the default 120 s delays every requeued job by
    # about two minutes: a job cannot start again before its old credential expires).
    cat > "$SLURM_CONF.tmp" <<EOF
# Written by scripts/slurm-local.sh: a single-node cluster for camri's tests. Regenerated by every \`up\`.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# No cgroups (containers rarely delegate them): track processes by parent PID, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# Accounting: sacctmgr refuses to work without it, and submitit reads job states from sacct.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((PORT + 2))
# Messages to slurmdbd take their munged socket from here, not from AuthInfo.
AccountingStoragePass=$socket
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# A requeued job becomes eligible ~11 s later (cred_expire); without a short interval nothing schedules it
# until the next periodic pass (default 60 s; backfill 30 s).
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# Fast turnaround for tests: a cancelled or requeued job's processes get SIGKILL 2 s after SIGTERM
# (submitit ignores SIGTERM; real clusters wait 30 s or more).
KillWait=2
MinJobAge=30
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$NODE NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$SLURM_CONF.tmp" "$SLURM_CONF"

    local dbd="$DIR/etc/slurmdbd.conf"
    ( umask 077; cat > "$dbd.tmp" <<EOF
# Written by scripts/slurm-local.sh.
AuthType=auth/munge
AuthInfo=socket=$socket
DbdHost=localhost
DbdPort=$((PORT + 2))
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
    )
    mv "$dbd.tmp" "$dbd"  # mode 600, owned by SlurmUser: slurmdbd refuses anything else
}

# ---- daemons -------------------------------------------------------------------------------------------

start_munged() {
    # munged needs its own user; it daemonizes and writes its PID file.
    rm -f "$DIR/munge/munged.pid"
    runuser -u munge -- /usr/sbin/munged --socket="$DIR/munge/munged.socket" \
        --key-file="$DIR/munge/munge.key" --pid-file="$DIR/munge/munged.pid" \
        --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" \
        || { show_logs munged; die "munged did not start"; }
    wait_for 10 "munged's PID file" test -s "$DIR/munge/munged.pid" || { show_logs munged; die "munged did not start"; }
    record_pid munged "$(cat "$DIR/munge/munged.pid")"
    wait_for 10 "munged" munge_works || { show_logs munged; die "munged does not answer on its socket"; }
}

munge_works() { munge -n --socket="$DIR/munge/munged.socket" | unmunge --socket="$DIR/munge/munged.socket"; }

MARIADB=(--no-defaults --datadir="$DIR/mysql/data" --socket="$DIR/mysql/mariadbd.sock"
         --pid-file="$DIR/mysql/mariadbd.pid" --log-error="$DIR/mysql/mariadbd.log" --skip-networking
         --user=mysql)

mariadb_works() { mariadb-admin --no-defaults --socket="$DIR/mysql/mariadbd.sock" ping; }

start_mariadbd() {
    if [ ! -d "$DIR/mysql/data/mysql" ]; then
        say "creating the accounting database in $DIR/mysql/data"
        mariadb-install-db --no-defaults --datadir="$DIR/mysql/data" --user=mysql \
            --auth-root-authentication-method=socket >"$DIR/log/mariadb-install-db.log" 2>&1 \
            || { tail -n 20 "$DIR/log/mariadb-install-db.log" >&2; die "mariadb-install-db failed"; }
    fi
    # Listens on its socket only (--skip-networking): no clash with a MariaDB of the system's.
    spawn mariadbd "$DIR/log/mariadbd.out" /usr/sbin/mariadbd "${MARIADB[@]}"
    wait_for 60 "MariaDB" mariadb_works || { show_logs mariadbd; die "MariaDB does not answer"; }
}

start_slurmdbd() {
    # slurmdbd has no socket option; the MySQL client library reads MYSQL_UNIX_PORT. The root of the
    # database logs in through the unix_socket plugin (slurmdbd runs as root): no password anywhere.
    MYSQL_UNIX_PORT="$DIR/mysql/mariadbd.sock" spawn slurmdbd "$DIR/log/slurmdbd.out" /usr/sbin/slurmdbd -D
    wait_for 60 "slurmdbd" sacctmgr -n show cluster || { show_logs slurmdbd mariadbd; die "slurmdbd does not answer"; }
}

register_accounting() {
    if ! sacctmgr -n -P show cluster "$CLUSTER" format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
    if ! sacctmgr -n -P show account "$ACCOUNT" format=account | grep -qx "$ACCOUNT"; then
        sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description="camri tests" organization=camri >/dev/null
    fi
    local user
    for user in root ${SUDO_USER:-}; do
        if ! sacctmgr -n -P show association where account="$ACCOUNT" user="$user" format=user | grep -qx "$user"; then
            sacctmgr -i add user "$user" account="$ACCOUNT" cluster="$CLUSTER" >/dev/null
        fi
    done
}

start_slurmctld() { spawn slurmctld "$DIR/log/slurmctld.out" /usr/sbin/slurmctld -D -i; }
start_slurmd() { spawn slurmd "$DIR/log/slurmd.out" /usr/sbin/slurmd -D -N "$NODE"; }

node_idle() { [ "$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null)" = idle ]; }
# slurmctld registered with slurmdbd: the cluster's record has its control host.
cluster_registered() { [ -n "$(sacctmgr -n -P show cluster "$CLUSTER" format=controlhost 2>/dev/null)" ]; }
cluster_up() {
    local name
    for name in "${DAEMONS[@]}"; do [ -n "$(live_pid "$name")" ] || return 1; done
    node_idle_or_busy && cluster_registered
}
node_idle_or_busy() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | grep -Eqx 'idle|mixed|allocated|completing'; }

# ---- commands ------------------------------------------------------------------------------------------

up() {
    [ "$(id -u)" = 0 ] || die "needs root (slurmd starts jobs as their users): sudo $0 up"
    if cluster_up; then
        say "already up ($SLURM_CONF)"
        return 0
    fi
    local began=$SECONDS
    install_packages
    write_config
    local name
    for name in "${DAEMONS[@]}"; do
        if [ -z "$(live_pid "$name")" ]; then
            "start_$name"
        fi
        if [ "$name" = slurmdbd ]; then register_accounting; fi
    done
    # ReturnToService=2: a node left down by an earlier session comes back when its slurmd registers.
    if ! wait_for "$TIMEOUT_S" "the node to be idle (sinfo)" node_idle; then
        sinfo -N >&2 || true
        show_logs slurmctld slurmd
        die "the node did not become idle; see the logs above"
    fi
    if ! wait_for "$TIMEOUT_S" "the cluster to register with accounting (sacctmgr show cluster)" cluster_registered; then
        show_logs slurmctld slurmdbd
        die "slurmctld did not register the cluster with slurmdbd; see the logs above"
    fi
    say "up in $((SECONDS - began)) s: node $NODE ($(sinfo -h -N -n "$NODE" -o '%c CPUs, %m MB')), cluster $CLUSTER"
    say "use it from a shell with: export SLURM_CONF=$SLURM_CONF"
}

stop_daemon() {
    local name=$1 pid i
    pid=$(live_pid "$name")
    if [ -z "$pid" ]; then
        forget_pid "$name"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
        [ "$(start_time "$pid")" = "" ] && break
        # A zombie (its parent has not reaped it) has stopped too.
        [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] && break
        sleep 0.2
    done
    if [ -n "$(live_pid "$name")" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then
        say "$name (pid $pid) ignored SIGTERM for 20 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    forget_pid "$name"
    say "stopped $name (pid $pid)"
}

down() {
    [ -f "$PIDS" ] || { say "nothing to stop (no daemons recorded in $PIDS)"; return 0; }
    if [ -n "$(live_pid slurmctld)" ]; then
        # Jobs left running would outlive slurmd (proctrack/linuxproc does not kill them with it).
        scancel --full --quiet $(squeue -h -o %A 2>/dev/null) 2>/dev/null || true
        wait_for 15 "this cluster's jobs to end" test -z "$(squeue -h -o %A 2>/dev/null)" || true
    fi
    local i
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        stop_daemon "${DAEMONS[$i]}"
    done
}

status() {
    local name pid ok=0
    for name in "${DAEMONS[@]}"; do
        pid=$(live_pid "$name")
        if [ -n "$pid" ]; then echo "$name: running, pid $pid"; else echo "$name: not running"; ok=1; fi
    done
    if [ "$ok" = 0 ]; then
        sinfo -N || ok=1
        cluster_registered || { echo "cluster $CLUSTER: not registered with accounting"; ok=1; }
    fi
    echo "config: $SLURM_CONF"
    return "$ok"
}

case ${1:-} in
    up) up ;;
    down) down ;;
    status) status ;;
    env) echo "export SLURM_CONF=$SLURM_CONF" ;;
    missing) missing_packages ;;
    purge) down; rm -rf "$DIR"; say "removed $DIR" ;;
    *) echo "usage: $0 up|down|status|env|missing|purge   (settings: see the top of this script)" >&2; exit 2 ;;
esac
