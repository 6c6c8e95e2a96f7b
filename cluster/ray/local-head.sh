#!/usr/bin/env bash
# A Ray head on this machine for `ray job submit` (and the tests), stopped without touching any other
# Ray on the machine (`ray stop` would kill every Ray process of the user).
#
#   cluster/ray/local-head.sh start      # ray start --head --block, dashboard on 127.0.0.1 only
#   RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- bigtrain ...
#   cluster/ray/local-head.sh stop       # SIGTERM, then SIGKILL, to the head's process group
#
# Knobs (environment): BIGTRAIN_RAY_DIR (state, logs, Ray's temp dir; default /tmp/bigtrain-ray; keep it
# short: Ray's unix sockets live below it and socket paths are limited to 107 bytes),
# RAY_NUM_CPUS (default: all cores), RAY_GCS_PORT (6379), RAY_DASHBOARD_PORT (8265), RAY_CLIENT_PORT
# (10001), RAY_AGENT_PORT (52365, the dashboard agent's HTTP port). Give other values to run beside
# another Ray on the same machine.
# Ray 2.60 enables token authentication: the token lives in ~/.ray/auth_token (created here if
# missing) and every client needs RAY_AUTH_MODE=token. The GCS (RAY_GCS_PORT) and the raylet still
# listen on all interfaces: firewall them on machines reachable from untrusted networks.
set -euo pipefail

DIR=${BIGTRAIN_RAY_DIR:-/tmp/bigtrain-ray}
GCS_PORT=${RAY_GCS_PORT:-6379}
DASH_PORT=${RAY_DASHBOARD_PORT:-8265}
NUM_CPUS=${RAY_NUM_CPUS:-$(nproc)}
CLIENT_PORT=${RAY_CLIENT_PORT:-10001}
AGENT_PORT=${RAY_AGENT_PORT:-52365}
PIDFILE=$DIR/head.pid
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}

log() { echo "local-head: $*" >&2; }
running() { [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

start() {
    command -v ray >/dev/null || { log "the ray CLI is not installed (pip install 'ray[default,data,train]')"; exit 1; }
    mkdir -p "$DIR/tmp"
    if running; then log "already running (pid $(cat "$PIDFILE"))"; return 0; fi
    if [[ ! -s ${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token} && -z ${RAY_AUTH_TOKEN:-} ]]; then
        ray get-auth-token --generate >/dev/null 2>&1 || true
    fi
    # setsid: the head gets its own process group, which `stop` signals as a whole.
    setsid ray start --head --block --disable-usage-stats --dashboard-host 127.0.0.1 \
        --num-cpus "$NUM_CPUS" --port "$GCS_PORT" --dashboard-port "$DASH_PORT" \
        --ray-client-server-port "$CLIENT_PORT" --dashboard-agent-listen-port "$AGENT_PORT" \
        --temp-dir "$DIR/tmp" >"$DIR/head.log" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 120); do
        if ! running; then log "ray start exited:"; tail -20 "$DIR/head.log" >&2; exit 1; fi
        if ray job list --address "http://127.0.0.1:$DASH_PORT" >/dev/null 2>&1; then
            log "up: GCS 0.0.0.0:$GCS_PORT, dashboard / job API http://127.0.0.1:$DASH_PORT (pid $(cat "$PIDFILE"))"
            return 0
        fi
        sleep 0.5
    done
    log "the head did not answer within 60 s:"; tail -20 "$DIR/head.log" >&2
    stop; exit 1
}

stop() {
    running || { rm -f "$PIDFILE"; log "not running"; return 0; }
    local pid; pid=$(cat "$PIDFILE")
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 12); do
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
    status) if running; then echo "running (pid $(cat "$PIDFILE"))"; ray status --address "127.0.0.1:$GCS_PORT" 2>/dev/null || true; else echo "stopped"; fi ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
