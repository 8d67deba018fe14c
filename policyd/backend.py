"""Which counter store the policy daemon uses: the one place an implementation is picked.

``[policyd] store`` picks it: SQLite (``store/sqlite.py``, one file on one host)
or Redis (``store/redis.py``, one budget shared by the daemons of several
hosts). The decision and ``sendguard status`` see only the interface in
``store/__init__.py``.
"""

from __future__ import annotations

from sendguard_policyd.settings import PolicydSettings
from sendguard_policyd.store import CounterStore, StoreReader, Windows
from sendguard_policyd.store.redis import RedisCounterStore
from sendguard_policyd.store.sqlite import SQLiteCounterStore
from sendguard_policyd.store.sqlite_reader import SQLiteReader


def store_windows(settings: PolicydSettings) -> Windows:
    """The windows' lengths: an hour and a day, unless ``test_window_seconds`` shortens them."""
    return Windows.scaled(settings.test_window_seconds) if settings.test_window_seconds else Windows()


def open_store(settings: PolicydSettings) -> CounterStore:
    """The store the daemon counts in (created when absent); :class:`StoreError` if it cannot be opened.

    A Redis store opens without reaching Redis: until Redis answers, every call is a StoreError."""
    windows = store_windows(settings)
    if settings.store == "redis":
        return _redis(settings, windows)
    return SQLiteCounterStore(settings.database, settings.sqlite_synchronous, windows)


def open_reader(settings: PolicydSettings) -> StoreReader:
    """The store, for reading only (``sendguard status``): it never creates nor changes a SQLite file."""
    windows = store_windows(settings)
    if settings.store == "redis":
        return _redis(settings, windows)
    return SQLiteReader(settings.database, windows)


def store_label(settings: PolicydSettings) -> str:
    """Where the counters are, for logs and status: the SQLite file or the Redis URL."""
    return settings.redis_url if settings.store == "redis" else settings.database


def store_key(settings: PolicydSettings) -> str:
    """The config key an error opening the store is reported under."""
    return "policyd.redis_url" if settings.store == "redis" else "policyd.database"


def _redis(settings: PolicydSettings, windows: Windows) -> RedisCounterStore:
    return RedisCounterStore(
        settings.redis_url, settings.redis_password, settings.redis_timeout, windows, settings.redis_host_name
    )
