#!/usr/bin/env bash
# Static checks: ruff check, ruff format --check, mypy (strict; config in pyproject.toml).
# Runs every check, then exits non-zero if any failed. Expects .venv (scripts/setup.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="$ROOT/.venv/bin"

banner() { printf '\n===== %s =====\n' "$*"; }

failed=()
banner "ruff check"
"$BIN/ruff" check . || failed+=("ruff check")
banner "ruff format --check"
"$BIN/ruff" format --check . || failed+=("ruff format")
banner "mypy"
"$BIN/mypy" || failed+=("mypy")

if ((${#failed[@]})); then
    printf '\nlint: FAILED: %s\n' "$(IFS=,; echo "${failed[*]}")" >&2
    exit 1
fi
