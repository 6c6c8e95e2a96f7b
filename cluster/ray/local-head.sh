#!/usr/bin/env bash
# A Ray head on this machine for `ray job submit`, with its own free ports and its own token (as every
# node of cluster/slurm/ray.sbatch: `bigtrain launch ray-node --head`), stopped without touching any
# other Ray on the machine (`ray stop` would kill every Ray process of the user).
#
#   cluster/ray/local-head.sh start      # ray start --head --block, dashboard on 127.0.0.1 only
#   eval "$(cluster/ray/local-head.sh env)"   # RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH, RAY_ADDRESS (dashboard)
#   ray job submit --working-dir . -- bigtrain ...
#   cluster/ray/local-head.sh stop       # SIGTERM, then SIGKILL, to the head's process group
#
# Knobs (environment): BIGTRAIN_RAY_DIR (state: head.json with the address and every port, the token
# file auth_token (0600), head.log, Ray's temp dir; default /tmp/bigtrain-ray; keep it short: Ray's unix
# sockets live below it and socket paths are limited to 107 bytes), RAY_NUM_CPUS (default: all cores),
# RAY_AUTH_TOKEN (default: a new token in BIGTRAIN_RAY_DIR/auth_token), BIGTRAIN (default "bigtrain").
# Every port is picked free when the head starts (see head.json); the dashboard / job API listens on
# 127.0.0.1, the GCS, raylet and object manager on all interfaces (token authentication guards them).
set -euo pipefail

DIR=${BIGTRAIN_RAY_DIR:-/tmp/bigtrain-ray}
NUM_CPUS=${RAY_NUM_CPUS:-$(nproc)}
PIDFILE=$DIR/head.pid
INFO=$DIR/head.json
read -r -a BIGTRAIN_CMD <<<"${BIGTRAIN:-bigtrain}"
export RAY_AUTH_MODE=token

log() { echo "local-head: $*" >&2; }
running() { [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$INFO" "$1"; }
token_env() {
    if [[ -z ${RAY_AUTH_TOKEN:-} ]]; then
        if [[ ! -s $DIR/auth_token ]]; then
            (umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$DIR/auth_token")
        fi
        export RAY_AUTH_TOKEN_PATH=$DIR/auth_token
    fi
}

start() {
    command -v ray >/dev/null || { log "the ray CLI is not installed (pip install 'ray[default,data,train]')"; exit 1; }
    mkdir -p "$DIR"
    if running; then log "already running (pid $(cat "$PIDFILE"))"; return 0; fi
    token_env
    rm -f "$INFO"
    # setsid: the head gets its own process group, which `stop` signals as a whole.
    setsid "${BIGTRAIN_CMD[@]}" launch ray-node --head --info-file "$INFO" --num-cpus "$NUM_CPUS" \
        --temp-dir "$DIR/tmp" --job-id "local$$" >"$DIR/head.log" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    if ! "${BIGTRAIN_CMD[@]}" launch ray-wait --info-file "$INFO" --nodes 1 --timeout 60 --watch-pid "$(cat "$PIDFILE")" >/dev/null; then
        log "the head did not come up:"; tail -20 "$DIR/head.log" >&2
        stop; exit 1
    fi
    log "up: GCS $(field address), dashboard / job API $(field dashboard) (pid $(cat "$PIDFILE"))"
}

stop() {
    running || { rm -f "$PIDFILE"; log "not running"; return 0; }
    local pid; pid=$(cat "$PIDFILE")
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 80); do
        pgrep -g "$pid" >/dev/null || break
        sleep 0.5
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
    log "stopped"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    env) token_env
         echo "export RAY_AUTH_MODE=token"
         [[ -n ${RAY_AUTH_TOKEN_PATH:-} ]] && echo "export RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH"
         echo "export RAY_ADDRESS=$(field dashboard)" ;;
    status) if running; then echo "running (pid $(cat "$PIDFILE"))"; ray status --address "$(field address)" 2>/dev/null || true; else echo "stopped"; fi ;;
    *) echo "usage: $0 start|stop|env|status" >&2; exit 2 ;;
esac
