#!/bin/sh
# Run the README's test command on a machine that has only what a fresh Debian
# bookworm image has: a throw-away container of the minimal bookworm image
# (debootstrap --variant=minbase, the same base scripts/container-setup.sh builds),
# with nothing of this machine in it but the committed tree and the local CAs.
# Whatever the project forgot to install fails here, not on a new CI machine.
#
#   sh scripts/fresh-machine-check.sh [PYTEST ARGS...]   default: -m "not container"
#
# The container suite itself needs an engine inside the box and is not run here;
# the engine's own pieces are checked by container-setup.sh before it builds
# anything. Needs Podman or Docker set up (scripts/container-setup.sh).
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${SENDGUARD_BASE_IMAGE:-docker.io/library/debian:bookworm-slim}
engine=podman
command -v podman >/dev/null 2>&1 || engine=docker
[ $# -gt 0 ] || set -- -m "not container"

work=$(mktemp -d /var/tmp/sendguard-fresh.XXXXXX)
trap 'rm -rf "$work"' EXIT
# The committed tree only, as a clean clone has it: no .venv, no build leftovers.
git -C "$here" archive --format=tar HEAD | tar -C "$work" -x
# Where a proxy re-signs TLS (these machines), apt's and pip's downloads need its CA;
# ca-certificates (installed by bootstrap.sh) adds it to the system bundle.
cas=/usr/local/share/ca-certificates
ca_mount=""
if [ -d "$cas" ] && [ -n "$(ls -A "$cas" 2>/dev/null)" ]; then
  ca_mount="-v $cas:$cas:ro"
fi
echo "fresh-machine-check: $engine run $IMAGE: bash scripts/bootstrap.sh test $*" >&2
# shellcheck disable=SC2086
exec "$engine" run --rm --network host $ca_mount -v "$work:/src" -w /src \
  -e PIP_CERT=/etc/ssl/certs/ca-certificates.crt -e REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
  "$IMAGE" bash scripts/bootstrap.sh test "$@"
