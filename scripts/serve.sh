#!/usr/bin/env bash
# Set everything up and run the service on its embedded stores until Ctrl-C:
#   - Redis, AOF on (appendfsync ${REDIS_APPENDFSYNC:-everysec}), data in data/redis,
#     127.0.0.1:${REDIS_PORT:-6379} (one already running from data/redis is reused and kept);
#   - the database: $DATABASE_URL, else SQLite in data/inventory.db, migrated to the newest schema;
#   - `inventory worker` (drains the outbox into the database) and `inventory scheduler`
#     (expiry every second, a drain every two) in the background, each started again if it
#     stops (a crash, kill -9), after a pause of 1 s growing to 30 s while it keeps stopping;
#   - `inventory serve "$@"`, the HTTP API (127.0.0.1:8000 unless --host/--port), in the foreground.
# Whatever this script started is stopped when it exits: on Ctrl-C, on TERM, or when the API
# stops.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REDIS_SH="$ROOT/scripts/redis.sh"
INVENTORY="$ROOT/.venv/bin/inventory"
PORT="${REDIS_PORT:-6379}"
DATA="$ROOT/data/redis"

"$ROOT/scripts/setup.sh"

export REDIS_URL="redis://127.0.0.1:$PORT/0"

started_redis=0
children=()
kept=()  # the process groups of the kept children (keep): the loop and what it runs
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    for pid in "${kept[@]}"; do kill -- "-$pid" 2>/dev/null || true; done
    for pid in "${children[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${children[@]}"; do wait "$pid" 2>/dev/null || true; done
    # A kept group's loop ends at once, what it runs when it has shut down (a worker ends its
    # job first): Redis is stopped only after, at most 10 s later (then they are killed).
    local group tries
    for group in "${kept[@]}"; do
        for ((tries = 0; tries < 100; tries++)); do
            kill -0 -- "-$group" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$group" 2>/dev/null || true
    done
    if ((started_redis)); then "$REDIS_SH" stop "$DATA" "$PORT" || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if "$REDIS_SH" status "$DATA" "$PORT" >/dev/null 2>&1; then
    echo "serve: reusing Redis already running from data/redis on port $PORT" >&2
else
    "$REDIS_SH" start "$DATA" "$PORT"
    started_redis=1
fi

"$INVENTORY" migrate --log-level WARNING >/dev/null

# Each child in a process group of its own (set -m while it starts): Ctrl-C at the terminal
# reaches only this script, whose trap then stops every child once, with TERM, exactly as a
# TERM sent to this script does.
start() {
    set -m
    "$@" &
    children+=("$!")
    set +m
}
# Runs "$@" (named $1) again whenever it stops, after a pause: 1 s, doubling up to 30 s while
# it keeps stopping within a minute of its start, back to 1 s after it has run a minute.
keep() {
    local name="$1" pause=1 began rc
    shift
    while true; do
        began=$SECONDS
        rc=0
        "$@" || rc=$?
        if ((SECONDS - began >= 60)); then pause=1; fi
        echo "serve: the $name stopped (exit $rc); starting it again in ${pause}s" >&2
        sleep "$pause"
        pause=$((pause * 2 > 30 ? 30 : pause * 2))
    done
}
start keep worker "$INVENTORY" worker --log-level WARNING
kept+=("${children[-1]}")
start keep scheduler "$INVENTORY" scheduler --log-level WARNING
kept+=("${children[-1]}")
# The API is a child like the others, and this script waits for it with `wait`, which a
# trapped signal interrupts at once (a foreground command would have to end first).
start "$INVENTORY" serve "$@"
rc=0
wait "${children[-1]}" || rc=$?
exit "$rc"
