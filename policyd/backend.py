"""Which counter store the policy daemon uses: the one place an implementation is picked.

SQLite is the only implementation so far (``store/sqlite.py``); the decision
and ``sendguard status`` see only the interface in ``store/__init__.py``, so
another store (Redis, shared by several Postfix hosts) is one more branch here.
"""

from __future__ import annotations

from sendguard_policyd.settings import PolicydSettings
from sendguard_policyd.store import CounterStore, StoreReader, Windows
from sendguard_policyd.store.sqlite import SQLiteCounterStore
from sendguard_policyd.store.sqlite_reader import SQLiteReader


def store_windows(settings: PolicydSettings) -> Windows:
    """The windows' lengths: an hour and a day, unless ``test_window_seconds`` shortens them."""
    return Windows.scaled(settings.test_window_seconds) if settings.test_window_seconds else Windows()


def open_store(settings: PolicydSettings) -> CounterStore:
    """The store the daemon counts in (created when absent); :class:`StoreError` if it cannot be opened."""
    return SQLiteCounterStore(settings.database, settings.sqlite_synchronous, store_windows(settings))


def open_reader(path: str, windows: Windows = Windows()) -> StoreReader:
    """The store at ``path``, for reading only (``sendguard status``): it never creates nor changes the file."""
    return SQLiteReader(path, windows)
