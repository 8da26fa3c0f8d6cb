#!/usr/bin/env bash
# Idempotent developer/CI set-up for a Debian 12 machine with Python 3.11:
#   - system packages (redis-server, redis-cli; the PostgreSQL server binaries for the test
#     suite's throwaway clusters; chromium for the dashboard's browser test; valgrind for
#     scripts/bench/instructions.py; python3.X-venv if venv can't bootstrap pip). No packaged service is left running or enabled: the project
#     starts its own servers.
#   - .venv in the project root (python3.11, or python3 when it is 3.11+; $PYTHON overrides)
#   - pip install -c constraints.txt -e '.[dev]', skipped while a stamp in .venv shows that
#     pyproject.toml, constraints.txt and the interpreter are unchanged.
# Fast (well under a second) when everything is already in place.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.setup-stamp"

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# Serialise concurrent runs (e.g. serve.sh and test.sh started together): lock this file.
if command -v flock >/dev/null 2>&1; then
    exec 9<"${BASH_SOURCE[0]}"
    flock 9
fi

SUDO=()
if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "not root and sudo is missing: cannot install system packages"
    SUDO=(sudo)
fi

apt_updated=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these by hand: $*"
    export DEBIAN_FRONTEND=noninteractive
    if [[ $apt_updated -eq 0 ]]; then
        log "apt-get update"
        "${SUDO[@]}" apt-get update -qq
        apt_updated=1
    fi
    log "apt-get install $*"
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# apt_install, but the packages' services may not start during the install (they would take
# the ports the project wants): a temporary policy-rc.d that denies starts, if there is none
# yet (invoke-rc.d and deb-systemd-invoke both obey it). Returns apt's status.
apt_install_no_start() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these by hand: $*"
    local policy=/usr/sbin/policy-rc.d own_policy=0 status=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        own_policy=1
    fi
    apt_install "$@" || status=$?
    if [[ $own_policy -eq 1 ]]; then
        "${SUDO[@]}" rm -f "$policy"
    fi
    return "$status"
}

# On systemd machines a package also enables its unit for the next boot: undo that.
systemd_disable() {
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        "${SUDO[@]}" systemctl disable --now "$@" >/dev/null 2>&1 || true
    fi
}

# --- redis-server -------------------------------------------------------------------------
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    apt_install_no_start redis-server redis-tools || die "installing redis-server failed"
    # The project runs its own redis-server processes (scripts/redis.sh, the test fixtures).
    systemd_disable redis-server
    command -v redis-server >/dev/null 2>&1 || die "redis-server still not on PATH after install"
fi

# --- PostgreSQL server binaries -------------------------------------------------------------
# The tests start throwaway clusters with initdb and pg_ctl (scripts/pg_server.py), as the
# `postgres` OS user when run as root. Debian keeps the binaries off PATH, in
# /usr/lib/postgresql/<version>/bin; this prints the newest such folder that has them.
pg_bindir() {
    local dir found=""
    for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V); do
        if [[ -x $dir/initdb && -x $dir/pg_ctl && -x $dir/postgres ]]; then
            found=$dir
        fi
    done
    [[ -n $found ]] || return 1
    printf '%s\n' "$found"
}

if ! pg_bindir >/dev/null; then
    # Debian's `postgresql` brings the server of the release's version and creates the
    # `postgres` OS user.
    apt_install_no_start postgresql || die "installing postgresql failed"
    # It also creates a default cluster (<version>/main, port 5432) that starts with the
    # machine. The project needs none of it: stop every packaged cluster (policy-rc.d kept
    # it from starting, but be sure), mark it manual so that neither systemd nor the init
    # script starts it at boot, and disable the service. Best effort, never fatal.
    if command -v pg_lsclusters >/dev/null 2>&1; then
        while read -r version cluster _; do
            [[ -n $version && -n $cluster ]] || continue
            "${SUDO[@]}" pg_ctlcluster "$version" "$cluster" stop >/dev/null 2>&1 || true
            start_conf="/etc/postgresql/$version/$cluster/start.conf"
            if [[ -f $start_conf ]]; then
                printf 'manual\n' | "${SUDO[@]}" tee "$start_conf" >/dev/null || true
            fi
        done < <(pg_lsclusters --no-header 2>/dev/null || true)
    fi
    systemd_disable postgresql
    pg_bindir >/dev/null || die "no initdb/pg_ctl in /usr/lib/postgresql/*/bin after install"
fi
if [[ $EUID -eq 0 ]] && ! getent passwd postgres >/dev/null 2>&1; then
    log "warning: no postgres OS user: the tests (run as root) can't start PostgreSQL as it;" \
        "reinstall Debian's postgresql-common or create the user"
fi

# --- valgrind ---------------------------------------------------------------------------------
# scripts/bench/instructions.py counts Redis's instructions per reservation with callgrind.
if ! command -v valgrind >/dev/null 2>&1 || ! command -v callgrind_control >/dev/null 2>&1; then
    apt_install valgrind || die "installing valgrind failed"
fi

# --- Chromium ---------------------------------------------------------------------------------
# tests/test_dashboard_browser.py drives Debian's chromium (/usr/bin/chromium) with Playwright;
# Playwright's own browser download is never used (it needs the network). DejaVu gives the
# page's text a font in the screenshots.
if [[ ! -x /usr/bin/chromium ]]; then
    apt_install chromium fonts-dejavu-core || die "installing chromium failed"
fi

# --- Python ---------------------------------------------------------------------------------
is_py311() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }

venv_ok() {
    [[ -x $VENV/bin/python ]] && is_py311 "$VENV/bin/python" && [[ -x $VENV/bin/pip ]]
}

if ! venv_ok; then
    py="${PYTHON:-}"
    if [[ -z $py ]]; then
        for candidate in python3.11 python3; do
            if command -v "$candidate" >/dev/null 2>&1 && is_py311 "$candidate"; then
                py="$candidate"
                break
            fi
        done
    fi
    [[ -n $py ]] || die "need Python 3.11+ (python3.11, or python3 that is 3.11+); set PYTHON=..."
    is_py311 "$py" || die "$py is not Python 3.11+"
    if ! "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        # Debian's python3.X lacks ensurepip until python3.X-venv is installed.
        ver="$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        apt_install "python${ver}-venv"
    fi
    if [[ -e $VENV ]]; then
        log "removing broken or outdated $VENV"
        rm -rf "$VENV"
    fi
    log "creating .venv with $(command -v "$py") ($("$py" --version 2>&1))"
    "$py" -m venv "$VENV"
fi

# --- project install --------------------------------------------------------------------------
want="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1) $("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])')"
have="$(cat "$STAMP" 2>/dev/null || true)"

if [[ $want != "$have" || ! -x $VENV/bin/inventory ]]; then
    log "pip install -c constraints.txt -e '.[dev]' (log: .venv/pip-install.log)"
    rm -f "$STAMP"
    if ! (cd "$ROOT" && "$VENV/bin/pip" install --disable-pip-version-check \
            -c constraints.txt -e '.[dev]') >"$VENV/pip-install.log" 2>&1; then
        grep -v "is ignored: it is neither a file nor a directory" "$VENV/pip-install.log" \
            | tail -n 40 >&2 || true
        die "pip install failed (full log: $VENV/pip-install.log)"
    fi
    printf '%s\n' "$want" >"$STAMP"
    log "installed"
fi
