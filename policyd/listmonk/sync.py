"""Keep one Listmonk's sliding window on its stream's cap in force: set it, verify it, retry until it holds.

Each pass asks the cap in force, turns it into the window to set
(:func:`~sendguard_policyd.listmonk.window.window_for`), reads Listmonk's
settings back and compares. The window is "in force" only when the stored
settings carry it AND Listmonk has applied them (``GET /api/config`` says no
restart is pending): after a ``needs_restart`` answer the stored settings
already read back right while Listmonk still runs on the old ones.

When the window is not in force, the pass sends the whole settings object
back with the three window keys changed and every masked secret blanked
(:meth:`ListmonkClient.put_settings`). Listmonk applies it at once when no
campaign runs; otherwise it answers ``needs_restart`` and the sync, by
default, pauses the running campaigns — what Listmonk's own admin page asks
for before a restart — so the next try applies, then starts them again.
Listmonk's ``POST /api/admin/reload`` is never called: it restarts Listmonk
even with campaigns running, and a campaign cut off mid-batch skips the rest
of that batch's subscribers.

A pass that did not converge is retried after a delay that doubles up to
``retry_max``; Listmonk unreachable only delays the next try — the sync runs
on a thread of its own and never touches the policy daemon.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from sendguard import logs
from sendguard_policyd.cap_in_force import CapInForce, CapInForceSource
from sendguard_policyd.listmonk import metrics
from sendguard_policyd.listmonk.client import ListmonkClient, ListmonkError, Settings
from sendguard_policyd.listmonk.settings import ListmonkSettings
from sendguard_policyd.listmonk.state import PausedCampaigns
from sendguard_policyd.listmonk.window import HOUR, Choice, Window, window_for, window_in_force

log = logs.get("policyd.listmonk")

ENABLED = "app.message_sliding_window"
DURATION = "app.message_sliding_window_duration"
RATE = "app.message_sliding_window_rate"

#: Seconds before the first retry of a pass that did not converge (doubling up to RETRY_MAX).
RETRY_FIRST = 2.0
RETRY_MAX = 60.0
#: Seconds from an applied update to reading it back. Listmonk answers the PUT, then restarts
#: half a second later: read back sooner, the old process would answer with the new stored
#: settings and no restart pending, and a window not yet in force would pass for applied.
RELOAD_GRACE = 3.0

_UNSET = object()

#: What a pass achieved: the window read back in force, an update Listmonk applies now, or not yet.
IN_FORCE, APPLIED, PENDING = "in_force", "applied", "pending"


def window_text(window: Window | None) -> str:
    """A window for the logs ("41 per 15m", or "no window")."""
    return "no window" if window is None else window.text()


def with_window(settings: Settings, window: Window | None) -> Settings:
    """``settings`` (the whole object, as read) with the sliding window set to ``window``.

    None switches the window off and leaves its rate and duration as they were.
    """
    body = dict(settings)
    body[ENABLED] = window is not None
    if window is not None:
        body[RATE] = window.rate
        body[DURATION] = window.duration
    return body


class ListmonkSync:
    """The sync of one ``[listmonk.NAME]``: :meth:`step` is one pass, :meth:`serve` the loop."""

    def __init__(
        self,
        settings: ListmonkSettings,
        cap_in_force: CapInForceSource,
        share: int = 1,
        hour: int = HOUR,
        client: ListmonkClient | None = None,
        clock: Callable[[], float] = time.time,
        retry_first: float = RETRY_FIRST,
        retry_max: float = RETRY_MAX,
        reload_grace: float = RELOAD_GRACE,
    ) -> None:
        self.settings = settings
        self.client = client or ListmonkClient(
            settings.url, settings.username, settings.secret, settings.auth, settings.timeout
        )
        self._cap_in_force = cap_in_force
        self._share = share
        self._hour = hour
        self._clock = clock
        self._retry_first = retry_first
        self._retry_max = min(retry_max, settings.interval)
        self._delay = retry_first
        self._reload_grace = reload_grace
        self.paused = PausedCampaigns(settings.state_file)
        self._target: Window | None | object = _UNSET  # the window last announced in the log
        self._verified: Window | None | object = _UNSET  # the window last read back in force
        self._waiting_for: Window | None | object = _UNSET  # the window a needs_restart warning was logged for
        self._last_error: str | None = None
        self._label = settings.name
        self._gauges = False
        metrics.WINDOW_MISMATCH.labels(self._label).set(1)  # unknown until read back

    # -- the loop -----------------------------------------------------------------------

    def serve(self, stop: threading.Event) -> None:
        """Run passes until ``stop`` is set; nothing a pass raises ends the loop."""
        log.info("listmonk %s: telling %s the cap of stream %s every %gs", self._label, self.settings.url,
                 self.settings.stream, self.settings.interval)  # fmt: skip
        while not stop.is_set():
            try:
                delay = self.step()
            except Exception:  # a bug here must not end the sync (nor anything else: it is a thread of its own)
                log.exception("listmonk %s: pass failed; retrying", self._label)
                delay = self._retry()
            stop.wait(delay)

    def step(self) -> float:
        """One pass: seconds until the next (``interval`` once the window holds, a backoff until then)."""
        try:
            cap = self._cap_in_force(self.settings.stream, self._clock())
        except Exception as exc:  # the cap's source (a store) failing leaves Listmonk as it is
            log.warning("listmonk %s: the cap in force of stream %s cannot be read (%s); retrying",
                        self._label, self.settings.stream, exc)  # fmt: skip
            return self._retry()
        choice = window_for(cap, self._share, self._hour)
        self._announce(choice)
        try:
            outcome = self._converge(cap, choice)
        except ListmonkError as exc:
            metrics.WINDOW_MISMATCH.labels(self._label).set(1)
            self._failed(str(exc))
            return self._retry()
        if self._last_error is not None:
            log.info("listmonk %s: answers again", self._label)
            self._last_error = None
        if outcome == IN_FORCE:
            self._delay = self._retry_first
            return self.settings.interval
        if outcome == APPLIED:
            return self._reload_grace
        return self._retry()

    def _retry(self) -> float:
        delay = self._delay
        self._delay = min(self._delay * 2, self._retry_max)
        return delay

    def _failed(self, what: str) -> None:
        if what != self._last_error:
            log.warning("listmonk %s: %s; retrying (the policy daemon is not affected)", self._label, what)
        self._last_error = what

    # -- one pass -----------------------------------------------------------------------

    def _announce(self, choice: Choice) -> None:
        if choice.window != self._target:
            self._target = choice.window
            level = log.info if choice.exact else log.warning
            level("listmonk %s: stream %s: the window to set is %s: %s", self._label, self.settings.stream,
                  window_text(choice.window), choice.reason)  # fmt: skip
        if choice.window is None:
            if self._gauges:
                metrics.WINDOW_RATE.remove(self._label)
                metrics.WINDOW_SECONDS.remove(self._label)
                self._gauges = False
        else:
            metrics.WINDOW_RATE.labels(self._label).set(choice.window.rate)
            metrics.WINDOW_SECONDS.labels(self._label).set(choice.window.seconds)
            self._gauges = True

    def _converge(self, cap: CapInForce, choice: Choice) -> str:
        """Bring Listmonk to ``choice``: IN_FORCE (read back), APPLIED (verified next pass) or PENDING."""
        want = choice.window
        if cap.paused and self.settings.pause_campaigns:
            self._pause_running("for_pause", f"stream {self.settings.stream} is {cap.reason}")
        current_settings = self.client.get_settings()
        current = window_in_force(current_settings.get(ENABLED), current_settings.get(RATE), current_settings.get(DURATION))
        pending = self.client.needs_restart()
        if current == want and not pending:
            metrics.WINDOW_MISMATCH.labels(self._label).set(0)
            if self._verified != want:
                log.info("listmonk %s: window %s in force (read back)", self._label, window_text(want))
                self._verified = want
            self._waiting_for = _UNSET
            self._after_apply(cap)
            if not cap.paused:
                self._after_resume()
            return IN_FORCE
        metrics.WINDOW_MISMATCH.labels(self._label).set(1)
        if self._verified == want and current != want:
            log.warning("listmonk %s: the window was changed outside sendguard (to %s); setting %s again",
                        self._label, window_text(current), window_text(want))  # fmt: skip
        self._verified = _UNSET
        try:
            applied = self.client.put_settings(with_window(current_settings, want))
        except ListmonkError:
            metrics.UPDATES.labels(self._label, "failed").inc()
            raise
        stored = "stored before, not applied yet" if current == want else f"was {window_text(current)}"
        if applied:
            metrics.UPDATES.labels(self._label, "applied").inc()
            log.info("listmonk %s: set window %s (%s): applied, Listmonk reloads", self._label, window_text(want), stored)
            return APPLIED  # read back by the next pass, once Listmonk has restarted
        metrics.UPDATES.labels(self._label, "needs_restart").inc()
        briefly = self.settings.apply_while_running == "pause_briefly"
        if self._waiting_for != want:  # said once per window, not at every retry
            self._waiting_for = want
            if briefly:
                log.info("listmonk %s: set window %s (%s): stored, but campaigns are running; pausing them so it"
                         " applies", self._label, window_text(want), stored)  # fmt: skip
            else:
                log.warning("listmonk %s: set window %s (%s): stored, but Listmonk applies it only once no campaign"
                            " runs (apply_while_running = \"wait\"); retrying", self._label, window_text(want), stored)
        if briefly:
            # Every try: a campaign started by hand meanwhile would keep the change from applying.
            self._pause_running("for_apply", f"to apply window {window_text(want)}")
        return PENDING

    # -- campaigns ----------------------------------------------------------------------

    def _pause_running(self, kind: str, why: str) -> None:
        record: dict[int, str] = getattr(self.paused, kind)
        for campaign in self.client.running_campaigns():
            try:
                self.client.set_campaign_status(campaign.id, "paused")
            except ListmonkError as exc:  # it may have finished in between: the others still get paused
                log.warning("listmonk %s: cannot pause campaign %r (id %d): %s", self._label, campaign.name, campaign.id, exc)
                continue
            record[campaign.id] = campaign.name
            self.paused.save()
            metrics.CAMPAIGN_CHANGES.labels(self._label, "paused").inc()
            log.info("listmonk %s: paused campaign %r (id %d): %s", self._label, campaign.name, campaign.id, why)

    def _start(self, kind: str, why: str) -> None:
        record: dict[int, str] = getattr(self.paused, kind)
        for campaign_id, name in sorted(record.items()):
            try:
                status = self.client.campaign(campaign_id).status
                if status == "paused":
                    self.client.set_campaign_status(campaign_id, "running")
                    metrics.CAMPAIGN_CHANGES.labels(self._label, "started").inc()
                    log.info("listmonk %s: started campaign %r (id %d) again: %s", self._label, name, campaign_id, why)
                else:
                    log.info("listmonk %s: campaign %r (id %d) is %s now: not started", self._label, name, campaign_id, status)
            except ListmonkError as exc:
                if exc.status is None or exc.status >= 500:
                    raise  # Listmonk is away: try again next pass, the record kept
                log.warning("listmonk %s: cannot start campaign %r (id %d): %s", self._label, name, campaign_id, exc)
            del record[campaign_id]
            self.paused.save()

    def _after_apply(self, cap: CapInForce) -> None:
        """The window holds: start again the campaigns paused for applying it."""
        if not self.paused.for_apply:
            return
        if cap.paused and self.settings.pause_campaigns:
            # Paused for the change, and the stream is paused: they stay paused with the stream.
            self.paused.for_pause.update(self.paused.for_apply)
            self.paused.for_apply.clear()
            self.paused.save()
            return
        self._start("for_apply", "the window change is applied")

    def _after_resume(self) -> None:
        """The stream is no longer paused and its window holds: the campaigns paused with it."""
        if not self.paused.for_pause:
            return
        if self.settings.resume_campaigns:
            self._start("for_pause", f"stream {self.settings.stream} is no longer paused")
            return
        names = ", ".join(f"{name!r} (id {cid})" for cid, name in sorted(self.paused.for_pause.items()))
        log.warning("listmonk %s: stream %s is no longer paused; campaigns %s stay paused (resume_campaigns = false):"
                    " start them in Listmonk when ready", self._label, self.settings.stream, names)  # fmt: skip
        self.paused.for_pause.clear()
        self.paused.save()

