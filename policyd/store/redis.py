"""The Redis counter store: one per-stream budget shared by the daemons of several Postfix hosts.

Every write is one Lua script (``redis_scripts.py``), run atomically by the
server: the check-and-add of :meth:`RedisCounterStore.admit`, the family mark,
the hold record, the release claim and its finish. Pauses, rare, are one
``WATCH``/``MULTI`` transaction each (``redis_pauses.py``). Two daemons on two hosts
therefore never push a window over its cap together, exactly as two processes
on one SQLite file do not.

Keys. Everything of stream ``S`` carries the hash tag ``{sendguard:S}``, so it
lives in one cluster slot and every script touches one slot only:

* ``{sendguard:S}:sec`` (sorted set): each second that counted recipients, score = the second;
* ``{sendguard:S}:cum`` (sorted set): member = such a second, score = the stream's
  running total at its end;
* ``{sendguard:S}:meta`` (hash): ``floor``, the running total before the oldest second kept;
* ``{sendguard:S}:m:INSTANCE`` (hash): one message's record (state, recipients, at, queue id);
* ``{sendguard:S}:held`` (sorted set, instance by hold time), ``:heldrec`` (hash, instance →
  state, queue id, recipients, host) and ``:heldq`` (hash, ``QUEUEID@HOST`` → instance): the
  held backlog. Held mail sits in one host's hold queue, so each record names that host
  (``redis_host_name``) and a host's releaser lists and releases its own only;
* ``{sendguard:S}:fam`` / ``:famn``: family holds per second (status shows the last day);
* ``{sendguard:S}:sent`` (hash, ramp day ``YYYY-MM-DD`` → deliveries sent), ``:paused`` (set of
  ramp days the stream was paused during) and ``:stepbacks`` (list of ``AT<tab>DAYS<tab>RULE``): the
  ramp history the warmup day follows. Single commands (``HINCRBY``, ``SADD``, ``RPUSH``), atomic
  as they are; they never expire, and the step-backs' times are the caller's (they are compared
  with the warmup's day boundaries, which are the daemon's).
* ``{sendguard:S}:pauses`` / ``:pausehist``: the stream's pauses (``redis_pauses.py``).
* ``{sendguard:S}:q:QUEUEID@HOST`` (string): "this host's queue id is in stream S", written
  when a message is counted, marked for the family or released, kept as long as a counted
  record (a day): what the watcher's ``stream_of`` reads (with ``heldq`` for held mail).

One key stands outside any stream, ``sendguard:streams`` (a set of the stream names
written to): the calls that name no stream (``message_state``, ``held_backlog``,
``family_holds``, and finding a queue id's stream) read it first.

The windows are exact at one-second resolution: a window's count is the stream's
running total minus the running total at the end of the last second before the
window, so no bucket ever lets a cap through twice across a boundary; a window at
second ``t`` holds the seconds ``t - span`` to ``t`` (it may over-count by the
rest of one second, never under-count). Seconds older than the day are trimmed
by each count, so a stream keeps at most one entry per second of the day in two
sorted sets whatever its volume; a refused message writes nothing. The window
keys expire a day after the stream's last count, counted records a day after
they were written, family-hold records an hour after (they are read at the
message's END-OF-MESSAGE, minutes later at most), finished hold records a day
after they finish; held ones wait as long as Postfix holds the mail.

Time is the Redis server's (``TIME`` inside each script), so hosts whose clocks
disagree still share one window. The ``now`` arguments are therefore advisory:
only ``room_at`` is given back on the caller's clock (the server's answer
shifted by the difference between ``now`` and the server's time), because the
decision writes it as "in N seconds". Hold times (``HeldMessage.at``,
``Backlog.oldest_at``) are the server's.
"""

from __future__ import annotations

import datetime as dt
import socket
import uuid
from typing import Callable, Collection, cast
import redis

from sendguard_policyd.store import (
    HOLD_OVER_CAP,
    HOLD_PAUSE,
    NOT_HELD,
    STATE_GONE,
    STATE_RELEASED,
    Admission,
    Backlog,
    HeldMessage,
    RampHistory,
    StepBack,
    StoreError,
    Pause,
    Windows,
    WindowCounts,
    operators_of_text,
    operators_text,
)
from sendguard_policyd.store import redis_pauses
from sendguard_policyd.store import redis_scripts as lua
from sendguard_policyd.store.redis_conn import RedisConnection

#: The set of stream names written to (outside any stream's slot).
STREAMS_KEY = "sendguard:streams"

#: Seconds a key outlives what it holds (clock steps, a script running at the boundary).
MARGIN = 60

_SCRIPTS = {
    "admit": lua.ADMIT,
    "windows": lua.WINDOWS,
    "family_hold": lua.FAMILY_HOLD,
    "family_count": lua.FAMILY_COUNT,
    "record_hold": lua.RECORD_HOLD,
    "claim_release": lua.CLAIM_RELEASE,
    "finish_release": lua.FINISH_RELEASE,
}


class StreamKeys:
    """The keys of one stream, all in the slot of its hash tag."""

    def __init__(self, stream: str) -> None:
        self.tag = f"{{sendguard:{stream}}}"
        self.window = [f"{self.tag}:sec", f"{self.tag}:cum", f"{self.tag}:meta"]
        self.held = f"{self.tag}:held"
        self.heldrec = f"{self.tag}:heldrec"
        self.heldq = f"{self.tag}:heldq"
        self.family = [f"{self.tag}:fam", f"{self.tag}:famn"]
        self.sent = f"{self.tag}:sent"
        self.paused = f"{self.tag}:paused"
        self.step_backs = f"{self.tag}:stepbacks"
        self.pauses = f"{self.tag}:pauses"
        self.pause_history = f"{self.tag}:pausehist"

    def record(self, instance: str) -> str:
        """The key of one message's record."""
        return f"{self.tag}:m:{instance}"

    def queued(self, field: str) -> str:
        """The key marking one host's queue id (``QUEUEID@HOST``) as this stream's."""
        return f"{self.tag}:q:{field}"


def _cap(value: int | None) -> str:
    return "" if value is None else str(value)


class RedisCounterStore:
    """The :class:`~sendguard_policyd.store.CounterStore` in Redis; also the reader of ``sendguard status``.

    Safe from any thread (redis-py's pool hands each call its own connection). Opening
    does not need Redis to be up: a daemon started before its Redis answers store-error
    deferrals until Redis answers.
    """

    def __init__(
        self, url: str, password: str = "", timeout: float = 0.5, windows: Windows = Windows(), host: str = ""
    ) -> None:
        self.url = url
        #: The Postfix host this daemon holds mail on (``redis_host_name``; default the host name).
        self.host = host or socket.gethostname()
        self._spans = windows
        self._conn = RedisConnection(url, password, timeout, _SCRIPTS)
        self._conn.on_down = self._forget_registered
        # Streams this client added to STREAMS_KEY: one SADD per stream, not one per message.
        # Forgotten on a connection failure, since a Redis that restarted empty forgot them too.
        self._registered: set[str] = set()
        # queue id -> (stream, instance) of the held messages listed by held_messages().
        self._held_index: dict[str, tuple[str, str]] = {}
        self._window_ttl = windows.day + MARGIN
        self._record_ttl = windows.day + MARGIN
        self._family_ttl = windows.hour + MARGIN

    # -- the atomic writes ---------------------------------------------------------------------

    def admit(
        self,
        stream: str,
        instance: str,
        recipients: int,
        now: float,
        hourly_cap: int | None,
        daily_cap: int | None,
        queue_id: str = "",
    ) -> Admission:
        """Check both windows and count the message if it fits, in one server-side step."""
        # Without an instance there is nothing to deduplicate on, but the count still needs a record.
        instance = instance or f"no-instance:{uuid.uuid4().hex}"
        keys = StreamKeys(stream)
        self._register(stream)
        w = self._spans
        reply = self._conn.script(
            "admit",
            [*keys.window, keys.record(instance), keys.queued(self._held_field(queue_id))],
            [recipients, _cap(hourly_cap), _cap(daily_cap), w.hour, w.day, self._window_ttl, self._record_ttl, queue_id],
        )
        return _admission(reply, now)

    def mark_family_hold(self, instance: str, stream: str, now: float, queue_id: str, rule: str) -> bool:
        """Record the family hold of a message; True when this is its first mark."""
        if not instance:
            return True
        keys = StreamKeys(stream)
        self._register(stream)
        first = self._conn.script(
            "family_hold",
            [keys.record(instance), *keys.family, keys.queued(self._held_field(queue_id))],
            [queue_id, rule, self._family_ttl, self._spans.day, self._window_ttl, self._record_ttl],
        )
        return first == 1

    def record_hold(
        self,
        instance: str,
        stream: str,
        recipients: int,
        now: float,
        queue_id: str,
        reason: str = HOLD_OVER_CAP,
        operators: tuple[str, ...] = (),
    ) -> bool:
        """Record a held message (nothing counted), with why and its operators; True on its first record."""
        instance = instance or f"no-instance:{uuid.uuid4().hex}"
        keys = StreamKeys(stream)
        self._register(stream)
        first = self._conn.script(
            "record_hold",
            [keys.record(instance), keys.held, keys.heldrec, keys.heldq],
            [recipients, queue_id, instance, self.host, self._held_field(queue_id), reason, operators_text(operators)],
        )
        if first == 1 and queue_id:
            self._held_index[queue_id] = (stream, instance)
        return first == 1

    def claim_release(
        self, queue_id: str, now: float, hourly_cap: int | None, daily_cap: int | None
    ) -> Admission:
        """Count a held message if it fits now (``held`` → ``releasing``), in one server-side step."""
        found = self._locate(queue_id)
        if found is None:
            return Admission(NOT_HELD, 0, 0)
        stream, instance = found
        keys = StreamKeys(stream)
        w = self._spans
        reply = self._conn.script(
            "claim_release",
            [*keys.window, keys.record(instance), keys.heldrec],
            [queue_id, instance, _cap(hourly_cap), _cap(daily_cap), w.hour, w.day, self._window_ttl, self.host],
        )
        admission = _admission(reply, now)
        if admission.outcome == NOT_HELD:
            self._held_index.pop(queue_id, None)
        return admission

    def finish_release(self, queue_id: str, state: str, now: float) -> None:
        """Close a held message's record as ``released`` or ``gone`` (its count, if any, stays)."""
        if state not in (STATE_RELEASED, STATE_GONE):
            raise ValueError(f"a release finishes {STATE_RELEASED!r} or {STATE_GONE!r}, not {state!r}")
        found = self._locate(queue_id)
        if found is None:
            return
        stream, instance = found
        keys = StreamKeys(stream)
        self._conn.script(
            "finish_release",
            [keys.record(instance), keys.held, keys.heldrec, keys.heldq, keys.queued(self._held_field(queue_id))],
            [queue_id, instance, state, self._record_ttl, self.host, self._held_field(queue_id)],
        )
        self._held_index.pop(queue_id, None)

    # -- the ramp history ------------------------------------------------------------------------

    def add_sent(self, stream: str, day: dt.date, n: int) -> None:
        """Add ``n`` sent deliveries to the stream's ramp day ``day``."""
        if n > 0:
            self._conn.call(lambda client: client.hincrby(StreamKeys(stream).sent, day.isoformat(), n))

    def mark_paused_day(self, stream: str, day: dt.date) -> bool:
        """Mark ramp day ``day`` paused; True when it was not marked before."""
        return self._conn.call(lambda client: client.sadd(StreamKeys(stream).paused, day.isoformat())) == 1

    def step_back(self, stream: str, days: int, rule: str, now: float) -> None:
        """Record a step-back of ``days`` warmup days by ``rule`` at ``now``."""
        if days < 1:
            raise ValueError(f"a step-back goes back at least 1 day, not {days}")
        entry = f"{now!r}\t{days}\t{rule}"
        self._conn.call(lambda client: client.rpush(StreamKeys(stream).step_backs, entry))

    def ramp_history(self, stream: str) -> RampHistory:
        """The stream's sent deliveries per ramp day, paused days and step-backs (one round trip)."""
        keys = StreamKeys(stream)

        def read(client: redis.Redis) -> tuple[dict[str, str], set[str], list[str]]:
            pipe = client.pipeline(transaction=True)
            pipe.hgetall(keys.sent)
            pipe.smembers(keys.paused)
            pipe.lrange(keys.step_backs, 0, -1)
            sent, paused, steps = pipe.execute()
            return cast(dict[str, str], sent), cast(set[str], paused), cast(list[str], steps)

        sent, paused, steps = self._conn.call(read)
        try:
            step_backs = []
            for entry in steps:
                at, days, rule = entry.split("\t", 2)
                step_backs.append(StepBack(float(at), int(days), rule))
            return RampHistory(
                sent={dt.date.fromisoformat(day): int(n) for day, n in sent.items() if int(n)},
                paused=frozenset(dt.date.fromisoformat(day) for day in paused),
                step_backs=tuple(sorted(step_backs, key=lambda s: s.at)),
            )
        except ValueError as exc:  # written by something else than sendguard: say so, do not guess
            raise StoreError(f"counter store {self.url}: stream {stream}: unreadable ramp history ({exc})") from None

    # -- reads ---------------------------------------------------------------------------------

    def message_state(self, instance: str) -> str | None:
        """The recorded state of a message, looked up in every stream written to."""
        if not instance:
            return None
        streams = self._streams()

        def read(client: redis.Redis) -> list[str | None]:
            pipe = client.pipeline(transaction=False)
            for stream in streams:
                pipe.hget(StreamKeys(stream).record(instance), "state")
            return pipe.execute()

        return next((state for state in self._conn.call(read) if state is not None), None)

    def windows(self, stream: str, now: float) -> WindowCounts:
        """The stream's rolling counts at the server's time (``now`` is advisory)."""
        w = self._spans
        hour, day = cast(list[int], self._conn.script("windows", StreamKeys(stream).window, [w.hour, w.day]))
        return WindowCounts(hour=int(hour), day=int(day))

    def family_holds(self, since: float) -> dict[str, int]:
        """Messages held for the family since ``since`` (to the second, server time), per stream."""
        out: dict[str, int] = {}
        for stream in self._streams():
            n = self._conn.script("family_count", StreamKeys(stream).family, [since])
            if isinstance(n, int) and n:
                out[stream] = n
        return out

    def held_messages(self, stream: str) -> list[HeldMessage]:
        """The stream's messages waiting for release on this host, oldest first (``releasing`` ones included).

        Only this host's: a releaser can let go only what its own Postfix holds, and must not
        take another host's held mail, absent from its hold queue, for mail gone by other hands."""
        keys = StreamKeys(stream)

        def read(client: redis.Redis) -> tuple[list[tuple[str, float]], dict[str, str]]:
            # One MULTI: the order and the records of one instant.
            pipe = client.pipeline(transaction=True)
            pipe.zrange(keys.held, 0, -1, withscores=True)
            pipe.hgetall(keys.heldrec)
            order, records = pipe.execute()
            return cast(list[tuple[str, float]], order), cast(dict[str, str], records)

        order, records = self._conn.call(read)
        out = []
        for instance, at in order:
            record = records.get(instance)
            if record is None:
                continue
            state, queue_id, recipients, host, *more = record.split("\t")
            if host != self.host:
                continue
            # A record of an earlier release has no reason and operators: over its cap, operators unknown.
            why, operators = more if len(more) == 2 else (HOLD_OVER_CAP, "")
            message = HeldMessage(
                queue_id, instance, stream, int(recipients), float(at), state, why, operators_of_text(operators)
            )
            out.append(message)
            if queue_id:
                self._held_index[queue_id] = (stream, instance)
        return out

    def stream_of(self, queue_id: str) -> str | None:
        """The stream of this host's message queued as ``queue_id``, or None."""
        return self.streams_of((queue_id,)).get(queue_id)

    def streams_of(self, queue_ids: Collection[str]) -> dict[str, str]:
        """The streams of this host's messages queued as ``queue_ids``: counted, marked for the family,
        released (the ``q:`` marks) or still held (``heldq``); one pipeline for them all."""
        wanted = [q for q in dict.fromkeys(queue_ids) if q]
        if not wanted:
            return {}
        streams = self._streams()
        asked = [(stream, q) for q in wanted for stream in streams]

        def read(client: redis.Redis) -> list[int]:
            pipe = client.pipeline(transaction=False)
            for stream, q in asked:
                keys = StreamKeys(stream)
                pipe.exists(keys.queued(self._held_field(q)))
                pipe.hexists(keys.heldq, self._held_field(q))
            return pipe.execute()

        replies = self._conn.call(read)
        out: dict[str, str] = {}
        for i, (stream, q) in enumerate(asked):
            if q not in out and (replies[2 * i] or replies[2 * i + 1]):
                out[q] = stream
        return out

    def held_backlog(self) -> dict[str, Backlog]:
        """Over-cap messages waiting for release (``held`` or ``releasing``), per stream that has any."""
        streams = self._streams()

        def read(client: redis.Redis) -> list[tuple[list[tuple[str, float]], list[str]]]:
            pipe = client.pipeline(transaction=False)
            for stream in streams:
                keys = StreamKeys(stream)
                pipe.zrange(keys.held, 0, 0, withscores=True)
                pipe.hvals(keys.heldrec)
            replies = pipe.execute()
            return cast(list[tuple[list[tuple[str, float]], list[str]]], list(zip(replies[::2], replies[1::2])))

        out: dict[str, Backlog] = {}
        for stream, (oldest, records) in zip(streams, self._conn.call(read)):
            if not records:
                continue
            fields = [r.split("\t") for r in records]
            recipients = sum(int(f[2]) for f in fields)
            paused = sum(1 for f in fields if len(f) > 4 and f[4] == HOLD_PAUSE)
            out[stream] = Backlog(len(records), recipients, float(oldest[0][1]) if oldest else None, paused)
        return out

    # -- pauses (redis_pauses.py) ------------------------------------------------------------------

    def pause(self, p: Pause) -> None:
        """Put a pause in force (or extend the one in force), in one transaction."""
        keys = StreamKeys(p.stream)
        self._register(p.stream)
        self._conn.call(lambda client: redis_pauses.put_pause(client, keys.pauses, keys.pause_history, p))

    def resume(self, stream: str, operator: str, now: float) -> bool:
        """End the pause in force for ``stream`` and ``operator`` at ``now``; True when there was one."""
        key = StreamKeys(stream).pauses
        return self._conn.call(lambda client: redis_pauses.end_pause(client, key, stream, operator, now))

    def pauses(self, now: float) -> list[Pause]:
        """The pauses in force at ``now``, by stream and operator."""
        keys = [(stream, StreamKeys(stream).pauses) for stream in self._streams()]
        latest = self._conn.call(lambda client: redis_pauses.read_latest(client, keys))
        return [p for p in latest if p.active(now)]

    def pause_history(self, since: float) -> list[Pause]:
        """The pauses kept that lasted past ``since``, oldest first."""
        keys = [(s, StreamKeys(s).pauses, StreamKeys(s).pause_history) for s in self._streams()]
        return self._conn.call(lambda client: redis_pauses.read_history(client, keys, since))

    # -- the event loop's side: a Redis write waits for no lock, only for redis_timeout -------------

    def never_wait_in_this_thread(self) -> None:
        """Nothing to do: a write never waits for another writer (each is one server-side script)."""

    def wait_off_loop(self, deadline: float, done: Callable[[bool], None]) -> None:
        """Never needed (writes never raise StoreBusy); answers at once."""
        done(True)

    def loop_holds(self, held: bool) -> None:
        """Nothing to do (see never_wait_in_this_thread)."""

    def loop_releases(self) -> None:
        """Nothing to do (see never_wait_in_this_thread)."""

    def close(self) -> None:
        """Close the connections."""
        self._conn.close()

    # -- helpers -------------------------------------------------------------------------------

    def _register(self, stream: str) -> None:
        if stream not in self._registered:
            self._conn.call(lambda client: client.sadd(STREAMS_KEY, stream))
            self._registered.add(stream)

    def _forget_registered(self) -> None:
        self._registered.clear()

    def _streams(self) -> list[str]:
        return sorted(cast(set[str], self._conn.call(lambda client: client.smembers(STREAMS_KEY))))

    def _held_field(self, queue_id: str) -> str:
        """The ``heldq`` field of a queue id: queue ids are unique on one host only."""
        return f"{queue_id}@{self.host}"

    def _locate(self, queue_id: str) -> tuple[str, str] | None:
        """The (stream, instance) of the held message under ``queue_id``, or None."""
        if not queue_id:
            return None
        known = self._held_index.get(queue_id)
        if known is not None:
            return known
        streams = self._streams()
        field = self._held_field(queue_id)

        def read(client: redis.Redis) -> list[str | None]:
            pipe = client.pipeline(transaction=False)
            for stream in streams:
                pipe.hget(StreamKeys(stream).heldq, field)
            return pipe.execute()

        for stream, instance in zip(streams, self._conn.call(read)):
            if instance is not None:
                return stream, instance
        return None


def _admission(reply: object, now: float) -> Admission:
    """An :class:`Admission` from a check script's reply; ``room_at`` moved onto the caller's clock."""
    outcome, hour, day, room, sec, usec = cast(tuple[str, int, int, int | None, int, int], reply)
    room_at = None if room is None else float(room) - (int(sec) + int(usec) / 1e6) + now
    return Admission(str(outcome), int(hour), int(day), room_at)

