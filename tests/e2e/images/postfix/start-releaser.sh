#!/bin/sh
# Run `sendguard release` on this Postfix host, as root (postsuper demands it),
# against the counter store the policy daemon in the sendguard container keeps
# in the shared /var/lib/sendguard. Started in the background by assemble-config;
# everything it prints goes to the container's log.
#
# It waits until the policy daemon has made the store: the files are then owned
# by the daemon's user (uid 10001), and root opens them as they are. Were the
# releaser first, root would create the database and its .lock file, and the
# daemon, which is not root, could not write them. (The -wal and -shm files
# SQLite makes later are safe either way: as root, SQLite gives them the
# database file's owner.)
set -u
CONFIG=${SENDGUARD_CONFIG:-/etc/sendguard/sendguard.toml}
STORE=${SENDGUARD_STORE:-/var/lib/sendguard/policyd.sqlite}

[ -f "$CONFIG" ] || { echo "start-releaser: no $CONFIG mounted; no releaser" >&2; exit 0; }
echo "start-releaser: waiting for the policy daemon's store $STORE"
while [ ! -e "$STORE" ] || [ ! -e "$STORE.lock" ]; do
  sleep 0.2
done
echo "start-releaser: starting sendguard release (owner of the store: $(stat -c %u:%g "$STORE"))"
/opt/sendguard/bin/sendguard release --config "$CONFIG" 2>&1
echo "start-releaser: sendguard release exited with status $?" >&2
