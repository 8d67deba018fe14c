"""Talking to Redis for the store: one client, short timeouts, every failure one :class:`StoreError` line.

redis-py keeps a pool of connections and reconnects by itself; what this adds:

* every Redis failure becomes a :class:`StoreError` naming the server and the cause
  in one line (the decision answers it with its store-error deferral);
* one immediate retry on a dropped connection (a Redis restart leaves the pooled
  connections dead: the first command after it must not fail for that), none on a
  timeout (a slow Redis would only be asked to be slow twice);
* after a connection failure or a timeout, calls fail at once for
  :data:`DOWN_SECONDS`: the daemon answers on one thread, and a Redis that hangs
  would otherwise cost every queued request the whole timeout in turn;
* the scripts are loaded once and called by SHA (``EVALSHA``); redis-py's
  ``Script`` loads one again when the server answers ``NOSCRIPT`` (its script
  cache is empty after a restart or a failover).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Sequence, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from sendguard_policyd.store import StoreError

T = TypeVar("T")

#: After a connection failure or a timeout, how long calls fail without trying Redis.
DOWN_SECONDS = 1.0

ScriptArg = str | int | float


class RedisConnection:
    """One Redis server (or Sentinel-less primary) reached through ``url``, with the store's scripts."""

    def __init__(self, url: str, password: str, timeout: float, scripts: dict[str, str]) -> None:
        self.label = url
        self.client: redis.Redis = redis.Redis.from_url(
            url,
            password=password or None,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            decode_responses=True,
            # A queue id or instance that is not UTF-8 (kept as surrogate escapes by protocol.py) goes
            # to Redis as the very bytes Postfix sent, and comes back as the same string.
            encoding_errors="surrogateescape",
            client_name="sendguard-policyd",
        )
        self._scripts: dict[str, Script] = {name: self.client.register_script(src) for name, src in scripts.items()}
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._down_reason = ""
        #: Called after each connection failure (the store forgets what it registered there).
        self.on_down: Callable[[], None] = lambda: None

    def call(self, action: Callable[[redis.Redis], T]) -> T:
        """Run ``action`` on the client; any Redis failure is a :class:`StoreError`."""
        with self._lock:
            wait = self._down_until - time.monotonic()
            reason = self._down_reason
        if wait > 0:
            raise StoreError(f"counter store {self.label}: unavailable ({reason}); next try in {wait:.1f} s")
        try:
            return action(self.client)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            line = _one_line(exc)
            with self._lock:
                self._down_until = time.monotonic() + DOWN_SECONDS
                self._down_reason = line
            self.on_down()
            raise StoreError(f"counter store {self.label}: {line}") from None
        except redis.RedisError as exc:
            raise StoreError(f"counter store {self.label}: {_one_line(exc)}") from None

    def script(self, name: str, keys: Sequence[str], args: Sequence[ScriptArg]) -> object:
        """Run one of the store's scripts (by SHA; loaded again if the server lost it)."""
        script = self._scripts[name]
        return self.call(lambda client: script(keys=list(keys), args=list(args), client=client))

    def close(self) -> None:
        """Close the pool's connections."""
        self.client.close()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no detail"
    return f"{type(exc).__name__}: {text}"
