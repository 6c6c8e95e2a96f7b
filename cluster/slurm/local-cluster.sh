#!/usr/bin/env bash
# A real one-node SLURM cluster on localhost, for trying the batch scripts and for the tests.
#
#   cluster/slurm/local-cluster.sh start    # apt-get install (if needed) munge + slurmctld + slurmd, start them
#   eval "$(cluster/slurm/local-cluster.sh env)"   # SLURM_CONF for sbatch / squeue / scontrol
#   sbatch cluster/slurm/train.sbatch configs/tiny-cpu.yaml runs/tiny
#   cluster/slurm/local-cluster.sh stop     # stop the three daemons (by their pid files)
#   cluster/slurm/local-cluster.sh status
#
# Needs root (apt-get, daemons running as root). Everything it writes lives under $BIGTRAIN_SLURM_DIR
# (default /tmp/bigtrain-slurm): its own munge key and socket, slurm.conf, state, spool, logs. It does not
# touch /etc/slurm or /etc/munge, so it coexists with nothing else but also breaks nothing else.
#
# The configuration (checked with Debian 12's slurm-wlm 22.05): SlurmctldHost=localhost(127.0.0.1),
# NodeName=localhost NodeAddr=127.0.0.1 CPUs=<cores>, proctrack/linuxproc and task/none (no cgroups
# needed, so it runs in containers), MpiDefault=none, JobRequeue=1 (batch jobs may be requeued).
set -euo pipefail

DIR=${BIGTRAIN_SLURM_DIR:-/tmp/bigtrain-slurm}
CPUS=${BIGTRAIN_SLURM_CPUS:-$(nproc)}
CONF=$DIR/slurm.conf
SOCKET=$DIR/munge/munge.socket

log() { echo "local-cluster: $*" >&2; }
die() { log "$*"; exit 1; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    [[ $(id -u) -eq 0 ]] || die "SLURM is not installed and installing it needs root (apt-get install slurmctld slurmd slurm-client munge)"
    command -v apt-get >/dev/null || die "SLURM is not installed and there is no apt-get to install it with"
    log "installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q slurmctld slurmd slurm-client munge >"$DIR/apt.log" 2>&1; then
        apt-get update -q >>"$DIR/apt.log" 2>&1 || true
        apt-get install -y -q slurmctld slurmd slurm-client munge >>"$DIR/apt.log" 2>&1 \
            || die "apt-get install failed; see $DIR/apt.log"
    fi
}

write_config() {
    cat >"$CONF" <<EOF
# Written by cluster/slurm/local-cluster.sh: one node (this machine) on 127.0.0.1.
ClusterName=bigtrain-local
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${BIGTRAIN_SLURMCTLD_PORT:-6817}
SlurmdPort=${BIGTRAIN_SLURMD_PORT:-6818}
AuthType=auth/munge
AuthInfo=socket=$SOCKET
CredType=cred/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    mkdir -p "$DIR"/{munge,ctld,spool,log}
    install_packages
    if [[ ! -f $DIR/munge/munge.key ]]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    fi
    chmod 700 "$DIR/munge"
    chmod 400 "$DIR/munge/munge.key"
    write_config
    if ! running "$DIR/munged.pid"; then
        munged --force --key-file="$DIR/munge/munge.key" --socket="$SOCKET" --pid-file="$DIR/munged.pid" \
            --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munge.seed"
    fi
    export SLURM_CONF=$CONF
    if ! running "$DIR/slurmctld.pid"; then
        slurmctld -f "$CONF"
    fi
    if ! running "$DIR/slurmd.pid"; then
        slurmd -f "$CONF" -N localhost
    fi
    for _ in $(seq 1 60); do
        if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            log "up: $(sinfo -h -o '%P %D %T %c' | head -1) (SLURM_CONF=$CONF)"
            return 0
        fi
        sleep 0.5
    done
    log "slurmctld log:"; tail -20 "$DIR/log/slurmctld.log" >&2 || true
    log "slurmd log:"; tail -20 "$DIR/log/slurmd.log" >&2 || true
    die "the node did not come up within 30 s"
}

stop_pidfile() {
    local f=$1 pid
    [[ -f $f ]] || return 0
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

stop() {
    if [[ -f $CONF ]] && running "$DIR/slurmctld.pid"; then
        # Cancel what still runs so no training job outlives the cluster.
        SLURM_CONF=$CONF scancel --full --signal=KILL -u root 2>/dev/null || true
        SLURM_CONF=$CONF scancel -u root 2>/dev/null || true
    fi
    stop_pidfile "$DIR/slurmd.pid"
    stop_pidfile "$DIR/slurmctld.pid"
    stop_pidfile "$DIR/munged.pid"
    log "stopped"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    status)
        for d in munged slurmctld slurmd; do
            if running "$DIR/$d.pid"; then echo "$d: running (pid $(cat "$DIR/$d.pid"))"; else echo "$d: stopped"; fi
        done
        [[ -f $CONF ]] && SLURM_CONF=$CONF sinfo 2>/dev/null || true ;;
    *) echo "usage: $0 start|stop|restart|status|env" >&2; exit 2 ;;
esac
