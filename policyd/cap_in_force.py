"""The cap in force for a stream at one instant: what a mail generator must never try to exceed.

The policy daemon enforces the caps on what reaches Postfix; a generator told
the same caps (Listmonk's sliding window, ``sendguard_policyd.listmonk``)
never even tries to exceed them. :class:`CapInForce` is what such a consumer
asks for, through a :data:`CapInForceSource`: a plain function of
``(stream, now)``, so whoever composes the services can answer it from the
warmup ramp, the stop-signal pauses, the step-backs — whatever decides the
cap. :class:`WarmupCapInForce` is the answer from the warmup ramp and the
ceilings alone, with an optional pause lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from sendguard.streams import Stream
from sendguard_policyd.warmup import Warmup, cap_text


@dataclass(frozen=True)
class CapInForce:
    """The caps a stream's mail must stay under at one instant."""

    #: Recipients per rolling hour (None: no hourly cap).
    hourly: int | None
    #: Recipients per rolling 24 hours (None: no daily cap).
    daily: int | None
    #: The whole stream is paused: nothing of it may be sent, whatever the caps say.
    paused: bool
    #: Why these caps, for the logs ("warmup day 3", "paused: gmail_unsolicited").
    reason: str


#: ``(stream, now) -> CapInForce``: what a consumer of the caps calls; ``now`` is a Unix time.
CapInForceSource = Callable[[str, float], CapInForce]

#: ``(stream, now) -> reason or None``: whether the whole stream is paused at ``now`` (None: it is not).
PauseLookup = Callable[[str, float], "str | None"]


class WarmupCapInForce:
    """The cap in force from each stream's ramp, hourly ceiling and daily cap (``warmup.Warmup.caps``).

    ``paused`` answers whether a stream is paused (the stop signals' pauses are
    wired in there); without it no stream is ever paused. A stream this does
    not know has no cap at all (reason "unknown stream"), which a consumer
    must not take as permission: the settings refuse a Listmonk fed by a
    stream that is not configured.
    """

    def __init__(
        self, streams: Sequence[Stream], paused: PauseLookup | None = None, warmups: Mapping[str, Warmup] | None = None
    ) -> None:
        """``warmups``: the streams' warmups, kept fed with their ramp history (ramp_refresh.py) so the
        cap is the effective warmup day's; default: calendar days from the streams' settings alone."""
        self._warmups = dict(warmups) if warmups is not None else {s.name: Warmup(s) for s in streams}
        self._paused = paused

    def __call__(self, stream: str, now: float) -> CapInForce:
        """The cap in force for ``stream`` at ``now``."""
        warmup = self._warmups.get(stream)
        if warmup is None:
            return CapInForce(hourly=None, daily=None, paused=False, reason="unknown stream")
        caps = warmup.caps(now)
        if caps.warmup_day is None:
            why = f"hourly cap {cap_text(caps.hourly)}, daily cap {cap_text(caps.daily)}"
        else:
            why = f"warmup day {caps.warmup_day}: hourly cap {cap_text(caps.hourly)}, daily cap {cap_text(caps.daily)}"
        pause = self._paused(stream, now) if self._paused is not None else None
        if pause is not None:
            return CapInForce(hourly=caps.hourly, daily=caps.daily, paused=True, reason=f"paused ({pause}); {why}")
        return CapInForce(hourly=caps.hourly, daily=caps.daily, paused=False, reason=why)
