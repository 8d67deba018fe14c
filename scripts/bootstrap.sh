#!/usr/bin/env bash
# Set up sendguard on a fresh Debian bookworm machine (as root) and run it or test it.
#
#   bash scripts/bootstrap.sh run  [--config FILE]   set up, then start both services
#   bash scripts/bootstrap.sh test [PYTEST ARGS...]  set up, then run the whole suite,
#                                                   the real-Postfix container suite included
#
# Idempotent: every step checks first and does only what is missing, so a
# second run starts at once.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
venv="$here/.venv"

log() { printf '\n== bootstrap: %s\n' "$*" >&2; }

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "bootstrap: run as root (apt-get and the container engine need it)" >&2
        exit 1
    fi
}

# apt_install PACKAGE...
. "$here/scripts/apt.sh"

without_service_start() {
    # Run "$@" with Debian's policy-rc.d answering "no" (101): packages installed meanwhile do
    # not start their daemons (an nsd on port 53, a second redis) on the machine.
    local policy=/usr/sbin/policy-rc.d
    if [ -e "$policy" ]; then
        "$@"
        return
    fi
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    local rc=0
    "$@" || rc=$?
    rm -f "$policy"
    return "$rc"
}

python_env() {
    # The milter's C extension (pymilter) builds against libmilter.
    apt_install python3 python3-venv python3-dev gcc libc6-dev libmilter-dev ca-certificates
    if [ ! -x "$venv/bin/python" ]; then
        log "python venv in $venv"
        python3 -m venv "$venv"
    fi
    local extra="$1"
    local stamp="$venv/.installed$extra"
    # Reinstall only when the project metadata changed since the last install.
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        log "pip install -e .$extra"
        "$venv/bin/pip" install -q --upgrade pip >/dev/null
        "$venv/bin/pip" install -q -e ".$extra"
        touch "$stamp"
    fi
}

promtool_env() {
    # promtool (Debian's prometheus package) checks and unit-tests the alert rules in examples/.
    # Only the tool is taken out of the package: installing it would also start a Prometheus
    # server on a machine that has systemd.
    [ -x "$venv/bin/promtool" ] && return 0
    log "promtool from Debian's prometheus package"
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && { apt-get download -qq prometheus 2>/dev/null || { apt-get update -qq && apt-get download -qq prometheus; }; }) >/dev/null
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
    install -m 0755 "$tmp/x/usr/bin/promtool" "$venv/bin/promtool"
    rm -rf "$tmp"
}

cmd_run() {
    need_root
    python_env ""
    log "starting sendguard (policy daemon 127.0.0.1:10040, milter 127.0.0.1:8891, metrics 127.0.0.1:9466)"
    exec "$venv/bin/sendguard" run "$@"
}

cmd_test() {
    need_root
    # opendkim-tools: the independent DKIM verifier; redis-server: real Redis; util-linux
    # (unshare), iproute2 and openssl: the private DNS namespace the OpenDKIM test builds;
    # logrotate and systemd-journal-remote: the watcher's rotations and journal files, for real;
    # nsd: the authoritative server dns-check's tests ask (tests/support/nsd_server.py);
    # systemd: systemd-analyze verifies the units in systemd/ (tests/core/test_install.py);
    # dovecot-imapd: the IMAP server sendguard dmarc fetches reports from (tests/support/dovecot_server.py).
    # These are tools for the tests: their services are not started (policy-rc.d), and the
    # tests start their own instances on loopback.
    without_service_start apt_install opendkim-tools redis-server util-linux iproute2 openssl logrotate \
        systemd-journal-remote nsd systemd dovecot-imapd
    # postfix (smtpd, smtp-sink): the private real-Postfix instances of the tests
    # (tests/support/sendguard_testing/postfix_instance.py, which would install it itself);
    # "No configuration": no main.cf is written and the system instance never runs.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    without_service_start apt_install postfix
    python_env "[test]"
    promtool_env
    # The venv (with podman-compose from the test extras) first on PATH, for the
    # container set-up and for the suite, which calls the compose tool.
    export PATH="$venv/bin:$PATH"
    # `-m "not container"` (the unit tests alone) needs no engine: don't install one.
    local prev="" arg need_engine=1
    for arg in "$@"; do
        [ "$prev" = "-m" ] && [ "$arg" = "not container" ] && need_engine=0
        prev=$arg
    done
    if [ "$need_engine" -eq 1 ]; then
        bash "$here/scripts/container-setup.sh"
    fi
    log "pytest (unit tests and the container suite)"
    # Plain `pytest`, never `python -m pytest`: the latter puts the repository
    # root on sys.path, where the milter/ folder would shadow pymilter's module.
    local rc=0
    "$venv/bin/pytest" "$@" || rc=$?
    if [ "$rc" -eq 5 ]; then
        echo "bootstrap: pytest collected no tests: that is a failure here" >&2
        return 1
    fi
    return "$rc"
}

case "${1:-}" in
    run) shift; cmd_run "$@" ;;
    test) shift; cmd_test "$@" ;;
    *)
        echo "usage: bash scripts/bootstrap.sh run [--config FILE] | test [PYTEST ARGS...]" >&2
        exit 2
        ;;
esac
