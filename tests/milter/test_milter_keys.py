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


def test_world_writable_key_is_refused_and_the_message_says_how_to_fix_it(tmp_path, write_key):
    write_key(tmp_path / "k", mode=0o602)
    with pytest.raises(KeyLoadError) as err:
        load_key(spec(tmp_path / "k"))
    assert str(err.value) == f"key file {tmp_path / 'k'} is world-writable (mode 0602); chmod o-rwx {tmp_path / 'k'}"
    os.chmod(tmp_path / "k", 0o660)  # group-writable stays allowed (a sendguard group)
    assert load_key(spec(tmp_path / "k")).bits == 2048


@pytest.mark.parametrize("mode", [0o777, 0o773, 0o707])
def test_key_in_a_world_writable_directory_is_refused(tmp_path, write_key, mode):
    keydir = tmp_path / "a" / "b"
    keydir.mkdir(parents=True)
    write_key(keydir / "k")
    os.chmod(tmp_path / "a", mode)  # any directory above the key counts, not only its own
    with pytest.raises(KeyLoadError, match=f"inside the world-writable directory {tmp_path / 'a'} .mode {mode:04o}.*; chmod o-w {tmp_path / 'a'}$"):
        load_key(spec(keydir / "k"))


def test_a_sticky_world_writable_directory_is_safe(tmp_path, write_key):
    # In a sticky directory (/tmp) only the owner of an entry may rename or remove it.
    keydir = tmp_path / "keys"
    keydir.mkdir()
    write_key(keydir / "k")
    os.chmod(keydir, 0o1777)
    assert load_key(spec(keydir / "k")).bits == 2048


def test_a_symlink_is_judged_on_both_paths(tmp_path, write_key):
    safe, open_dir = tmp_path / "safe", tmp_path / "open"
    safe.mkdir(mode=0o700)
    open_dir.mkdir()
    write_key(safe / "k")
    os.chmod(open_dir, 0o777)
    (open_dir / "link").symlink_to(safe / "k")  # anyone could point the link elsewhere
    with pytest.raises(KeyLoadError, match=f"world-writable directory {open_dir} "):
        load_key(spec(open_dir / "link"))
    (safe / "link").symlink_to(open_dir / "k2")
    write_key(open_dir / "k2")  # the link is safe, what it points to is not
    with pytest.raises(KeyLoadError, match=f"world-writable directory {open_dir} "):
        load_key(spec(safe / "link"))


def test_a_key_loosened_after_start_up_is_not_loaded_and_the_old_one_stays(tmp_path, write_key):
    keydir = tmp_path / "keys"
    keydir.mkdir()
    write_key(keydir / "k")
    store = KeyStore([spec(keydir / "k")])
    old = store.get("send")
    write_key(keydir / "k", mode=0o602)
    assert store.reload() == {"send": "failed"}
    assert store.get("send") is old
    os.chmod(keydir / "k", 0o600)
    os.chmod(keydir, 0o777)
    assert store.reload() == {"send": "failed"}
    assert store.get("send") is old


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


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_persistent_fault_is_logged_when_it_starts_as_a_reminder_and_when_it_ends(tmp_path, write_key, caplog):
    clock = Clock()
    write_key(tmp_path / "k")
    store = KeyStore([spec(tmp_path / "k")], clock=clock, reminder=600)
    (tmp_path / "k").unlink()  # the key keeps signing from memory; the file is gone
    caplog.set_level("DEBUG", logger="sendguard.milter")

    def lines() -> list[str]:
        out = [r.getMessage() for r in caplog.records if r.name == "sendguard.milter"]
        caplog.clear()
        return out

    results = []
    for _ in range(59):  # ten minutes of checks every ten seconds, less one
        results.append(store.reload(only_changed=True))
        clock.now += 10
    assert results == [{"send": "failed"}] * 59  # every check still looks (and counts)
    assert lines() == [f"key send: reload failed, keeping the key loaded before: key file {tmp_path / 'k'} does not exist"]
    assert store.faults() == {"send": f"key file {tmp_path / 'k'} does not exist"}

    clock.now += 10  # 600 s after the fault started: one reminder, then quiet again
    store.reload(only_changed=True)
    store.reload(only_changed=True)
    assert lines() == [f"key send: still failing after 600 s (60 checks), keeping the key loaded before: key file {tmp_path / 'k'} does not exist"]

    store.reload()  # SIGHUP: the operator asked, so the answer is logged whatever the reminder says
    assert lines() == [f"key send: still failing after 600 s (62 checks), keeping the key loaded before: key file {tmp_path / 'k'} does not exist"]

    (tmp_path / "k").write_text("half-written")  # another fault: logged at once
    os.chmod(tmp_path / "k", 0o600)
    store.reload(only_changed=True)
    assert lines() == [f"key send: reload failed, keeping the key loaded before: key file {tmp_path / 'k'} does not hold a PEM private key (ValueError)"]

    clock.now += 30
    write_key(tmp_path / "k")
    assert store.reload(only_changed=True) == {"send": "ok"}
    assert lines() == [
        f"key send: fault cleared after 30 s (1 failed checks): key file {tmp_path / 'k'} does not hold a PEM private key (ValueError)",
        f"key send: reloaded {tmp_path / 'k'} (2048 bits, d=send.example.net s=send)",
    ]
    assert store.faults() == {}
    assert store.reload(only_changed=True) == {}  # healthy and unchanged: nothing to do, nothing logged
    assert lines() == []


def test_a_fault_is_exported_while_it_lasts(tmp_path, write_key):
    from prometheus_client import REGISTRY

    from sendguard_milter.metrics import count_reload

    write_key(tmp_path / "k")
    store = KeyStore([KeySpec("faulty", "send.example.net", "send", tmp_path / "k")], observer=count_reload)
    (tmp_path / "k").unlink()
    store.reload(only_changed=True)
    assert REGISTRY.get_sample_value("sendguard_milter_key_faulty", {"key": "faulty"}) == 1
    write_key(tmp_path / "k")
    store.reload(only_changed=True)
    assert REGISTRY.get_sample_value("sendguard_milter_key_faulty", {"key": "faulty"}) == 0
