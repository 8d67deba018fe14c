#!/bin/sh
# Set up a container engine for the end-to-end suite on a Debian bookworm
# machine, as root. Idempotent: every step checks first and skips what is there.
#
# - A working Docker engine (`docker info` answers) is used as it is: nothing
#   is installed or changed.
# - Otherwise Podman (runc, netavark, aardvark-dns, iptables) from Debian,
#   podman-compose from PyPI, an engine config that works on these machines,
#   and the base image debian:bookworm-slim built offline with debootstrap,
#   because no image registry can be reached here.
# - Before anything is built, every binary the engine needs is looked for, and
#   a throw-away container is started on the default network: a missing piece
#   stops here with one line that names it, not later inside an image build.
#
# Usage: scripts/container-setup.sh        (called by scripts/bootstrap.sh test)
set -eu

BASE_IMAGE=${SENDGUARD_BASE_IMAGE:-docker.io/library/debian:bookworm-slim}
CONF=/etc/containers/containers.conf
log() { echo "container-setup: $*"; }

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  log "a Docker engine answers (docker info): using it, nothing to set up"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "container-setup: must run as root (installs Podman and builds the base image)" >&2
  exit 1
fi

# -- packages -----------------------------------------------------------------
missing=""
# iptables: netavark programs the bridge's NAT with it, and a fresh bookworm
# image does not have it ("netavark: No such file or directory" at the first RUN).
PACKAGES="podman runc netavark aardvark-dns iptables debootstrap uidmap"
for pkg in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  log "installing:$missing"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
else
  log "$PACKAGES: present"
fi

# -- every binary the engine runs, by the path it runs it from ------------------------
# A package can be installed and its binary still missing (removed by hand, a
# diverted path): name the file, so the fix is obvious.
need_binary() {  # PACKAGE NAME, then candidate paths or command names
  pkg=$1; name=$2; shift 2
  for candidate in "$@"; do
    case $candidate in
      /*) [ -x "$candidate" ] && return 0 ;;
      *) command -v "$candidate" >/dev/null 2>&1 && return 0 ;;
    esac
  done
  echo "container-setup: missing $name (looked for: $*); (re)install it: apt-get install --reinstall $pkg" >&2
  exit 1
}
need_binary podman podman podman
need_binary runc runc runc
need_binary netavark netavark /usr/lib/podman/netavark /usr/libexec/podman/netavark
need_binary aardvark-dns aardvark-dns /usr/lib/podman/aardvark-dns /usr/libexec/podman/aardvark-dns
need_binary iptables iptables iptables /usr/sbin/iptables
need_binary debootstrap debootstrap debootstrap /usr/sbin/debootstrap
need_binary uidmap newuidmap newuidmap

# -- podman-compose (PyPI: Debian's 1.0.3 lacks what the compose file uses) ----
if command -v podman-compose >/dev/null 2>&1; then
  log "podman-compose: present ($(podman-compose --version 2>/dev/null | tail -1))"
else
  log "installing podman-compose from PyPI"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-pip
  fi
  # Debian's system Python refuses pip installs (PEP 668) unless told otherwise.
  python3 -m pip install -q "podman-compose>=1.1" \
    || python3 -m pip install -q --break-system-packages "podman-compose>=1.1"
fi

# -- engine configuration ---------------------------------------------------------
# crun fails on these machines and so does the systemd cgroup manager; the
# default ulimits cannot be raised inside them either.
if [ -f "$CONF" ] && grep -q '^runtime *= *"runc"' "$CONF" && grep -q '^cgroup_manager *= *"cgroupfs"' "$CONF" \
   && grep -q '^default_ulimits *= *\[\]' "$CONF"; then
  log "$CONF: already set for runc and cgroupfs"
else
  if [ -f "$CONF" ]; then
    cp "$CONF" "$CONF.before-sendguard"
    log "$CONF: saved the previous version as $CONF.before-sendguard"
  fi
  mkdir -p /etc/containers
  cat > "$CONF" <<'CONF'
# Written by sendguard's scripts/container-setup.sh (measured on these machines:
# crun and the systemd cgroup manager fail; default ulimits cannot be set).
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
  log "$CONF: written"
fi

# -- base image, built offline ------------------------------------------------------
if podman image exists "$BASE_IMAGE"; then
  log "$BASE_IMAGE: present"
else
  log "building $BASE_IMAGE with debootstrap (no registry can be pulled from here)"
  root=$(mktemp -d /var/tmp/sendguard-bookworm.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  # The mirror this machine's apt already uses (deb822 or one-line format);
  # none found: debootstrap's own default.
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  if [ -z "$mirror" ]; then
    mirror=$(awk '$1 == "deb" && !/security/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' \
      /etc/apt/sources.list 2>/dev/null || true)
  fi
  debootstrap --variant=minbase bookworm "$root" ${mirror:+"$mirror"} >/dev/null
  # Keep the image small, like the official slim image.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" -c . | podman import - "$BASE_IMAGE" >/dev/null
  log "$BASE_IMAGE: imported"
fi

podman info >/dev/null
# The same path an image build's RUN takes (runc, a netavark bridge, iptables),
# tried once on the smallest container: a broken engine fails here, named.
if ! out=$(podman run --rm --network bridge "$BASE_IMAGE" true 2>&1); then
  echo "container-setup: the engine cannot start a container on its default network: $(echo "$out" | tail -1)" >&2
  exit 1
fi
log "ready: podman $(podman --version | awk '{print $3}'), $(podman-compose --version 2>/dev/null | grep -i compose | tail -1)"
