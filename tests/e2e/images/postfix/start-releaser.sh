#!/bin/sh
# Run `sendguard release` on this Postfix host, as root (postsuper demands it),
# against the counter store the policy daemon in the sendguard container uses.
# Started in the background by assemble-config; everything it prints goes to
# the container's log.
#
# With the SQLite store (the shared /var/lib/sendguard) it waits until the
# policy daemon has made the store: the files are then owned by the daemon's
# user (uid 10001), and root opens them as they are. Were the releaser first,
# root would create the database and its .lock file, and the daemon, which is
# not root, could not write them. (The -wal and -shm files SQLite makes later
# are safe either way: as root, SQLite gives them the database file's owner.)
#
# The suite switches the store mid-run (test 10): it rewrites the config,
# creates $RESTART and stops the releaser, which is then started again with
# the new config. A releaser that stops unasked ends this script, and the
# suite sees "sendguard release exited" in the log.
set -u
CONFIG=${SENDGUARD_CONFIG:-/etc/sendguard/sendguard.toml}
STORE=${SENDGUARD_STORE:-/var/lib/sendguard/policyd.sqlite}
RESTART=${SENDGUARD_RELEASE_RESTART:-/run/sendguard-release.restart}

[ -f "$CONFIG" ] || { echo "start-releaser: no $CONFIG mounted; no releaser" >&2; exit 0; }
while :; do
  kind=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb")).get("policyd", {}).get("store", "sqlite"))' "$CONFIG")
  if [ "$kind" = sqlite ]; then
    echo "start-releaser: waiting for the policy daemon's store $STORE"
    while [ ! -e "$STORE" ] || [ ! -e "$STORE.lock" ]; do
      sleep 0.2
    done
    echo "start-releaser: starting sendguard release on the $kind store (owner: $(stat -c %u:%g "$STORE"))"
  else
    echo "start-releaser: starting sendguard release on the $kind store"
  fi
  /opt/sendguard/bin/sendguard release --config "$CONFIG" 2>&1
  status=$?
  [ -e "$RESTART" ] || break
  rm -f "$RESTART"
  echo "start-releaser: sendguard release stopped (status $status) to be restarted"
done
echo "start-releaser: sendguard release exited with status $status" >&2
