"""KeyStore: keys swap atomically on reload, a bad new file keeps the old key, changed files are noticed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from sendguard_milter.keys import KeyLoadError, KeySpec, KeyStore, load_key


def spec(path: Path) -> KeySpec:
    return KeySpec(name="send", domain="send.example.net", selector="send", key_file=path)


def test_start_up_fails_on_a_bad_key(tmp_path, write_key):
    write_key(tmp_path / "k", mode=0o640)  # group-readable is fine (a sendguard group)
    assert load_key(spec(tmp_path / "k")).bits == 2048
    os.chmod(tmp_path / "k", 0o604)
    with pytest.raises(KeyLoadError, match="world-readable"):
        KeyStore([spec(tmp_path / "k")])


def test_encrypted_key_is_refused(tmp_path, write_key):
    from cryptography.hazmat.primitives import serialization

    key = write_key(tmp_path / "plain")
    (tmp_path / "k").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw"))
    )
    os.chmod(tmp_path / "k", 0o600)
    with pytest.raises(KeyLoadError, match="encrypted"):
        load_key(spec(tmp_path / "k"))


def test_reload_keeps_the_old_key_when_the_new_file_is_bad(tmp_path, write_key):
    seen = []
    write_key(tmp_path / "k")
    store = KeyStore([spec(tmp_path / "k")], observer=lambda name, result: seen.append((name, result)))
    old = store.get("send")
    (tmp_path / "k").write_text("half-written")
    assert store.reload() == {"send": "failed"}
    assert store.get("send") is old
    new = write_key(tmp_path / "k")
    assert store.reload() == {"send": "ok"}
    assert store.get("send").private_key.private_numbers() == new.private_numbers()
    assert seen == [("send", "failed"), ("send", "ok")]


def test_only_changed_files_are_reloaded_and_the_watcher_notices(tmp_path, write_key):
    write_key(tmp_path / "k")
    store = KeyStore([spec(tmp_path / "k")])
    assert store.reload(only_changed=True) == {}
    store.watch(0.05)
    try:
        new = write_key(tmp_path / "k2")
        os.replace(tmp_path / "k2", tmp_path / "k")
        deadline = time.time() + 5
        while time.time() < deadline and store.get("send").private_key.private_numbers() != new.private_numbers():
            time.sleep(0.02)
        assert store.get("send").private_key.private_numbers() == new.private_numbers()
    finally:
        store.stop()


def test_a_key_the_service_user_cannot_read_stops_start_up_with_the_reason(write_key):
    # The tests run as root, and root reads every file: the check runs in a child that has
    # given up root for nobody (uid/gid 65534), as the milter would run as a service user.
    import tempfile

    keydir = Path(tempfile.mkdtemp(prefix="sendguard-keys-"))
    try:
        os.chmod(keydir, 0o755)  # the directory is open; the key itself is root's, mode 0600
        write_key(keydir / "k", mode=0o600)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: drop root, try to load the key, report what happened
            try:
                os.close(read_end)
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                try:
                    KeyStore([spec(keydir / "k")])
                    result = "loaded"
                except KeyLoadError as exc:
                    result = str(exc)
                os.write(write_end, result.encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            result = pipe.read().decode()
        os.waitpid(pid, 0)
        assert result == f"key file {keydir / 'k'} is not readable by this user (uid 65534)"
        assert load_key(spec(keydir / "k")).bits == 2048  # root (its owner) still reads it
    finally:
        for path in keydir.iterdir():
            path.unlink()
        keydir.rmdir()
