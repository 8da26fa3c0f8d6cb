#!/usr/bin/env bash
# Set everything up, start Redis (AOF in data/redis, 127.0.0.1:${REDIS_PORT:-6379}) and run
# `inventory serve "$@"` against it until Ctrl-C. A Redis this script started is stopped on exit;
# one already running from data/redis (our pidfile) is reused and left running.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REDIS_SH="$ROOT/scripts/redis.sh"
PORT="${REDIS_PORT:-6379}"
DATA="$ROOT/data/redis"

"$ROOT/scripts/setup.sh"

export REDIS_URL="redis://127.0.0.1:$PORT/0"

if "$REDIS_SH" status "$DATA" "$PORT" >/dev/null 2>&1; then
    echo "serve: reusing Redis already running from data/redis on port $PORT" >&2
    exec "$ROOT/.venv/bin/inventory" serve "$@"
fi

"$REDIS_SH" start "$DATA" "$PORT"

# shellcheck disable=SC2317  # invoked by the EXIT trap
stop_redis() { "$REDIS_SH" stop "$DATA" "$PORT" || true; }
trap stop_redis EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rc=0
"$ROOT/.venv/bin/inventory" serve "$@" || rc=$?
exit "$rc"
