#!/usr/bin/env bash
# Manage one loopback-only redis-server whose data, pidfile and log live in DIR.
#
#   scripts/redis.sh start  DIR PORT   start it daemonized (AOF on) and wait for PONG (10 s)
#   scripts/redis.sh stop   DIR PORT   stop the process named in DIR/redis.pid and wait for it
#   scripts/redis.sh status DIR PORT   print whether it runs; exit 0 if it does, 3 if not
#
# Env: REDIS_APPENDFSYNC (default everysec). Processes are found only through the pidfile,
# never by name.
set -euo pipefail

usage() {
    echo "usage: $(basename "$0") start|stop|status DIR PORT" >&2
    exit 2
}

[[ $# -eq 3 ]] || usage
cmd="$1"
dir="$2"
port="$3"
[[ $port =~ ^[0-9]+$ ]] || { echo "redis.sh: PORT must be a number, got '$port'" >&2; exit 2; }

log() { printf 'redis.sh: %s\n' "$*" >&2; }

CONF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/redis.conf"

if [[ -d $dir ]]; then
    dir="$(cd "$dir" && pwd)"
fi
pidfile="$dir/redis.pid"
logfile="$dir/redis.log"

# PID from the pidfile if that process is alive and is a redis-server; empty otherwise.
live_pid() {
    local pid comm
    [[ -r $pidfile ]] || return 0
    pid="$(tr -dc '0-9' <"$pidfile")"
    [[ -n $pid ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    [[ -z $comm || $comm == redis-server* ]] || return 0
    echo "$pid"
}

# redis-cli with a hard time limit: it would wait forever on a port held by something that
# accepts connections but never answers.
cli() { timeout 2 redis-cli -h 127.0.0.1 -p "$port" "$@" 2>/dev/null; }

ping() { [[ "$(cli ping)" == PONG ]]; }

# process_id reported by whatever Redis answers on the port (empty if none).
port_pid() { cli info server | tr -d '\r' | sed -n 's/^process_id://p'; }

# True when our pidfile's process is the Redis answering PONG on the port.
ours_running() {
    local pid
    pid="$(live_pid)"
    [[ -n $pid ]] && ping && [[ "$(port_pid)" == "$pid" ]]
}

do_status() {
    local pid
    pid="$(live_pid)"
    if [[ -n $pid ]] && ping && [[ "$(port_pid)" == "$pid" ]]; then
        echo "running (pid $pid, 127.0.0.1:$port, dir $dir)"
        return 0
    elif [[ -n $pid ]]; then
        echo "not answering: pid $pid from $pidfile is alive but not the Redis on port $port"
        return 1
    elif ping; then
        echo "not running from $dir (another Redis answers on port $port)"
        return 3
    fi
    echo "not running (dir $dir, port $port)"
    return 3
}

do_start() {
    if ours_running; then
        log "already running (pid $(live_pid), port $port)"
        return 0
    fi
    if [[ -n "$(live_pid)" ]]; then
        log "pid $(live_pid) from $pidfile is alive but does not answer on port $port; stop it first"
        return 1
    fi
    if ping; then
        log "port $port is taken by another Redis (pid $(port_pid)); choose another port"
        return 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        log "port $port is taken by something that is not Redis; choose another port"
        return 1
    fi
    command -v redis-server >/dev/null 2>&1 || { log "redis-server not found (run scripts/setup.sh)"; return 1; }
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    pidfile="$dir/redis.pid"
    logfile="$dir/redis.log"
    rm -f "$pidfile"

    # the project's settings (scripts/redis.conf) first, then these
    if ! redis-server "$CONF" --bind 127.0.0.1 --port "$port" --dir "$dir" \
            --appendonly yes --appendfsync "${REDIS_APPENDFSYNC:-everysec}" --save '' \
            --pidfile "$pidfile" --logfile "$logfile" --daemonize yes --protected-mode yes; then
        log "redis-server failed to start; last lines of $logfile:"
        tail -n 20 "$logfile" >&2 2>/dev/null || true
        return 1
    fi

    local deadline=$((SECONDS + 10)) pid seen=""
    until ours_running; do
        pid="$(live_pid)"
        if [[ -n $pid ]]; then
            seen="$pid"
        elif [[ -n $seen ]]; then
            log "redis-server (pid $seen) exited during start-up; last lines of $logfile:"
            tail -n 20 "$logfile" >&2 2>/dev/null || true
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "no PONG on 127.0.0.1:$port within 10 s; last lines of $logfile:"
            tail -n 20 "$logfile" >&2 2>/dev/null || true
            do_stop >/dev/null 2>&1 || true
            return 1
        fi
        sleep 0.1
    done
    log "started (pid $(live_pid), 127.0.0.1:$port, dir $dir)"
}

do_stop() {
    local pid
    pid="$(live_pid)"
    if [[ -z $pid ]]; then
        rm -f "$pidfile"
        log "not running (dir $dir)"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "pid $pid did not exit within 30 s of SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
            break
        fi
        sleep 0.1
    done
    rm -f "$pidfile"
    log "stopped (pid $pid)"
}

case "$cmd" in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    *) usage ;;
esac
