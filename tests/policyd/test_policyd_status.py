"""`sendguard status`: read from the store file, whether or not a daemon runs."""

from __future__ import annotations

import datetime as dt
import subprocess
import time

from sendguard_policyd import status
from sendguard_policyd.store.sqlite import SQLiteCounterStore
from sendguard_testing.command import sendguard_command
from sendguard_testing.policyd_processes import write_policyd_config


def streams(tmp_path):
    stamp = tmp_path / "healthcare.start"
    stamp.write_text(f"{int(time.time() - 5.5 * 86400)}\n")  # warmup day 5: 600/h
    return {
        "trucking": {
            "match": {"server_port": [25]},
            "ramp": [[0, 50], [2, 150], [4, 250], [7, 300]],
            "daily_cap": 4000,
            "start_date": dt.datetime.fromtimestamp(time.time() - 3.2 * 86400, dt.timezone.utc),
        },
        "healthcare": {
            "match": {"server_port": [2526]},
            "ramp": [[0, 100], [2, 300], [5, 600], [10, 1000]],
            "daily_cap": 10000,
            "start_file": str(stamp),
        },
    }


def test_status_without_a_store_yet(make_config, tmp_path):
    settings = make_config(streams(tmp_path))
    text = status.render(settings.config, settings.policyd)
    assert "(absent: nothing counted yet)" in text
    assert "stream trucking:" in text and "warmup day      3" in text
    assert "cap in force    150/rolling hour, 4000/rolling 24 h" in text
    assert "stream healthcare:" in text and "cap in force    600/rolling hour, 10000/rolling 24 h" in text


def test_status_reads_counts_written_by_another_store(make_config, tmp_path):
    config = make_config(streams(tmp_path))
    store = SQLiteCounterStore(config.policyd.database)
    now = time.time()
    store.admit("trucking", "a", 4, now - 7200, 150, 4000)  # in the day, out of the hour
    store.admit("trucking", "b", 2, now - 60, 150, 4000)
    store.admit("healthcare", "c", 1, now - 10, 600, 10000)
    store.mark_family_hold("d", "trucking", now - 5, "QD", "yahoo.*")
    store.close()
    text = status.render(config.config, config.policyd, now)
    trucking = text.split("stream trucking:")[1].split("stream healthcare:")[0]
    assert "rolling hour    2 of 150" in trucking
    assert "rolling day     6 of 4000" in trucking
    assert "family holds    1 message(s) in the last 24 h" in trucking
    assert "rolling hour    1 of 600" in text.split("stream healthcare:")[1]


def test_status_of_a_store_with_another_schema_names_the_versions(make_config, tmp_path):
    import sqlite3

    config = make_config(streams(tmp_path))
    SQLiteCounterStore(config.policyd.database).close()
    conn = sqlite3.connect(config.policyd.database, isolation_level=None)
    conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    conn.close()
    text = status.render(config.config, config.policyd)
    assert f"cannot read the store: counter store {config.policyd.database}: schema version 4 found, version 3 expected" in text
    assert "cap in force    150/rolling hour, 4000/rolling 24 h" in text  # the caps are still shown


# -- `sendguard status` as an operator runs it, under faults --------------------------------------


def status_command(config) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sendguard_command(), "status", "--config", str(config)], capture_output=True, text=True, timeout=30
    )


def stamped_config(tmp_path, database: str = ""):
    stamp = tmp_path / "trucking.start"
    stamp.write_text(f"{int(time.time() - 2.5 * 86400)}\n")
    streams = f"""[streams.trucking]
ramp = [[0, 50], [2, 150]]
start_file = "{stamp}"

[streams.trucking.match]
server_port = [25]
"""
    config, _ = write_policyd_config(tmp_path, "s", f'database = "{database or tmp_path / "policyd.sqlite"}"', streams)
    return config, stamp


def test_status_reports_a_junk_stamp_the_daemon_tolerates_instead_of_a_config_error(tmp_path):
    config, stamp = stamped_config(tmp_path)
    SQLiteCounterStore(str(tmp_path / "policyd.sqlite")).admit("trucking", "a", 3, time.time(), 150, None)
    stamp.write_text("junk\n")  # the running daemon warns and keeps the start it read last
    result = status_command(config)
    assert result.returncode == status.EXIT_STAMP_UNREADABLE == 1, result.stderr
    assert f"start stamp     stamp file {stamp} does not hold a Unix epoch: 'junk'" in result.stdout
    assert "keeps the start it read last" in result.stdout
    assert "cap in force    unknown/rolling hour" in result.stdout
    assert "rolling hour    3 of unknown" in result.stdout  # the counts are known and shown


def test_status_that_cannot_read_the_store_says_unknown_and_exits_69(tmp_path):
    config, _ = stamped_config(tmp_path)
    (tmp_path / "policyd.sqlite").write_bytes(b"this is not a SQLite file" * 100)
    result = status_command(config)
    assert result.returncode == status.EXIT_STORE_UNREADABLE == 69, result.stdout
    assert "cannot read the store" in result.stdout
    assert "rolling hour    unknown of 150" in result.stdout and " 0 of " not in result.stdout


def test_a_store_path_that_is_a_directory_is_named_as_such(tmp_path):
    (tmp_path / "policyd.sqlite").mkdir()
    config, _ = stamped_config(tmp_path)
    result = status_command(config)
    assert result.returncode == 69
    assert "unable to open database file: the path is a directory, not a file" in result.stdout
    daemon = subprocess.run([sendguard_command(), "policyd", "--config", str(config)], capture_output=True, text=True,
                            timeout=30)  # fmt: skip
    assert daemon.returncode == 78
    assert "policyd.database:" in daemon.stderr and "the path is a directory, not a file" in daemon.stderr


def test_a_store_directory_the_user_cannot_write_is_named_as_such(tmp_path, monkeypatch):
    # A unit test of the one function: the suite runs as root, for whom every directory is writable.
    import sqlite3

    from sendguard_policyd.store import sqlite_schema

    state = tmp_path / "state"
    state.mkdir()
    path = str(state / "policyd.sqlite")
    monkeypatch.setattr(sqlite_schema.os, "access", lambda p, mode: p != str(state))
    monkeypatch.setattr(sqlite_schema.os, "geteuid", lambda: 65534)
    why = sqlite_schema.why_unopenable(path, sqlite3.OperationalError("unable to open database file"))
    assert why == f": its directory {state} is not writable by this user (uid 65534); SQLite creates the -wal and -shm files there"
    assert sqlite_schema.why_unopenable(path, sqlite3.OperationalError("disk I/O error")) == ""
