"""The socket server: Postfix connections in, one reply per request out.

One asyncio event loop in one thread serves every connection (TCP and the
optional unix socket). A decision takes tens of microseconds and the SQLite
write is serialised anyway, so threads would add switching, not throughput.
A connection carries any number of requests, pipelined or not; each gets its
reply in order.

Bad input never stops the daemon. A request that is complete but cannot be
understood gets ``bad_request_action`` and the connection goes on. When the
framing itself is lost (a line or request over the limit, a request that never
ends before EOF or the idle timeout), the connection gets
``bad_request_action`` once and is closed, since nothing after it can be
trusted to start a request. Each case logs one line naming the cause.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from typing import Callable

from sendguard import logs
from sendguard_policyd import metrics
from sendguard_policyd.decide import Decider
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


class PolicyProtocol(asyncio.Protocol):
    """One Postfix connection."""

    __slots__ = ("_server", "_transport", "_buf", "_peer", "_last", "_timer", "_closed")

    def __init__(self, server: PolicyServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._peer = "?"
        self._last = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    # -- connection life ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # noqa: D102
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        self._server.connections.add(self)
        metrics.CONNECTIONS.inc()
        self._arm_timer(self._server.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        self._closed = True
        self._server.connections.discard(self)
        metrics.CONNECTIONS.dec()
        if self._timer is not None:
            self._timer.cancel()
        if self._buf and not self._buf.isspace():
            # The peer went away mid-request: there is no one left to answer.
            self._bad(BadRequest("unterminated", "connection closed in the middle of a request"), reply=False)

    def eof_received(self) -> bool:  # noqa: D102
        if self._buf and not self._buf.isspace():
            # Half-closed after an unterminated request: answer it, then close (returning False).
            self._bad(BadRequest("unterminated", "end of input before the empty line that ends a request"))
            self._buf.clear()
        return False

    def _arm_timer(self, delay: float) -> None:
        loop = self._server.loop
        self._timer = loop.call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        if self._closed:
            return
        idle = time.monotonic() - self._last
        timeout = self._server.idle_timeout
        if idle < timeout:
            self._arm_timer(timeout - idle)
            return
        if self._buf and not self._buf.isspace():
            self._bad(BadRequest("unterminated", f"request not ended within the idle timeout of {timeout:g} s"))
            self._buf.clear()
        else:
            log.debug("closing connection from %s idle for %.0f s", self._peer, idle)
        self._close()

    def _close(self) -> None:
        if not self._closed and self._transport is not None:
            self._transport.close()

    # -- requests ----------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:  # noqa: D102
        self._last = time.monotonic()
        buf = self._buf
        if not buf and data.endswith(b"\n\n") and data.find(b"\n\n") == len(data) - 2 and data[0] != 10:
            # The usual case: exactly one whole request (smtpd waits for each reply), answered
            # without copying it through the buffer. Anything else takes the general path.
            self._answer(data[:-2])
            return
        buf += data
        while buf:
            if buf[0] == 10:  # an empty line with no request before it
                del buf[:1]
                self._answer(b"")
                continue
            end = buf.find(b"\n\n")
            if end < 0:
                self._check_partial()
                return
            block = bytes(buf[:end])
            del buf[: end + 2]
            self._answer(block)
            if self._closed:
                return

    def _check_partial(self) -> None:
        buf = self._buf
        if len(buf) > MAX_REQUEST_BYTES:
            self._bad(BadRequest("request_too_large", f"request larger than {MAX_REQUEST_BYTES} bytes"))
        elif len(buf) - (buf.rfind(b"\n") + 1) > MAX_LINE_BYTES:
            self._bad(BadRequest("line_too_long", f"request line longer than {MAX_LINE_BYTES} bytes"))
        else:
            return
        buf.clear()
        self._close()

    def _answer(self, block: bytes) -> None:
        started = time.perf_counter()
        server = self._server
        try:
            attrs = parse_request(block)
        except BadRequest as exc:
            self._bad(exc)
            return
        try:
            action = server.decider.decide(attrs, server.now()).action
        except Exception:
            log.exception("%s: internal error deciding a request from %s", attrs.get("queue_id") or "NOQUEUE", self._peer)
            action = INTERNAL_ERROR_ACTION
        if self._transport is not None and not self._closed:
            self._transport.write(format_reply(action))
        metrics.REQUEST_SECONDS.observe(time.perf_counter() - started)

    def _bad(self, exc: BadRequest, reply: bool = True) -> None:
        action = self._server.bad_action
        metrics.BAD_REQUESTS.labels(exc.reason).inc()
        log.warning("bad request from %s: %s; answered %s", self._peer, exc.detail, action if reply else "nothing")
        if reply and self._transport is not None and not self._closed:
            self._transport.write(format_reply(action))


class PolicyServer:
    """The listening sockets and the connections of one daemon, all on one event loop."""

    def __init__(
        self,
        decider: Decider,
        loop: asyncio.AbstractEventLoop,
        idle_timeout: float,
        bad_action: str,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.decider = decider
        self.loop = loop
        self.idle_timeout = idle_timeout
        self.bad_action = bad_action
        self.now = now
        self.connections: set[PolicyProtocol] = set()
        self.servers: list[asyncio.base_events.Server] = []

    async def listen_tcp(self, host: str, port: int) -> tuple[str, int]:
        """Listen on TCP ``host:port``; return the bound address (port 0 picks a free one)."""
        server = await self.loop.create_server(
            lambda: PolicyProtocol(self), host, port, reuse_address=True, backlog=1024
        )
        self.servers.append(server)
        return server.sockets[0].getsockname()[:2]

    async def listen_unix(self, path: str, mode: int) -> None:
        """Listen on a unix socket at ``path`` (a stale socket there is replaced)."""
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        server = await self.loop.create_unix_server(lambda: PolicyProtocol(self), path, backlog=1024)
        os.chmod(path, mode)
        self.servers.append(server)

    async def close(self) -> None:
        """Stop listening and close every connection."""
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn._close()
        for server in self.servers:
            await server.wait_closed()
