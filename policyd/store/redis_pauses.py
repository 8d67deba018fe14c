"""The Redis store's pauses: per stream a hash of the latest pause per operator, and a short history.

Keys, in the stream's slot (``redis.py``):

* ``{sendguard:S}:pauses`` (hash): operator ("" = the whole stream) → the latest
  pause for it, in force or ended, as ``since TAB until TAB rule TAB reason``
  (``until`` empty: until resumed);
* ``{sendguard:S}:pausehist`` (list, newest first): pauses that ended and were
  followed by another for the same operator, as ``operator TAB`` and the same
  fields; at most :data:`HISTORY_LENGTH` of them (years of pauses at any sane rate:
  the SQLite store keeps ``PAUSE_HISTORY`` instead).

A pause is written in a ``WATCH``/``MULTI`` transaction rather than a script:
pauses are rare (a stop signal, an operator's command), and the rule for what
replaces what (``store.merge_pause``) is then one piece of Python shared with
the SQLite store. Times are the callers' (an operator's ``--for 2d`` is an
instant on their clock), unlike the windows' server time: a second of skew
between hosts is nothing beside a pause of hours.
"""

from __future__ import annotations

from typing import cast

import redis

from sendguard_policyd.store import Pause, merge_pause

#: Ended pauses kept per stream in the history list.
HISTORY_LENGTH = 1000


def _encode(p: Pause) -> str:
    return "\t".join((repr(p.since), "" if p.until is None else repr(p.until), p.rule, p.reason))


def _decode(stream: str, operator: str, text: str) -> Pause:
    since, until, rule, reason = text.split("\t", 3)
    return Pause(stream, operator, float(since), float(until) if until else None, reason, rule)


def put_pause(client: redis.Redis, key: str, history: str, new: Pause) -> None:
    """Put ``new`` in force in the stream's ``key`` hash (see ``merge_pause``), atomically."""

    def change(pipe: redis.client.Pipeline) -> None:
        raw = cast(str | None, pipe.hget(key, new.operator))
        latest = _decode(new.stream, new.operator, raw) if raw is not None else None
        current = latest if latest is not None and latest.active(new.since) else None
        merged = merge_pause(current, new)
        pipe.multi()
        if merged is None:
            return
        if latest is not None and current is None:  # the one it follows has ended: history
            pipe.lpush(history, f"{new.operator}\t{raw}")
            pipe.ltrim(history, 0, HISTORY_LENGTH - 1)
        pipe.hset(key, new.operator, _encode(merged))

    client.transaction(change, key)


def end_pause(client: redis.Redis, key: str, stream: str, operator: str, now: float) -> bool:
    """End the pause in force for ``operator`` at ``now``; True when there was one."""
    ended = False

    def change(pipe: redis.client.Pipeline) -> None:
        nonlocal ended
        raw = cast(str | None, pipe.hget(key, operator))
        latest = _decode(stream, operator, raw) if raw is not None else None
        ended = latest is not None and latest.active(now)
        pipe.multi()
        if latest is not None and ended:
            pipe.hset(key, operator, _encode(Pause(stream, operator, latest.since, now, latest.reason, latest.rule)))

    client.transaction(change, key)
    return ended


def read_latest(client: redis.Redis, keys: list[tuple[str, str]]) -> list[Pause]:
    """The latest pause per operator of each (stream, pauses key), in force or ended."""
    pipe = client.pipeline(transaction=False)
    for _, key in keys:
        pipe.hgetall(key)
    out = []
    for (stream, _), fields in zip(keys, pipe.execute()):
        for operator, text in sorted(cast(dict[str, str], fields).items()):
            out.append(_decode(stream, operator, text))
    return out


def read_history(client: redis.Redis, keys: list[tuple[str, str, str]], since: float) -> list[Pause]:
    """Every pause kept of each (stream, pauses key, history key) that lasted past ``since``, oldest first."""
    latest = read_latest(client, [(stream, key) for stream, key, _ in keys])
    pipe = client.pipeline(transaction=False)
    for _, _, history in keys:
        pipe.lrange(history, 0, -1)
    older = []
    for (stream, _, _), entries in zip(keys, pipe.execute()):
        for entry in cast(list[str], entries):
            operator, text = entry.split("\t", 1)
            older.append(_decode(stream, operator, text))
    kept = [p for p in (*older, *latest) if p.until is None or p.until >= since]
    return sorted(kept, key=lambda p: p.since)
