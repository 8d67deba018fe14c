"""The milter on a unix socket Postfix can reach without a global umask: ``[milter] socket_mode``
and ``socket_group`` set on the socket libmilter creates, checked on a real ``sendguard milter``
process, and a bad value stops start-up naming the key."""

from __future__ import annotations

import grp
import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import dkim
from ports import free_port
from sendguard_testing.command import sendguard_command

#: A group every Debian system has (base-passwd), and not root's own: the chown is visible.
GROUP = "mail"


def _unix_config(write_config, path: Path, milter_extra: str) -> Path:
    config = write_config(milter_extra=milter_extra, metrics_port=free_port())
    text = config.read_text()
    listen = next(line for line in text.splitlines() if line.startswith("listen = "))
    config.write_text(text.replace(listen, f'listen = "unix:{path}"'))
    return config


def _start(config: Path, log: Path, path: Path) -> subprocess.Popen:
    # umask 077: whatever the socket ends up with comes from socket_mode, not from the umask.
    fh = open(log, "wb")
    proc = subprocess.Popen(
        [sendguard_command(), "milter", "--config", str(config)], stdout=fh, stderr=subprocess.STDOUT,
        preexec_fn=lambda: os.umask(0o077),
    )  # fmt: skip
    deadline = time.time() + 20
    while time.time() < deadline and proc.poll() is None:
        if f"milter socket {path}:" in log.read_text(errors="replace"):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the milter did not report its socket access:\n{log.read_text()}")


def test_the_socket_gets_its_mode_and_group_and_serves(write_config, tmp_path, milter_client, make_msg, as_sent, test_keys):
    path = tmp_path / "private" / "sendguard-milter"
    path.parent.mkdir()
    # A socket file an earlier run left behind: libmilter replaces it, and the access must be set on
    # the new one, not on this one while it is still there (the new one would keep the umask's 0700).
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    config = _unix_config(write_config, path, f'socket_mode = "0660"\nsocket_group = "{GROUP}"')
    proc = _start(config, tmp_path / "milter.log", path)
    try:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == grp.getgrnam(GROUP).gr_gid
        c = milter_client(str(path))
        c.connect("127.0.0.1", 40010)
        r = c.message(make_msg(), "bounce@send.example.net")
        assert dkim.verify(as_sent(r), dnsfunc=test_keys.dnsfunc)
        c.close()
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0


def test_without_the_keys_the_socket_keeps_the_umask(write_config, tmp_path):
    path = tmp_path / "sendguard-milter"
    config = _unix_config(write_config, path, "")
    fh = open(tmp_path / "milter.log", "wb")
    proc = subprocess.Popen([sendguard_command(), "milter", "--config", str(config)], stdout=fh, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: os.umask(0o077))  # fmt: skip
    try:
        deadline = time.time() + 20
        while not path.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _check_config(write_config, tmp_path, listen: str, milter_extra: str) -> subprocess.CompletedProcess:
    config = write_config(milter_extra=milter_extra)
    text = config.read_text()
    line = next(line for line in text.splitlines() if line.startswith("listen = "))
    config.write_text(text.replace(line, f'listen = "{listen}"'))
    return subprocess.run([sendguard_command(), "milter", "--config", str(config)], capture_output=True, text=True, timeout=30)


def test_an_unknown_group_stops_start_up_naming_the_key(write_config, tmp_path):
    out = _check_config(write_config, tmp_path, f"unix:{tmp_path}/s", 'socket_group = "no-such-group-here"')
    assert out.returncode == 78
    assert "milter.socket_group: no group 'no-such-group-here' on this host" in out.stderr
    assert not (tmp_path / "s").exists()


def test_a_bad_mode_stops_start_up_naming_the_key(write_config, tmp_path):
    out = _check_config(write_config, tmp_path, f"unix:{tmp_path}/s", 'socket_mode = "rw-rw----"')
    assert out.returncode == 78
    assert "milter.socket_mode: 'rw-rw----' is not an octal file mode" in out.stderr


def test_socket_keys_with_a_tcp_listener_are_refused(write_config, tmp_path):
    out = _check_config(write_config, tmp_path, "inet:127.0.0.1:8891", 'socket_mode = "0660"')
    assert out.returncode == 78
    assert "milter.socket_mode: applies only to a unix socket" in out.stderr
