#!/usr/bin/env bash
# Install sendguard as a system service on Debian (bookworm), as root, from a clone of this repository.
#
#   bash scripts/install.sh                       install (or update) on this machine
#   bash scripts/install.sh --root DIR [--user NAME]
#                                                 stage the same tree under DIR, every path in the
#                                                 units prefixed with DIR (for tests and trials);
#                                                 the user is still created on this machine
#
# What it sets up (and, run again, only checks or refreshes: it is idempotent):
#   user and group   sendguard (system, no login, home /var/lib/sendguard)
#   /opt/sendguard/venv            the package, pip-installed from this checkout (updated each run)
#   /opt/sendguard/docs            the documentation the units point to
#   /etc/sendguard/sendguard.toml  from examples/sendguard.toml, only when there is none (never overwritten)
#   /etc/sendguard/keys            0750 root:sendguard, for the DKIM keys (each 0640 root:sendguard)
#   /var/lib/sendguard             0750 sendguard:sendguard, the state (counters, stamps, pauses)
#   /etc/systemd/system/sendguard-{milter,policyd,release,watch,dmarc}.service  from systemd/ (rewritten
#                                  each run: local changes go in drop-ins, systemctl edit UNIT)
# It enables and starts nothing: see the lines it prints at the end.
set -euo pipefail
# Whatever root's umask, the venv and the docs must be readable by the service user.
umask 022

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=""
user="sendguard"

usage() {
    echo "usage: bash scripts/install.sh [--root DIR] [--user NAME]" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || usage; root=${2%/}; shift 2 ;;
        --user) [ $# -ge 2 ] || usage; user=$2; shift 2 ;;
        *) usage ;;
    esac
done
if [ -n "$root" ] && [ "${root#/}" = "$root" ]; then
    echo "install: --root must be an absolute path" >&2
    exit 2
fi

log() { printf '== install: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "install: run as root (it creates a system user and writes under /etc, /opt and /var/lib)" >&2
    exit 1
fi

prefix="$root/opt/sendguard"
venv="$prefix/venv"
etc="$root/etc/sendguard"
state="$root/var/lib/sendguard"
units="$root/etc/systemd/system"

# apt_install PACKAGE...
. "$here/scripts/apt.sh"

# The milter's C extension (pymilter) builds against libmilter.
apt_install python3 python3-venv python3-dev gcc libc6-dev libmilter-dev ca-certificates

if ! getent group "$user" >/dev/null; then
    log "system group $user"
    groupadd --system "$user"
fi
if ! getent passwd "$user" >/dev/null; then
    log "system user $user"
    useradd --system --gid "$user" --home-dir "$state" --no-create-home --shell /usr/sbin/nologin \
        --comment "sendguard (milter and policy daemon)" "$user"
fi

# install -d sets owner and mode on every run, so a drifted folder is put right again.
install -d -m 0755 "$prefix" "$root/etc" "$units"
install -d -o root -g "$user" -m 0755 "$etc"
install -d -o root -g "$user" -m 0750 "$etc/keys"
install -d -o "$user" -g "$user" -m 0750 "$state"

if [ -e "$etc/sendguard.toml" ]; then
    log "$etc/sendguard.toml exists: left as it is"
else
    log "$etc/sendguard.toml from examples/sendguard.toml"
    install -o root -g "$user" -m 0640 "$here/examples/sendguard.toml" "$etc/sendguard.toml"
fi

# Debian's own Python, whatever python3 root's PATH finds first: a pyenv or a venv under /root
# would leave the service user a venv it cannot run.
if [ ! -x "$venv/bin/python" ] || [ "$(readlink -f "$venv/bin/python")" != "$(readlink -f /usr/bin/python3)" ]; then
    log "python venv in $venv"
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv"
fi
# Built from a copy: pip builds a local project in place, and the checkout stays as it is.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
tar -C "$here" --exclude=./.venv --exclude=./.git --exclude=./tests --exclude=./benchmarks \
    --exclude='*.egg-info' --exclude=./build -cf - . | tar -C "$src" -xf -
log "pip install of $here into $venv"
"$venv/bin/pip" install -q --disable-pip-version-check "$src"
rm -rf "$prefix/docs"
cp -r "$here/docs" "$prefix/docs"
chmod -R u=rwX,go=rX "$prefix/docs"

for unit in "$here"/systemd/*.service; do
    name=$(basename "$unit")
    # Only with --root or --user: the paths and the user the staged tree actually has.
    sed -e "s|/opt/sendguard/|$root/opt/sendguard/|g" \
        -e "s|/etc/sendguard/|$root/etc/sendguard/|g" \
        -e "s|/var/lib/sendguard|$root/var/lib/sendguard|g" \
        -e "s|^User=sendguard\$|User=$user|" \
        -e "s|^Group=sendguard\$|Group=$user|" \
        "$unit" >"$units/$name.new"
    chmod 0644 "$units/$name.new"
    mv "$units/$name.new" "$units/$name"
done
log "units in $units: $(cd "$here/systemd" && echo *.service)"

if [ -z "$root" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi

cat >&2 <<EOF
== install: done. Next:
   1. edit $etc/sendguard.toml (sendguard check-config $etc/sendguard.toml says what is wrong)
   2. put each DKIM key in $etc/keys (install -o root -g $user -m 0640 KEY $etc/keys/)
   3. systemctl enable --now sendguard-milter sendguard-policyd
      and on the Postfix host sendguard-release; sendguard-watch once [watch] names a log,
      sendguard-dmarc once [dmarc] names the report mailbox
   4. wire Postfix in with postfix-snippets/ (README.md)
EOF
