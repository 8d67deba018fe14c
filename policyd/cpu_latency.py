"""Keeping idle CPUs polling while Postfix is sending (``policyd.cpu_latency_hold``).

On a virtual machine whose idle vCPUs halt, every wake-up of a process on
another vCPU (smtpd reading its answer, the daemon reading the next request)
costs an inter-processor interrupt, which is a trip through the hypervisor,
and a halted vCPU may not get its physical CPU back at once (it shows as
"steal"; the measurements are in docs/policyd.md, *Idle CPUs on virtual
machines*).

The kernel's knob for this is a PM QoS CPU latency request: while a process
holds ``/dev/cpu_dma_latency`` open with 0 written to it, the idle loop polls
instead of halting (what tuned's ``latency-performance`` profile does for a
whole machine). This module holds such a request only while requests flow,
and releases it after :data:`IDLE_RELEASE` seconds without one: an idle mail
server burns nothing. The time held is exported, so the cost is visible.
"""

from __future__ import annotations

import os

from sendguard import logs
from sendguard_policyd import metrics

log = logs.get("policyd")

DEVICE = "/dev/cpu_dma_latency"
#: Written to release the request: the kernel's "no constraint" value (PM_QOS_CPU_LATENCY_DEFAULT_VALUE, µs).
RELEASED = 2_000_000_000
#: Held: idle CPUs may take 0 µs to wake, i.e. they poll.
HELD = 0
#: Seconds without a request after which the hold is released.
IDLE_RELEASE = 1.0


class CpuLatencyHold:
    """One PM QoS CPU latency request, switched on while requests flow."""

    def __init__(self, path: str | None = None) -> None:
        """Open the request (on :data:`DEVICE`); :class:`OSError` if the kernel or permissions do not allow it."""
        self.path = path if path is not None else DEVICE
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        self.held = False
        self._since = 0.0
        try:
            self._write(RELEASED)
        except OSError:
            os.close(self._fd)
            raise

    def _write(self, usec: int) -> None:
        assert self._fd is not None
        os.write(self._fd, usec.to_bytes(4, "little", signed=True))

    def hold(self, now: float) -> None:
        """Requests are flowing (``now``: monotonic seconds): keep idle CPUs polling."""
        if self.held or self._fd is None:
            return
        try:
            self._write(HELD)
        except OSError as exc:
            self._give_up(exc)
            return
        self.held = True
        self._since = now

    def release_if_idle(self, now: float, last_request: float) -> None:
        """Release the hold when no request came for :data:`IDLE_RELEASE` seconds; account the time held."""
        if not self.held:
            return
        self._account(now)
        if now - last_request >= IDLE_RELEASE:
            self._release()

    def _account(self, now: float) -> None:
        # The metric grows while held (each sweep), not only when the hold ends.
        metrics.CPU_LATENCY_HOLD_SECONDS.inc(max(0.0, now - self._since))
        self._since = now

    def _release(self) -> None:
        self.held = False
        try:
            self._write(RELEASED)
        except OSError as exc:
            self._give_up(exc)

    def close(self, now: float) -> None:
        """Release the request for good (closing the file ends it in the kernel too)."""
        if self._fd is None:
            return
        if self.held:
            self._account(now)
        self.held = False
        os.close(self._fd)
        self._fd = None

    def _give_up(self, exc: OSError) -> None:
        # It worked at start-up, so this is unexpected; answering requests matters more than polling.
        log.error("cannot write %s: %s; no longer holding idle CPUs polling", self.path, exc.strerror or exc)
        fd, self._fd, self.held = self._fd, None, False
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
