#!/bin/sh
# Build main.cf and master.cf from Debian's defaults, the test-only lines and
# the snippets a user pastes (postfix-snippets/, mounted at /snippets), start
# sendguard's releaser in the background, then run Postfix in the foreground.
#   *master.cf snippets are master.cf lines, appended to Debian's master.cf,
#   then test-master.cf; every other *.cf snippet holds main.cf lines,
#   appended after test-main.cf.
set -eu
SNIPPETS=${SNIPPETS:-/snippets}

{
  echo "# Assembled at container start by assemble-config (see tests/e2e/images/postfix)."
  echo "# --- test-main.cf"
  cat /etc/postfix/test-main.cf
  for f in "$SNIPPETS"/*.cf; do
    [ -e "$f" ] || continue
    case "$f" in *master.cf) continue ;; esac
    echo
    echo "# --- snippet $(basename "$f")"
    cat "$f"
  done
} > /etc/postfix/main.cf

cp /usr/share/postfix/master.cf.dist /etc/postfix/master.cf
for f in "$SNIPPETS"/*master.cf; do
  [ -e "$f" ] || continue
  { echo; echo "# --- snippet $(basename "$f")"; cat "$f"; } >> /etc/postfix/master.cf
done
{ echo; echo "# --- test-master.cf"; cat /etc/postfix/test-master.cf; } >> /etc/postfix/master.cf

# A setting given twice means a snippet fights another snippet or the test
# file: the last one would silently win, so refuse to start instead.
dups=$(grep -E '^[a-z_0-9]+[[:space:]]*=' /etc/postfix/main.cf | sed 's/[[:space:]]*=.*//' | sort | uniq -d)
if [ -n "$dups" ]; then
  echo "assemble-config: main.cf sets these more than once: $dups" >&2
  exit 1
fi

# Debian's start script normally copies these into the chroot.
mkdir -p /var/spool/postfix/etc
for f in /etc/resolv.conf /etc/services /etc/localtime /etc/nsswitch.conf; do
  [ -e "$f" ] && cp "$f" /var/spool/postfix/etc/ || true
done

postfix set-permissions >/dev/null 2>&1 || true
postfix check
echo "assemble-config: postconf -n:"; postconf -n
echo "assemble-config: services:"; postconf -M
# The releaser shares this container's stdout (the container log). Started
# before Postfix and in the background: it waits for the store by itself, and
# it must not hold Postfix back nor outlive it (the container ends with Postfix).
/usr/local/sbin/start-releaser &
# postlogd would create the log 0600 (Postfix 3.7 has no maillog_file_permissions): made
# first, readable by the watcher's user in the sendguard container, as adm can read mail.log.
maillog=$(postconf -hx maillog_file)
[ -e "$maillog" ] || install -m 0644 /dev/null "$maillog"
exec postfix "$@"
