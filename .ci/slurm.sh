#!/usr/bin/env bash
# A real single-node Slurm (22.05, Debian 12) on this machine, for the Slurm tests and for trying
# `snakemake --workflow-profile profiles/slurm` by hand. Run as root. Idempotent subcommands:
#
#   .ci/slurm.sh install   apt-get install slurm-wlm munge slurmdbd mariadb-server (skipped when present)
#   .ci/slurm.sh start     write the config, start munged, mariadbd, slurmdbd, slurmctld, slurmd; wait
#                          until the node is up. One node (this machine's CPUs and memory, two fake
#                          GPUs), partitions debug (default) and batch, account pipeline for root
#   .ci/slurm.sh stop      stop them again, in reverse order, by PID file (a zombie counts as stopped)
#   .ci/slurm.sh status    which daemons run; sinfo
#   .ci/slurm.sh env       prints `export SLURM_CONF=...` (optional: /etc/slurm/slurm.conf links to it)
#
# Everything lives under $PIPELINE_SLURM_DIR (default /tmp/pipeline-slurm): config in etc/, PID files
# in run/, logs in log/, spool and the MariaDB data directory. Outside it: /etc/slurm/slurm.conf becomes
# a symlink to etc/slurm.conf (job steps' srun reads that default path; an existing file that is not
# ours stops `start`), and munged uses the packaged defaults (/etc/munge/munge.key, /run/munge).
# Accounting is on (slurmdbd + MariaDB) so that `sacct` (the executor plugin's default status command)
# keeps finished jobs and their requested TRES (gres/gpu included). Facts: ../shared/docs/slurm-local.md (beside the repository).
set -euo pipefail

STATE=${PIPELINE_SLURM_DIR:-/tmp/pipeline-slurm}
ETC=$STATE/etc
RUN=$STATE/run
LOG=$STATE/log
SPOOL=$STATE/spool
DBDATA=$STATE/mysql
DBSOCK=$RUN/mysqld.sock
DBPORT=${PIPELINE_SLURM_DB_PORT:-33061}
DBPASS=pipeline-slurm
CLUSTER=pipeline
PARTITION=debug
PARTITION2=batch
ACCOUNT=pipeline
export SLURM_CONF=$ETC/slurm.conf
SYSTEM_CONF=/etc/slurm/slurm.conf
export PATH=$PATH:/usr/sbin:/sbin

say() { echo "[slurm.sh] $*" >&2; }
die() { say "error: $*"; exit 1; }

# --- processes --------------------------------------------------------------------------------------
# pid_alive PID: the process exists and is not a zombie (stopped daemons can linger as zombies here)
pid_alive() {
    local state
    [[ -n $1 ]] || return 1
    state=$(ps -o stat= -p "$1" 2>/dev/null | tr -d ' ') || return 1
    [[ -n $state && $state != Z* ]]
}

# read_pid PIDFILE: the PID in it, or nothing (a daemon may remove its file at any moment)
read_pid() { cat "$1" 2>/dev/null | tr -dc '0-9' || true; }

# alive PIDFILE: the process named in PIDFILE is alive
alive() { pid_alive "$(read_pid "$1")"; }

# wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND every 0.2 s until it succeeds
wait_for() {
    local seconds=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
    say "$what: ok"
}

# stop_pidfile NAME PIDFILE: TERM, then KILL after 15 s
stop_pidfile() {
    local name=$1 pidfile=$2 pid i
    pid=$(read_pid "$pidfile")
    if ! pid_alive "$pid"; then
        rm -f "$pidfile"
        return 0
    fi
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 75; i++)); do
        pid_alive "$pid" || break
        sleep 0.2
    done
    if pid_alive "$pid"; then
        say "$name did not stop after 15 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$pidfile"
}

# --- install ----------------------------------------------------------------------------------------
PROGRAMS=(munged slurmctld slurmd slurmdbd sbatch sacct sacctmgr mariadbd mariadb-install-db)
installed() {
    local p
    for p in "${PROGRAMS[@]}"; do
        command -v "$p" >/dev/null 2>&1 || return 1
    done
}

cmd_install() {
    if installed; then
        say "packages already installed"
        return 0
    fi
    [[ $(id -u) == 0 ]] || die "install needs root"
    command -v apt-get >/dev/null || die "apt-get not found: install slurm-wlm munge slurmdbd mariadb-server yourself"
    say "apt-get install slurm-wlm munge slurmdbd mariadb-server (about 40 s)"
    export DEBIAN_FRONTEND=noninteractive
    mkdir -p "$LOG"
    # the packages' service starts are refused without an init system: start does it instead
    { apt-get update -qq && apt-get install -y -q -o DPkg::Lock::Timeout=600 slurm-wlm munge slurmdbd mariadb-server; } \
        >"$LOG/apt.log" 2>&1 || { tail -n 30 "$LOG/apt.log" >&2; die "apt-get install failed (log: $LOG/apt.log)"; }
    installed || die "packages installed but programs missing: ${PROGRAMS[*]}"
    say "installed"
}

# --- configuration ----------------------------------------------------------------------------------
CONFIG_CHANGED=0
write_config() {
    local host node
    host=$(hostname -s)
    # "NodeName=host CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=.. ThreadsPerCore=.. RealMemory=.."
    node=$(slurmd -C | head -n 1)
    [[ $node == NodeName=* ]] || die "slurmd -C gave no node line: $node"
    mkdir -p "$ETC" "$RUN" "$LOG" "$SPOOL/slurmctld" "$SPOOL/slurmd"
    cat >"$ETC/slurm.conf.new" <<EOF
# written by .ci/slurm.sh: a single-node test cluster with two fake GPUs
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
StateSaveLocation=$SPOOL/slurmctld
SlurmdSpoolDir=$SPOOL/slurmd
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
# the executor plugin's squeue status mode needs MinJobAge >= 3 x its initial status delay
MinJobAge=300
KillWait=5
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
$node NodeAddr=127.0.0.1 Gres=gpu:fake:2 State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
# not the default: a job found here was sent here (SBATCH_PARTITION in the tests)
PartitionName=$PARTITION2 Nodes=ALL Default=NO MaxTime=INFINITE State=UP
EOF
    cat >"$ETC/gres.conf.new" <<EOF
# fake GPUs: File= must name character devices, else the node goes INVAL
AutoDetect=off
NodeName=$host Name=gpu Type=fake File=/dev/null,/dev/zero
EOF
    cat >"$ETC/slurmdbd.conf.new" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DBPORT
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$ETC/slurmdbd.conf.new"
    local f
    for f in slurm.conf gres.conf slurmdbd.conf; do
        if cmp -s "$ETC/$f.new" "$ETC/$f"; then
            rm -f "$ETC/$f.new"
        else
            [[ ! -e $ETC/$f ]] || CONFIG_CHANGED=1
            mv "$ETC/$f.new" "$ETC/$f"
        fi
    done
    # Clients find the config through SLURM_CONF, but not every one inherits it: the executor plugin
    # strips SLURM_* from the environment of the job step, whose srun then reads the default path.
    # So /etc/slurm/slurm.conf links here, unless it is someone else's file.
    # (ours: missing, dangling, or a file/link whose first line is our header)
    if [[ -e $SYSTEM_CONF ]] && ! head -n 1 "$SYSTEM_CONF" | grep -q '^# written by \.ci/slurm\.sh'; then
        die "$SYSTEM_CONF exists and is not ours: this machine has its own Slurm; not touching it"
    fi
    if [[ $(readlink "$SYSTEM_CONF" 2>/dev/null) != "$ETC/slurm.conf" ]]; then
        mkdir -p "$(dirname "$SYSTEM_CONF")"
        ln -sfn "$ETC/slurm.conf" "$SYSTEM_CONF"
    fi
}

# --- daemons ----------------------------------------------------------------------------------------
start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        say "munged: already running"
        return 0
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    [[ -s /etc/munge/munge.key ]] || { mungekey --create --keyfile=/etc/munge/munge.key && chown munge:munge /etc/munge/munge.key; }
    runuser -u munge -- munged --force
    mkdir -p "$RUN" && touch "$RUN/munged.ours"  # stop ends munged only when start began it
    wait_for 20 munged sh -c 'munge -n | unmunge' || die "munged does not answer (see /var/log/munge/munged.log)"
}

db() { mariadb --socket="$DBSOCK" -uroot "$@"; }

start_mariadb() {
    if ! alive "$RUN/mariadbd.pid"; then
        if [[ ! -d $DBDATA/mysql ]]; then
            say "initialising MariaDB in $DBDATA"
            rm -rf "$DBDATA"
            install -d -o mysql -g mysql "$DBDATA"
            mariadb-install-db --user=mysql --datadir="$DBDATA" --auth-root-authentication-method=socket \
                --skip-test-db >"$LOG/mariadb-install.log" 2>&1 || { tail "$LOG/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
        fi
        chmod 0777 "$RUN"
        # nohup: mariadbd does not daemonize itself
        nohup mariadbd --user=mysql --datadir="$DBDATA" --socket="$DBSOCK" --pid-file="$RUN/mariadbd.pid" \
            --port="$DBPORT" --bind-address=127.0.0.1 --skip-name-resolve --log-error="$LOG/mariadbd.log" \
            --innodb-buffer-pool-size=64M --performance-schema=OFF </dev/null >/dev/null 2>&1 &
    fi
    wait_for 60 mariadbd mariadb-admin --socket="$DBSOCK" -uroot ping || die "mariadbd does not answer (see $LOG/mariadbd.log)"
    wait_for 10 "mariadbd pid file" test -s "$RUN/mariadbd.pid" || die "mariadbd wrote no pid file"
    db -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
           CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DBPASS';
           CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
           GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
           GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

start_slurmdbd() {
    alive "$RUN/slurmdbd.pid" || slurmdbd
    wait_for 60 slurmdbd sacctmgr -n show cluster || die "slurmdbd does not answer (see $LOG/slurmdbd.log)"
    sacctmgr -n show cluster format=cluster%40 | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
    sacctmgr -n show account format=account%40 | grep -qw "$ACCOUNT" ||
        sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description=tests organization=pipeline >/dev/null
    # root (who submits here) may use the test account; its default account stays "root", so a job
    # that shows account $ACCOUNT got it from the request (SBATCH_ACCOUNT in the tests)
    [[ -n $(sacctmgr -n show assoc where user=root account="$ACCOUNT" format=account%40) ]] ||
        sacctmgr -i add user root account="$ACCOUNT" cluster="$CLUSTER" >/dev/null
}

# node_up: the node answers and takes jobs (idle, or busy with jobs of someone already using it)
node_up() {
    local state
    state=$(sinfo -h -N -o %t 2>/dev/null | sort -u)
    [[ $state == idle || $state == mix || $state == alloc ]]
}

cmd_start() {
    [[ $(id -u) == 0 ]] || die "start needs root"
    installed || die "Slurm packages missing: run '$0 install' first"
    write_config
    start_munge
    start_mariadb
    start_slurmdbd
    local running=0
    alive "$RUN/slurmctld.pid" && running=1 || slurmctld
    wait_for 30 slurmctld scontrol ping || die "slurmctld does not answer (see $LOG/slurmctld.log)"
    alive "$RUN/slurmd.pid" || slurmd
    if ((running && CONFIG_CHANGED)); then
        say "configuration changed: scontrol reconfigure (node changes need '$0 restart')"
        scontrol reconfigure
    fi
    if ! wait_for 60 "node up" node_up; then
        sinfo -N -l >&2 || true
        tail -n 20 "$LOG/slurmctld.log" "$LOG/slurmd.log" >&2 || true
        die "the node did not come up"
    fi
    say "ready: SLURM_CONF=$SLURM_CONF, partitions $PARTITION (default) and $PARTITION2, account $ACCOUNT"
}

cmd_stop() {
    stop_pidfile slurmd "$RUN/slurmd.pid"
    stop_pidfile slurmctld "$RUN/slurmctld.pid"
    stop_pidfile slurmdbd "$RUN/slurmdbd.pid"
    stop_pidfile mariadbd "$RUN/mariadbd.pid"
    if [[ -e $RUN/munged.ours ]]; then
        stop_pidfile munged /run/munge/munged.pid
        rm -f "$RUN/munged.ours"
    fi
    say "stopped"
}

cmd_status() {
    local name file rc=0
    for name in munged mariadbd slurmdbd slurmctld slurmd; do
        file=$RUN/$name.pid
        [[ $name == munged ]] && file=/run/munge/munged.pid
        if alive "$file"; then echo "$name: running (pid $(cat "$file"))"; else echo "$name: stopped"; rc=1; fi
    done
    sinfo 2>/dev/null || true
    return $rc
}

case ${1:-} in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
restart) cmd_stop && cmd_start ;;
status) cmd_status ;;
env) echo "export SLURM_CONF=$SLURM_CONF" ;;
*) echo "usage: $0 install|start|stop|restart|status|env" >&2; exit 2 ;;
esac
