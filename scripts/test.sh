#!/usr/bin/env bash
# The whole suite, as CI runs it: set-up, lint (ruff check, ruff format --check, mypy), pytest.
# Arguments go to pytest (e.g. scripts/test.sh -k expiry -x). Every stage after set-up runs even
# if an earlier one failed; the exit status is non-zero if any failed. pytest's exit code 5
# (no tests collected) counts as a failure. The tests start their own redis-server processes.
# pytest runs on two workers (TEST_WORKERS=N to change; 0 for one process).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

banner() { printf '\n########## %s ##########\n' "$*"; }

banner "setup"
"$ROOT/scripts/setup.sh"

failed=()

banner "lint: ruff check, ruff format --check, mypy"
"$ROOT/scripts/lint.sh" || failed+=("lint")

banner "pytest"
rc=0
# Two workers (pytest-xdist), each with its own session servers; TEST_WORKERS overrides (0: one
# process, as plain pytest runs), and so does an -n among the arguments.
"$ROOT/.venv/bin/pytest" -n "${TEST_WORKERS:-2}" "$@" || rc=$?
if ((rc == 5)); then
    echo "test: pytest collected no tests; that counts as a failure" >&2
    failed+=("pytest (no tests collected)")
elif ((rc != 0)); then
    failed+=("pytest (exit $rc)")
fi

if ((${#failed[@]})); then
    printf '\ntest: FAILED: %s\n' "$(IFS=,; echo "${failed[*]}")" >&2
    exit "$((rc != 0 ? rc : 1))"
fi
