#!/usr/bin/env bash
# A real SLURM cluster on this machine, for trying the batch scripts and for the tests.
#
# One node (the default): munge + slurmctld + slurmd on localhost.
#
#   cluster/slurm/local-cluster.sh start    # apt-get install (if needed) munge + slurmctld + slurmd, start them
#   eval "$(cluster/slurm/local-cluster.sh env)"   # SLURM_CONF for sbatch / squeue / scontrol
#   sbatch cluster/slurm/train.sbatch configs/tiny-cpu.yaml runs/tiny
#   cluster/slurm/local-cluster.sh stop     # cancel jobs, stop the daemons (by their pid files)
#   cluster/slurm/local-cluster.sh status
#
# Several nodes: set BIGTRAIN_SLURM_NODES to NAME=ADDR pairs, the first being the controller's host (which is
# also a compute node, as on small clusters). Every node's ADDR must be an address of the machine (network
# namespace) its daemons run in; tests/netns.py makes such "hosts" as network namespaces.
#
#   export BIGTRAIN_SLURM_NODES="node1=10.213.7.1,node2=10.213.7.2"
#   local-cluster.sh setup                  # (root namespace) install, munge key, slurm.conf, gres.conf, devices
#                                           #   (`install` alone: only apt-get the packages if missing)
#   local-cluster.sh start-munge            # (anywhere) one munged; its unix socket lies in $DIR, which every
#                                           #   host sees, so it serves all network namespaces
#   <on node1> local-cluster.sh start-ctld
#   <on nodeN> local-cluster.sh start-slurmd nodeN      # once per node
#   <on node1> local-cluster.sh wait [SECONDS]          # until every node is idle (default 60 s)
#   <on node1> local-cluster.sh stop        # cancel jobs (needs the controller: run it on node1), stop daemons
#
# or all of it with `local-cluster.sh start`, given a command prefix per node that runs a command on it:
#   BIGTRAIN_SLURM_EXEC_node1='ip netns exec ns1'  (a shell-quoted prefix, evaluated by this script; when one is
#   unset the daemon starts right here). `stop` and `status` use the first node's prefix for scancel / sinfo.
#   E.g. from Python with tests/netns.py: env[f"BIGTRAIN_SLURM_EXEC_{h.name}"] = shlex.join(h.cmd()).
#
# Knobs (environment):
#   BIGTRAIN_SLURM_DIR    everything this writes (default /tmp/bigtrain-slurm; keep it short: munge's socket)
#   BIGTRAIN_SLURM_NODES  NAME=ADDR[,NAME=ADDR...]; unset: one node "localhost" on 127.0.0.1
#   BIGTRAIN_SLURM_CPUS   CPUs per node (default: this machine's cores; another number adds
#                         SlurmdParameters=config_overrides, without which slurmctld marks the node INVAL)
#   BIGTRAIN_SLURM_GPUS   dummy GPUs per node (default 2 with several nodes, 0 with one): gres.conf names
#                         character devices $DIR/dev/NODE/nvidia0.. (mknod c 195 N), so --gpus-per-node /
#                         --gpus-per-task / --gres=gpu:N schedule and set CUDA_VISIBLE_DEVICES for real
#   BIGTRAIN_SLURM_TASK_PLUGIN  task/affinity with several nodes (real CPU masks for --cpus-per-task; needs
#                         no cgroups), task/none with one (unchanged from earlier versions)
#   BIGTRAIN_SLURMCTLD_PORT / BIGTRAIN_SLURMD_PORT (default 6817 / 6818)
#
# Needs root (apt-get, daemons running as root). It does not touch /etc/slurm or /etc/munge.
#
# The configuration (checked with Debian 12's slurm-wlm 22.05): SlurmctldHost=HOST(ADDR), one NodeName line
# per node with its NodeAddr and CPUs, proctrack/linuxproc (no cgroups needed, so it runs in containers),
# MpiDefault=none, JobRequeue=1 (batch jobs may be requeued), select/cons_tres with CR_CPU, no global
# KillOnBadExit (the batch scripts pass --kill-on-bad-exit). With several nodes each slurmd has its own
# spool, pid file and log ($DIR/spool/%n, $DIR/run/slurmd-%n.pid, $DIR/log/slurmd-%n.log); with one node the
# paths are those of earlier versions ($DIR/spool, $DIR/slurmd.pid, $DIR/log/slurmd.log).
set -euo pipefail

DIR=${BIGTRAIN_SLURM_DIR:-/tmp/bigtrain-slurm}
# (GNU nproc answers OMP_NUM_THREADS when set: not this machine's cores.)
REAL_CPUS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
CPUS=${BIGTRAIN_SLURM_CPUS:-$REAL_CPUS}
CONF=$DIR/slurm.conf
SOCKET=$DIR/munge/munge.socket
SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")

log() { echo "local-cluster: $*" >&2; }
die() { log "$*"; exit 1; }

# NAMES / ADDRS from BIGTRAIN_SLURM_NODES; MULTI=1 when it is set.
NAMES=() ADDRS=()
if [[ -n ${BIGTRAIN_SLURM_NODES:-} ]]; then
    MULTI=1
    IFS=',' read -r -a _pairs <<<"$BIGTRAIN_SLURM_NODES"
    for p in "${_pairs[@]}"; do
        [[ $p =~ ^([A-Za-z][A-Za-z0-9-]*)=([0-9.]+)$ ]] || die "BIGTRAIN_SLURM_NODES: '$p' is not NAME=IPV4"
        NAMES+=("${BASH_REMATCH[1]}") ADDRS+=("${BASH_REMATCH[2]}")
    done
    GPUS=${BIGTRAIN_SLURM_GPUS:-2}
    TASK_PLUGIN=${BIGTRAIN_SLURM_TASK_PLUGIN:-task/affinity}
else
    MULTI=0
    NAMES=(localhost) ADDRS=(127.0.0.1)
    GPUS=${BIGTRAIN_SLURM_GPUS:-0}
    TASK_PLUGIN=${BIGTRAIN_SLURM_TASK_PLUGIN:-task/none}
fi

slurmd_pidfile() { if ((MULTI)); then echo "$DIR/run/slurmd-$1.pid"; else echo "$DIR/slurmd.pid"; fi; }
slurmd_log() { if ((MULTI)); then echo "$DIR/log/slurmd-$1.log"; else echo "$DIR/log/slurmd.log"; fi; }

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
    local i gres="" nodes
    nodes=$(IFS=,; echo "${NAMES[*]}")
    if ((GPUS > 0)); then gres=" Gres=gpu:$GPUS"; fi
    {
        echo "# Written by cluster/slurm/local-cluster.sh: ${#NAMES[@]} node(s), controller on ${NAMES[0]}."
        cat <<EOF
ClusterName=bigtrain-local
SlurmctldHost=${NAMES[0]}(${ADDRS[0]})
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${BIGTRAIN_SLURMCTLD_PORT:-6817}
SlurmdPort=${BIGTRAIN_SLURMD_PORT:-6818}
AuthType=auth/munge
AuthInfo=socket=$SOCKET
CredType=cred/munge
StateSaveLocation=$DIR/ctld
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
EOF
        if ((MULTI)); then
            # %n = the NodeName slurmd runs as (slurmd -N NAME): one spool, pid file and log per node.
            echo "SlurmdSpoolDir=$DIR/spool/%n"
            echo "SlurmdPidFile=$DIR/run/slurmd-%n.pid"
            echo "SlurmdLogFile=$DIR/log/slurmd-%n.log"
        else
            echo "SlurmdSpoolDir=$DIR/spool"
            echo "SlurmdPidFile=$DIR/slurmd.pid"
            echo "SlurmdLogFile=$DIR/log/slurmd.log"
        fi
        cat <<EOF
ProctrackType=proctrack/linuxproc
TaskPlugin=$TASK_PLUGIN
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
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
EOF
        if ((GPUS > 0)); then echo "GresTypes=gpu"; fi
        # More CPUs than this machine has: slurmd would report the real count and slurmctld mark the node
        # INVAL ("Low socket*core*thread count, Low CPUs"); config_overrides makes it take slurm.conf's.
        if ((CPUS != REAL_CPUS)); then echo "SlurmdParameters=config_overrides"; fi
        for i in "${!NAMES[@]}"; do
            if ((MULTI)); then
                # One socket of CPUS cores, as slurmd -C reports for this machine: the masks task/affinity sets
                # are then real CPUs.
                echo "NodeName=${NAMES[$i]} NodeAddr=${ADDRS[$i]} CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1$gres State=UNKNOWN"
            else
                echo "NodeName=${NAMES[$i]} NodeAddr=${ADDRS[$i]} CPUs=$CPUS$gres State=UNKNOWN"
            fi
        done
        echo "PartitionName=debug Nodes=$nodes Default=YES MaxTime=INFINITE State=UP"
    } >"$CONF.new"
    mv "$CONF.new" "$CONF"

    # gres.conf sits next to slurm.conf (slurmd reads it from there). Dummy GPUs: character devices with
    # NVIDIA's major number, one directory per node, which nothing ever opens.
    : >"$DIR/gres.conf.new"
    if ((GPUS > 0)); then
        local n g
        for n in "${NAMES[@]}"; do
            mkdir -p "$DIR/dev/$n"
            for ((g = 0; g < GPUS; g++)); do
                [[ -c $DIR/dev/$n/nvidia$g ]] || { rm -f "$DIR/dev/$n/nvidia$g"; mknod "$DIR/dev/$n/nvidia$g" c 195 "$g"; }
            done
            echo "NodeName=$n Name=gpu File=$DIR/dev/$n/nvidia[0-$((GPUS - 1))]" >>"$DIR/gres.conf.new"
        done
    fi
    mv "$DIR/gres.conf.new" "$DIR/gres.conf"

    # slurmd 22.05 initialises its cgroup plugin even with proctrack/linuxproc and task/affinity|none, and the
    # default CgroupPlugin=autodetect fails where /sys/fs/cgroup is not mounted, as inside `ip netns exec`
    # (it mounts a fresh /sys). Naming the plugin skips that probe; nothing here uses cgroups.
    if ((MULTI)); then
        echo "CgroupPlugin=cgroup/v1" >"$DIR/cgroup.conf"
    else
        rm -f "$DIR/cgroup.conf"
    fi
}

running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Run "$@" on node NAME through $BIGTRAIN_SLURM_EXEC_NAME (a shell-quoted prefix), or here without one.
on_node() {
    local name=$1 var prefix
    shift
    var="BIGTRAIN_SLURM_EXEC_${name//-/_}"
    prefix=${!var:-}
    if [[ -n $prefix ]]; then
        eval "$prefix $(printf '%q ' "$@")"
    else
        "$@"
    fi
}

setup() {
    mkdir -p "$DIR"/{munge,ctld,log,run}
    if ((MULTI)); then
        local n
        for n in "${NAMES[@]}"; do mkdir -p "$DIR/spool/$n"; done
    else
        mkdir -p "$DIR/spool"
    fi
    install_packages
    if [[ ! -f $DIR/munge/munge.key ]]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    fi
    chmod 700 "$DIR/munge"
    chmod 400 "$DIR/munge/munge.key"
    write_config
}

start_munge() {
    if ! running "$DIR/munged.pid"; then
        munged --force --key-file="$DIR/munge/munge.key" --socket="$SOCKET" --pid-file="$DIR/munged.pid" \
            --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munge.seed"
    fi
}

start_ctld() {
    if ! running "$DIR/slurmctld.pid"; then
        SLURM_CONF=$CONF slurmctld -f "$CONF"
    fi
}

start_slurmd() {
    local name=${1:-${NAMES[0]}} known=0 n
    for n in "${NAMES[@]}"; do [[ $n == "$name" ]] && known=1; done
    ((known)) || die "start-slurmd: '$name' is not one of the nodes (${NAMES[*]})"
    if ! running "$(slurmd_pidfile "$name")"; then
        SLURM_CONF=$CONF slurmd -f "$CONF" -N "$name"
    fi
}

show_logs() {
    local n
    log "slurmctld log:"; tail -20 "$DIR/log/slurmctld.log" >&2 || true
    for n in "${NAMES[@]}"; do log "slurmd log ($n):"; tail -20 "$(slurmd_log "$n")" >&2 || true; done
}

# Until sinfo shows every node idle (or mixed/allocated: up and usable).
wait_up() {
    local timeout=${1:-60} want=${#NAMES[@]} t0=$SECONDS up states
    while ((SECONDS - t0 < timeout)); do
        states=$(SLURM_CONF=$CONF sinfo -h -N -o '%N %T %E' 2>/dev/null || true)
        up=$(grep -cE '^[^ ]+ (idle|mixed|allocated) ' <<<"$states" || true)
        if grep -qE '^[^ ]+ (inval|drain|drained|draining)' <<<"$states"; then
            show_logs
            die "a node was refused: $states"
        fi
        if ((up == want)); then
            log "up: $want node(s) $(SLURM_CONF=$CONF sinfo -h -o '%P %D %T %c %G' | head -1) (SLURM_CONF=$CONF)"
            return 0
        fi
        sleep 0.2
    done
    show_logs
    die "the node(s) did not come up within $timeout s"
}

start() {
    setup
    start_munge
    export SLURM_CONF=$CONF
    on_node "${NAMES[0]}" bash "$SCRIPT" start-ctld
    local n
    for n in "${NAMES[@]}"; do on_node "$n" bash "$SCRIPT" start-slurmd "$n"; done
    on_node "${NAMES[0]}" bash "$SCRIPT" wait 60
}

# TERM every daemon named by the pid files at once (each takes 1-2 s to exit; in turn that was ~7 s),
# then KILL what is left after 10 s.
stop_pidfiles() {
    local f pid pids=()
    for f in "$@"; do
        [[ -f $f ]] || continue
        pid=$(cat "$f")
        if kill -0 "$pid" 2>/dev/null; then kill "$pid" 2>/dev/null && pids+=("$pid"); fi
    done
    for _ in $(seq 1 100); do
        local alive=()
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
        pids=("${alive[@]}")
        ((${#pids[@]})) || break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    rm -f "$@"
}

cancel_all() {
    # Cancel what still runs so no training job outlives the cluster.
    SLURM_CONF=$CONF timeout 20 scancel --full --signal=KILL -u root 2>/dev/null || true
    SLURM_CONF=$CONF timeout 20 scancel -u root 2>/dev/null || true
    # ...and wait (up to 30 s) until the slurmds have ended them: a job step whose slurmd is stopped first
    # would keep running.
    local t0=$SECONDS
    while ((SECONDS - t0 < 30)); do
        [[ -z $(SLURM_CONF=$CONF timeout 10 squeue -h -t RUNNING,COMPLETING,SUSPENDED,CONFIGURING -o %i 2>/dev/null) ]] && return 0
        sleep 0.2
    done
    log "jobs still running after scancel: $(SLURM_CONF=$CONF timeout 10 squeue -h 2>&1 | head -5)"
}

stop() {
    local n
    if [[ -f $CONF ]] && running "$DIR/slurmctld.pid"; then
        on_node "${NAMES[0]}" bash "$SCRIPT" cancel || true
    fi
    local files=("$DIR/slurmctld.pid" "$DIR/munged.pid")
    for n in "${NAMES[@]}"; do files+=("$(slurmd_pidfile "$n")"); done
    stop_pidfiles "${files[@]}"
    log "stopped"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    install) mkdir -p "$DIR"; install_packages ;;
    setup) setup ;;
    start-munge) start_munge ;;
    start-ctld) start_ctld ;;
    start-slurmd) start_slurmd "${2:-}" ;;
    wait) wait_up "${2:-60}" ;;
    cancel) cancel_all ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    status)
        d=
        for d in munged slurmctld; do
            if running "$DIR/$d.pid"; then echo "$d: running (pid $(cat "$DIR/$d.pid"))"; else echo "$d: stopped"; fi
        done
        for n in "${NAMES[@]}"; do
            f=$(slurmd_pidfile "$n")
            if running "$f"; then echo "slurmd $n: running (pid $(cat "$f"))"; else echo "slurmd $n: stopped"; fi
        done
        [[ -f $CONF ]] && on_node "${NAMES[0]}" env SLURM_CONF="$CONF" timeout 10 sinfo 2>/dev/null || true ;;
    *) echo "usage: $0 start|stop|restart|status|env|install|setup|start-munge|start-ctld|start-slurmd NODE|wait [S]|cancel" >&2
       exit 2 ;;
esac
