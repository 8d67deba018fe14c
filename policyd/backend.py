"""Which counter store the policy daemon uses: the one place an implementation is picked.

SQLite is the only implementation so far (``store/sqlite.py``); the decision
and ``sendguard status`` see only the interface in ``store/__init__.py``, so
another store (Redis, shared by several Postfix hosts) is one more branch here.
"""

from __future__ import annotations

from sendguard_policyd.settings import PolicydSettings
from sendguard_policyd.store import CounterStore, StoreReader
from sendguard_policyd.store.sqlite import SQLiteCounterStore
from sendguard_policyd.store.sqlite_reader import SQLiteReader


def open_store(settings: PolicydSettings) -> CounterStore:
    """The store the daemon counts in (created when absent); :class:`StoreError` if it cannot be opened."""
    return SQLiteCounterStore(settings.database, settings.sqlite_synchronous)


def open_reader(path: str) -> StoreReader:
    """The store at ``path``, for reading only (``sendguard status``): it never creates nor changes the file."""
    return SQLiteReader(path)
