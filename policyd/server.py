"""The socket server: Postfix connections in, one reply per request out.

One thread runs one ``epoll`` loop over every socket (TCP, the optional unix
socket, each Postfix connection). A decision takes tens of microseconds and
the SQLite write is serialised anyway, so more threads would add switching,
not throughput. The loop is written out here rather than taken from asyncio:
smtpd keeps one request in flight per connection, so every request is a full
wake-up and round trip, and asyncio's layers (handles, transports, protocol
callbacks) cost as much per request as the decision itself.

With ``busy_poll`` set (off by default: ``policyd.busy_poll_usec``), the loop
polls for the next request for up to that many seconds before it sleeps (see
:func:`serve_forever`): on a virtual machine whose idle vCPUs halt, waking a
sleeping thread can cost more than a decision. An idle daemon does not poll,
and a polling one yields the CPU between polls to anything else that wants
it. When several sockets are ready at once their replies go out together
after the batch (at least every ``HOLD_LIMIT``): one wake-up of a client
process for all of its replies.

The loop never waits for the counter store's writers' lock, nor for SQLite's
own write lock. A decision that needs to write while another writer holds
either (another process's backup or ``sqlite3`` shell, a stuck peer) gets
:class:`StoreBusy`; the request is *parked*: its
connection reads nothing more for now, while every other connection is
served as usual, and a request that needs no write (a RCPT for gmail.com) is
answered at once. The store waits for the lock on a thread of its own, at most
until the oldest parked request has waited :data:`PARK_TIMEOUT`, and hands it
to the loop, which decides the parked requests in arrival order (their
connections then go on). When the wait runs out, those requests are decided
with every write failing, so each gets its stream's ``on_store_error``
answer. Only the loop decides, so the decision needs no locks of its own.

About once a second the loop sweeps: idle connections are closed, paused
listeners resume, and the decider's periodic work runs (its summary line).
The pauses of streams (pause_board.py) are not read there: a thread of their
own reads them from the store, and the loop reads its snapshot from memory.

A connection carries any number of requests, pipelined or not; each gets its
reply in order. Bad input never stops the daemon. A request that is complete
but cannot be understood gets ``bad_request_action`` and the connection goes
on. When the framing itself is lost (a line or request over the limit, a
request that never ends before EOF or the idle timeout), the connection gets
``bad_request_action`` once and is closed, since nothing after it can be
trusted to start a request. Each case logs one line naming the cause.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import stat
import threading
import time
from collections import deque
from typing import Callable

from sendguard import logs
from sendguard.socket_access import apply_access
from sendguard_policyd import metrics
from sendguard_policyd.decide import Decider
from sendguard_policyd.store import StoreBusy
from sendguard_policyd.protocol import (
    MAX_LINE_BYTES,
    MAX_REQUEST_BYTES,
    BadRequest,
    format_reply,
    parse_request,
)

log = logs.get("policyd")

#: The answer when the decision code itself fails (a bug): deferring keeps every cap safe.
INTERNAL_ERROR_ACTION = "DEFER_IF_PERMIT 4.3.0 sendguard: internal error, try again later"
#: Bytes read from a connection at once (a Postfix request is about 1 KB).
READ_SIZE = 65536
#: Connections accepted per listener wake-up before other sockets get their turn.
ACCEPT_BATCH = 64
#: Replies held back during a batch of ready sockets go out at least this often (seconds).
HOLD_LIMIT = 0.0002
#: accept() failures (out of file descriptors) are logged at most once per this many seconds.
ACCEPT_FAILURE_LOG_INTERVAL = 60.0
#: Distinct reply texts kept encoded (deferrals name times, so the set keeps changing).
REPLY_CACHE_SIZE = 512
#: The longest a parked request waits for a busy store (seconds) before it is answered as a store
#: failure: the SQLite store's LOCK_TIMEOUT, and well under smtpd_policy_service_timeout (100 s).
PARK_TIMEOUT = 10.0

#: Bad requests after which the connection is closed (see the module docstring).
_FRAMING_LOST = frozenset({"line_too_long", "request_too_large"})

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_clock = time.perf_counter
_monotonic = time.monotonic
_yield = os.sched_yield


class Connection:
    """One Postfix connection: its socket, what it sent that is not answered yet, what waits to go out."""

    __slots__ = ("sock", "fd", "peer", "buf", "out", "watching_out", "last", "closing", "parked", "mask")

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.buf = bytearray()
        #: Reply bytes the socket did not take yet (the peer reads slowly); sent when it is writable.
        self.out = bytearray()
        #: Registered for EPOLLOUT: ``out`` waits for the socket to take more.
        self.watching_out = False
        self.last = _monotonic()
        #: Close once ``out`` is sent (the framing was lost, or the peer half-closed).
        self.closing = False
        #: A request of this connection waits for the store: nothing more is read or answered.
        self.parked = False
        #: The events epoll watches for (0: not registered).
        self.mask = _IN


class PolicyServer:
    """The listening sockets and the connections of one daemon, served by :meth:`serve_forever`."""

    def __init__(
        self,
        decider: Decider,
        idle_timeout: float,
        bad_action: str,
        busy_poll: float = 0.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.decider = decider
        self.idle_timeout = idle_timeout
        self.bad_action = bad_action
        self.busy_poll = busy_poll
        self.now = now
        self._epoll = select.epoll()
        self._listeners: dict[int, socket.socket] = {}
        #: Listeners set aside after accept() failed (see _accept), back in at the next sweep.
        self._paused: set[int] = set()
        self._accept_failures = 0
        self._accept_failure_logged = float("-inf")
        self._unix_paths: list[tuple[str, int]] = []  # (path, inode) of our unix sockets
        self.connections: dict[int, Connection] = {}
        self._replies: dict[str, bytes] = {}
        # stop() from another thread writes here to wake the loop.
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_r, _IN)
        self._stopping = False
        self._stopped = threading.Event()
        # While the loop works through several ready sockets, replies wait here and go out
        # together after the batch (see serve_forever); None: send at once.
        self._held: list[Connection] | None = None
        # Requests waiting for a busy store, oldest first: (connection, request, deadline, started).
        self._parked: deque[tuple[Connection, dict[str, str], float, float]] = deque()
        self._waiting_store = False  # the store waits for its writers' lock for us
        # Set by the store's waiting thread: True, the loop may write; False, the wait ran out.
        self._handover: bool | None = None
        self._handover_lock = threading.Lock()
        self._handover_closed = False  # the loop is gone: a late handover is released at once

    # -- listening ---------------------------------------------------------------------------------

    def listen_tcp(self, host: str, port: int, reuse_port: bool = False) -> tuple[str, int]:
        """Listen on TCP ``host:port``; return the bound address (port 0 picks a free one).

        ``reuse_port``: share the port with other daemons that set it too (SO_REUSEPORT); the
        kernel spreads new connections over them.
        """
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(1024)
        except BaseException:
            sock.close()
            raise
        self._add_listener(sock)
        return sock.getsockname()[:2]

    def listen_unix(self, path: str, mode: int, group: str | None = None) -> None:
        """Listen on a unix socket at ``path``, with file ``mode`` and ``group`` (None: the daemon's own).

        A socket file left by a daemon that is gone is replaced; one that a live process
        still answers on is not (OSError EADDRINUSE): a second daemon started with the same
        config must not take the first one's socket away from Postfix.
        """
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISSOCK(st.st_mode):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(2)
            try:
                probe.connect(path)
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(path)  # stale: nobody listens there
            else:
                raise OSError(errno.EADDRINUSE, "another process is listening on it")
            finally:
                probe.close()
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            # Before listen(): no client can connect while the socket still has the umask's mode.
            apply_access(path, mode, group)
            sock.listen(1024)
        except BaseException:
            sock.close()
            if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)  # ours, half set up: no socket file left that nobody answers on
            raise
        self._unix_paths.append((path, os.stat(path).st_ino))
        self._add_listener(sock)

    def _add_listener(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._listeners[sock.fileno()] = sock
        self._epoll.register(sock.fileno(), _IN)

    # -- the loop ----------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until :meth:`stop`; then close every socket. Run it in its own thread."""
        poll = self._epoll.poll
        conns = self.connections
        listeners = self._listeners
        spin = self.busy_poll
        polled = 0.0  # seconds spent polling with nothing to do, not yet added to the metric
        last_event = float("-inf")
        sweep_every = min(1.0, self.idle_timeout / 2)
        next_sweep = _monotonic() + sweep_every
        self.decider.store.never_wait_in_this_thread()
        try:
            while not self._stopping:
                events = poll(0)
                if not events:
                    # Nothing ready. While requests were coming a moment ago, keep looking for
                    # the next one (it is usually tens of microseconds away) instead of sleeping.
                    start = now = _clock()
                    if now - last_event < spin:
                        until = last_event + spin
                        while now < until:
                            events = poll(0)
                            if events:
                                now = _clock()
                                break
                            _yield()  # smtpd or the milter may want this vCPU more than we do
                            now = _clock()
                        polled += now - start
                    if not events:
                        if polled:
                            metrics.BUSY_POLL_SECONDS.inc(polled)
                            polled = 0.0
                        events = poll(max(0.0, next_sweep - _monotonic()))
                held_since = 0.0
                if len(events) > 1:
                    self._held = []
                    held_since = _clock()
                for fd, mask in events:
                    conn = conns.get(fd)
                    try:
                        if conn is not None:
                            if mask & _OUT:
                                self._flush(conn)
                            if mask & ~_OUT:
                                self._readable(conn)
                        elif fd in listeners:
                            self._accept(listeners[fd])
                        elif fd == self._wake_r:
                            os.read(self._wake_r, 64)
                    except Exception:  # a bug must cost one connection, not the daemon
                        log.exception("error serving %s; closing it", conn.peer if conn else f"socket {fd}")
                        if conn is not None:
                            self._close(conn)
                    if held_since and self._held and _clock() - held_since > HOLD_LIMIT:
                        # A long batch (a burst from every connection at once): what is answered
                        # so far goes out now rather than wait for the rest.
                        self._flush_held(keep=True)
                        held_since = _clock()
                if self._handover is not None:
                    self._run_parked()
                if self._held is not None:
                    self._flush_held(keep=False)
                if events:
                    last_event = _clock()  # the polling window runs from the end of the work
                if _monotonic() >= next_sweep:
                    self._resume_listeners()
                    self._sweep_idle()
                    self._tick()
                    next_sweep = _monotonic() + sweep_every
                    if polled:  # a loop that never sleeps reports here
                        metrics.BUSY_POLL_SECONDS.inc(polled)
                        polled = 0.0
        finally:
            self._shutdown()

    def _flush_held(self, keep: bool) -> None:
        held = self._held or []
        self._held = [] if keep else None
        for conn in held:
            if conn.fd in self.connections:
                self._flush(conn)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to stop (from any thread) and wait until every socket is closed."""
        if self._stopped.is_set():
            return
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        self._stopped.wait(timeout)

    def close(self) -> None:
        """Close the sockets of a server whose loop never ran (start-up failed half-way)."""
        if not self._stopped.is_set():
            self._shutdown()

    def _tick(self) -> None:
        try:
            self.decider.tick(self.now())
        except Exception:  # a bug in periodic work must not stop the loop
            log.exception("error in the policy daemon's periodic work")

    def _shutdown(self) -> None:
        with self._handover_lock:
            self._handover_closed = True
            late = self._handover
        if late:
            self._give_back_store()
        for conn in list(self.connections.values()):
            self._close(conn)
        for sock in self._listeners.values():
            sock.close()
        self._listeners.clear()
        for path, inode in self._unix_paths:
            try:
                if os.stat(path).st_ino == inode:  # still ours, not a successor's
                    os.unlink(path)
            except OSError:
                pass
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._stopped.set()

    # -- connections -------------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of file descriptors, mostly. The waiting peer stays in the backlog; the
                # listener is set aside until the next sweep (at most a second), or it would
                # stay readable and the loop would spin here, logging the same line each time.
                self._pause_listener(listener, exc)
                return
            sock.setblocking(False)
            if sock.family == socket.AF_UNIX:
                peer = "unix"
            else:
                # Replies are single writes; without this, a pipelined client's second reply would
                # wait for the ACK of the first (Nagle against delayed ACK: 40 ms).
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                peer = f"{addr[0]}:{addr[1]}"
            conn = Connection(sock, peer)
            self.connections[conn.fd] = conn
            self._epoll.register(conn.fd, _IN)  # conn.mask
            metrics.CONNECTIONS.inc()

    def _pause_listener(self, listener: socket.socket, exc: OSError) -> None:
        fd = listener.fileno()
        if fd in self._paused:
            return
        self._paused.add(fd)
        self._epoll.modify(fd, 0)
        self._accept_failures += 1
        now = _monotonic()
        if now - self._accept_failure_logged >= ACCEPT_FAILURE_LOG_INTERVAL:
            log.error(
                "cannot accept connections on %s: %s; %d connections open; retrying every second"
                " (%d failed attempts since the last such line)",
                _sockname(listener), exc.strerror or exc, len(self.connections), self._accept_failures,
            )  # fmt: skip
            self._accept_failure_logged = now
            self._accept_failures = 0

    def _resume_listeners(self) -> None:
        for fd in self._paused:
            self._epoll.modify(fd, _IN)
        self._paused.clear()

    def _close(self, conn: Connection) -> None:
        if self.connections.pop(conn.fd, None) is None:
            return
        metrics.CONNECTIONS.dec()
        try:
            self._epoll.unregister(conn.fd)
        except (OSError, ValueError):
            pass
        conn.sock.close()

    def _sweep_idle(self) -> None:
        timeout = self.idle_timeout
        now = _monotonic()
        for conn in [c for c in self.connections.values() if now - c.last >= timeout and not c.parked]:
            idle = now - conn.last
            if conn.buf and not conn.buf.isspace():
                self._bad(conn, BadRequest("unterminated", f"request not ended within the idle timeout of {timeout:g} s"))
                conn.buf.clear()
                self._close_after_reply(conn)
            else:
                log.debug("closing connection from %s idle for %.0f s", conn.peer, idle)
                self._close(conn)

    # -- reading -----------------------------------------------------------------------------------

    def _readable(self, conn: Connection) -> None:
        if conn.parked:
            # Only a hang-up or an error gets here (reading is off while parked): look again
            # once the parked request is answered.
            self._unwatch(conn)
            return
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(conn, exc)
            return
        if not data:
            self._eof(conn)
            return
        if conn.closing:
            return  # the framing was lost: nothing more is read from it
        conn.last = _monotonic()
        buf = conn.buf
        if not buf and data.endswith(b"\n\n") and data.find(b"\n\n") == len(data) - 2 and data[0] != 10:
            # The usual case: exactly one whole request (smtpd waits for each reply), answered
            # without copying it through the buffer. Anything else takes the general path.
            self._answer(conn, data[:-2])
            return
        buf += data
        self._drain(conn)

    def _drain(self, conn: Connection) -> None:
        """Answer the whole requests in ``conn.buf``, in order, until one is parked."""
        buf = conn.buf
        while buf:
            if buf[0] == 10:  # an empty line with no request before it
                del buf[:1]
                self._answer(conn, b"")
                continue
            end = buf.find(b"\n\n")
            if end < 0:
                self._check_partial(conn)
                return
            block = bytes(buf[:end])
            del buf[: end + 2]
            self._answer(conn, block)
            if conn.closing or conn.parked or conn.fd not in self.connections:
                return

    def _eof(self, conn: Connection) -> None:
        if conn.buf and not conn.buf.isspace() and not conn.closing:
            # Half-closed after an unterminated request: answer it, then close.
            self._bad(conn, BadRequest("unterminated", "end of input before the empty line that ends a request"))
            conn.buf.clear()
        self._close_after_reply(conn)

    def _lost(self, conn: Connection, exc: OSError) -> None:
        if conn.buf and not conn.buf.isspace() and not conn.closing:
            # The peer went away mid-request: there is no one left to answer.
            metrics.BAD_REQUESTS.labels("unterminated").inc()
            log.warning("bad request from %s: connection closed in the middle of a request (%s); answered nothing",
                        conn.peer, exc.strerror or exc)  # fmt: skip
        elif exc.errno not in (errno.ECONNRESET, errno.EPIPE):
            log.debug("connection from %s: %s", conn.peer, exc.strerror or exc)
        self._close(conn)

    def _check_partial(self, conn: Connection) -> None:
        buf = conn.buf
        if len(buf) > MAX_REQUEST_BYTES:
            self._bad(conn, BadRequest("request_too_large", f"request larger than {MAX_REQUEST_BYTES} bytes"))
        elif len(buf) - (buf.rfind(b"\n") + 1) > MAX_LINE_BYTES:
            self._bad(conn, BadRequest("line_too_long", f"request line longer than {MAX_LINE_BYTES} bytes"))
        else:
            return
        buf.clear()
        self._close_after_reply(conn)

    # -- answering ---------------------------------------------------------------------------------

    def _answer(self, conn: Connection, block: bytes) -> None:
        started = _clock()
        try:
            if len(block) > MAX_REQUEST_BYTES:
                raise BadRequest("request_too_large", f"request larger than {MAX_REQUEST_BYTES} bytes")
            attrs = parse_request(block)
        except BadRequest as exc:
            self._bad(conn, exc)
            if exc.reason in _FRAMING_LOST:
                # The same bytes split differently would have hit _check_partial: the answer must not
                # depend on how they arrived, and nothing after such a request can be trusted.
                conn.buf.clear()
                self._close_after_reply(conn)
            return
        try:
            action = self.decider.decide(attrs, self.now()).action
        except StoreBusy:
            self._park(conn, attrs, started)
            return
        except Exception:
            log.exception("%s: internal error deciding a request from %s", attrs.get("queue_id") or "NOQUEUE", conn.peer)
            action = INTERNAL_ERROR_ACTION
        self._reply(conn, action, started)

    def _reply(self, conn: Connection, action: str, started: float) -> None:
        reply = self._replies.get(action)
        if reply is None:
            if len(self._replies) >= REPLY_CACHE_SIZE:
                self._replies.clear()
            reply = self._replies[action] = format_reply(action)
        self._send(conn, reply)
        metrics.REQUEST_SECONDS.observe(_clock() - started)

    # -- requests parked on a busy store -----------------------------------------------------------

    def _park(self, conn: Connection, attrs: dict[str, str], started: float) -> None:
        conn.parked = True
        self._rewatch(conn)
        self._parked.append((conn, attrs, _monotonic() + PARK_TIMEOUT, started))
        if len(self._parked) == 1:
            log.warning("counter store busy (another writer holds it): parking requests that write, for at most"
                        " %g s; the others are answered meanwhile", PARK_TIMEOUT)  # fmt: skip
        if not self._waiting_store:
            self._wait_for_store()

    def _wait_for_store(self) -> None:
        self._waiting_store = True
        self.decider.store.wait_off_loop(self._parked[0][2], self._store_ready)

    def _store_ready(self, held: bool) -> None:
        """Called by the store's waiting thread: the store can be written (``held``) or the wait ran out."""
        with self._handover_lock:
            if not self._handover_closed:
                self._handover = held
                try:
                    os.write(self._wake_w, b"s")
                except OSError:
                    pass
                return
        if held:  # the loop has stopped: nobody will decide under it
            self._give_back_store()

    def _give_back_store(self) -> None:
        store = self.decider.store
        store.loop_holds(True)
        store.loop_releases()

    def _run_parked(self) -> None:
        """Decide the parked requests the store's answer covers: all of them when it can be written,
        else those whose wait has run out (each gets its stream's on_store_error answer)."""
        with self._handover_lock:
            held, self._handover = bool(self._handover), None
        self._waiting_store = False
        now = _monotonic()
        batch: list[tuple[Connection, dict[str, str], float, float]] = []
        while self._parked and (held or self._parked[0][2] <= now + 0.001):
            batch.append(self._parked.popleft())
        store = self.decider.store
        store.loop_holds(held)
        answered = 0
        try:
            for i, (conn, attrs, _, started) in enumerate(batch):
                if not held:
                    log.error("%s: counter store still busy after %g s: answered as a store failure",
                              attrs.get("queue_id") or "NOQUEUE", PARK_TIMEOUT)  # fmt: skip
                try:
                    action = self.decider.decide(attrs, self.now()).action
                except StoreBusy:
                    # A writer that skips our flock took SQLite's lock again after the hand-over
                    # (sqlite_lock.py): this request and the rest wait again, with their deadlines.
                    self._parked.extendleft(reversed(batch[i:]))
                    batch = batch[:i]
                    break
                except Exception:
                    log.exception("%s: internal error deciding a parked request from %s",
                                  attrs.get("queue_id") or "NOQUEUE", conn.peer)  # fmt: skip
                    action = INTERNAL_ERROR_ACTION
                conn.parked = False
                answered += 1
                if self.connections.get(conn.fd) is conn:
                    self._reply(conn, action, started)
        finally:
            store.loop_releases()
        if held and answered:
            log.info("counter store writable again: %d parked request(s) answered", answered)
        for conn, _, _, _ in batch:
            if self.connections.get(conn.fd) is conn and not conn.parked:
                self._rewatch(conn)
                self._drain(conn)  # requests that came with the parked one
        if self._parked and not self._waiting_store:
            self._wait_for_store()

    def _bad(self, conn: Connection, exc: BadRequest) -> None:
        action = self.bad_action
        metrics.BAD_REQUESTS.labels(exc.reason).inc()
        log.warning("bad request from %s: %s; answered %s", conn.peer, exc.detail, action)
        self._send(conn, format_reply(action))

    # -- writing -----------------------------------------------------------------------------------

    def _send(self, conn: Connection, data: bytes) -> None:
        if conn.out:  # earlier replies still wait: keep the order
            conn.out += data
            return
        conn.out += data
        if self._held is not None:
            # Sending wakes the client, and on a VM waking a halted vCPU costs tens of microseconds
            # in this call: after the batch, one wake-up serves all the replies a client process gets.
            self._held.append(conn)
            return
        self._flush(conn)

    def _flush(self, conn: Connection) -> None:
        """Send what waits in ``conn.out``; watch for writability while some is left."""
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            conn.out.clear()
            self._lost(conn, exc)
            return
        del conn.out[:sent]
        if conn.out:
            if not conn.watching_out:
                conn.watching_out = True
                self._rewatch(conn)
        elif conn.closing:
            self._close(conn)
        elif conn.watching_out:
            conn.watching_out = False
            self._rewatch(conn)

    def _rewatch(self, conn: Connection) -> None:
        """Watch for what ``conn`` waits for: input unless it is closing or parked, output while some waits."""
        want = (0 if conn.closing or conn.parked else _IN) | (_OUT if conn.watching_out else 0)
        if want == conn.mask:
            return
        if not want:
            self._unwatch(conn)
            return
        if conn.mask:
            self._epoll.modify(conn.fd, want)
        else:
            self._epoll.register(conn.fd, want)
        conn.mask = want

    def _unwatch(self, conn: Connection) -> None:
        if conn.mask:
            self._epoll.unregister(conn.fd)  # even a hang-up is not reported until it is watched again
            conn.mask = 0

    def _close_after_reply(self, conn: Connection) -> None:
        """Close now, or once the replies still waiting have gone out."""
        conn.closing = True
        if not conn.out:
            self._close(conn)
        elif conn.fd in self.connections:
            conn.watching_out = True
            self._rewatch(conn)  # an EOF stays readable: stop listening for it


def _sockname(sock: socket.socket) -> str:
    name = sock.getsockname()
    return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name)
