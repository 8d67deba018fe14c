"""`sendguard status`: read from the store file, whether or not a daemon runs."""

from __future__ import annotations

import datetime as dt
import time

from sendguard_policyd import status
from sendguard_policyd.store.sqlite import SQLiteCounterStore


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
