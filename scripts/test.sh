#!/usr/bin/env bash
# The test command (README; CI runs it through .ci/run):
#
#   bash scripts/test.sh [--quick] [pytest arguments...]
#
# 1. Installs Debian's rabbitmq-server and postgresql if their binaries are missing
#    (as root, or through sudo), without letting the packages start their system
#    services - the tests start their own private servers on 127.0.0.1; and
#    debootstrap (the booted-node test builds a Debian root with it, cached in
#    /var/cache/pd-test-root).
# 2. Creates .venv (Python >= 3.11) and installs the project with its test extras
#    (again only when setup.cfg / pyproject.toml changed since the last install).
# 3. Runs `ruff check .`, then `lint-imports` (the layering contracts of
#    pyproject.toml), then mypy (strict; the packages it checks are listed in
#    pyproject.toml), then pytest with the given arguments; exits with pytest's
#    status (5, "no tests collected", is a failure too).
#
# --quick runs only the tests that need no server and are not marked slow
# (`-m "not rabbitmq and not postgres and not supervisord and not slow"`), the
# property tests with a fifth of their examples: the day-to-day lane. CI runs the
# whole suite.
#
# Without root or sudo the packages are not installed and the tests that need the
# servers are skipped - unless CI=true, where they fail.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[test.sh] %s\n' "$*" >&2; }

QUICK_MARKERS="not rabbitmq and not postgres and not supervisord and not slow"
quick=()
if [ "${1:-}" = --quick ]; then
    shift
    quick=(-m "$QUICK_MARKERS" --hypothesis-profile=quick)
fi

# ------------------------------------------------------------------ root / sudo

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    SUDO=(none)
fi

as_root() {
    if [ "${SUDO[0]:-}" = none ]; then
        return 1
    fi
    "${SUDO[@]}" "$@"
}

# ------------------------------------------------------------------ system packages

have_rabbitmq() {
    [ -n "${PD_TEST_RABBITMQ_BIN:-}" ] || [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]
}

have_postgres() {
    [ -n "${PD_TEST_PG_BIN:-}" ] || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

python_ok() {  # python_ok <interpreter>: is it Python >= 3.11 with venv + ensurepip?
    "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' \
        >/dev/null 2>&1
}

find_python() {
    local candidate path
    for candidate in python3 python3.13 python3.12 python3.11; do
        path=$(command -v "$candidate" 2>/dev/null) || continue
        if python_ok "$path"; then
            printf '%s\n' "$path"
            return 0
        fi
    done
    return 1
}

venv_ok() {
    [ -x .venv/bin/python ] \
        && .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            >/dev/null 2>&1
}

POLICY_RC_D=/usr/sbin/policy-rc.d
CREATED_POLICY=0

remove_policy() {
    if [ "$CREATED_POLICY" = 1 ]; then
        as_root rm -f "$POLICY_RC_D" || true
        CREATED_POLICY=0
    fi
}

stop_system_services() {
    # Best effort: a package's postinst may have started its service anyway
    # (e.g. an existing policy-rc.d allowed it); it could hold port 5672.
    local service
    for service in rabbitmq-server postgresql; do
        if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
            as_root timeout 60 systemctl stop "$service" >/dev/null 2>&1 || true
        elif command -v service >/dev/null 2>&1; then
            as_root timeout 60 service "$service" stop >/dev/null 2>&1 || true
        fi
    done
}

install_packages() {  # install_packages <package>...
    log "installing Debian packages: $*"
    if ! command -v apt-get >/dev/null 2>&1; then
        log "apt-get not found: install $* yourself; tests needing them will be skipped"
        return 1
    fi
    if [ "${SUDO[0]:-}" = none ]; then
        log "not root and no sudo: cannot install $*; tests needing them will be skipped"
        log "(run this script as root or with sudo to install them)"
        return 1
    fi
    # Keep the packages' services from starting during the install.
    if ! as_root test -e "$POLICY_RC_D"; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$POLICY_RC_D" >/dev/null
        as_root chmod 755 "$POLICY_RC_D"
        CREATED_POLICY=1
        trap remove_policy EXIT
    fi
    local status=0
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q || status=$?
    if [ "$status" = 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends -o Dpkg::Options::=--force-confdef \
            -o Dpkg::Options::=--force-confold "$@" || status=$?
    fi
    remove_policy
    trap - EXIT
    stop_system_services
    if [ "$status" != 0 ]; then
        log "apt-get failed (status $status); tests needing $* will be skipped or fail"
        return 1
    fi
}

packages=()
have_rabbitmq || packages+=(rabbitmq-server)
have_postgres || packages+=(postgresql)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || packages+=(debootstrap)
if ! venv_ok && ! find_python >/dev/null; then
    packages+=(python3 python3-venv)
fi
if [ "${#packages[@]}" -gt 0 ]; then
    install_packages "${packages[@]}" || true
fi

# ------------------------------------------------------------------ virtualenv

if ! venv_ok; then
    python=$(find_python) || {
        log "no Python >= 3.11 with the venv module found; install python3 and python3-venv"
        exit 1
    }
    log "creating .venv with $python"
    rm -rf .venv
    "$python" -m venv .venv
fi

# Reinstall only when the dependency declarations changed (or the tools are missing).
stamp=.venv/.pd-test-installed
wanted=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/ruff ] || [ ! -x .venv/bin/pytest ] \
    || [ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ]; then
    log "installing the project and its test extras into .venv"
    PIP_DISABLE_PIP_VERSION_CHECK=1 .venv/bin/python -m pip install --quiet -e '.[test]'
    printf '%s\n' "$wanted" >"$stamp"
fi

# ------------------------------------------------------------------ checks

log "ruff check ."
.venv/bin/ruff check .
log "lint-imports (the layering contracts of pyproject.toml)" && .venv/bin/lint-imports --no-cache

log "mypy"
.venv/bin/mypy

log "pytest ${quick[*]} $*"
status=0
.venv/bin/python -m pytest "${quick[@]}" "$@" || status=$?
if [ "$status" = 5 ]; then
    log "pytest collected no tests: treating that as a failure"
fi
exit "$status"
