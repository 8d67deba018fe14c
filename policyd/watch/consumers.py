"""The consumers every delivery is handed to: the one place they are listed.

The watcher calls each in turn, in log order, on its own thread: the metrics
(``metrics.py``), the stop-signal rules that pause a stream and step its ramp
back (``stop_signals.py``), and the sending-day counter of the warmup
(``sending_days.py``). The rules and the counter write to the watcher's own
store connection; the policy daemon reads what they wrote (its pause board
within a second, its ramp refresher within a minute).
"""

from __future__ import annotations

from typing import Sequence

from sendguard.config import Config
from sendguard_policyd.sending_days import SendingDays
from sendguard_policyd.settings import PolicydSettings
from sendguard_policyd.stop_signal_rules import Rule
from sendguard_policyd.stop_signals import StopSignals
from sendguard_policyd.store import CounterStore
from sendguard_policyd.warmup import make_warmups
from sendguard_policyd.watch import DeliveryConsumer
from sendguard_policyd.watch.metrics import DeliveryMetrics


def consumers(
    config: Config, settings: PolicydSettings, store: CounterStore, rules: Sequence[Rule] = ()
) -> list[DeliveryConsumer]:
    """The consumers of a running watcher, for ``config``'s streams, counting in ``store``, with the
    stop-signal ``rules`` (``[stop_signals.*]`` and the built-in ones)."""
    names = [s.name for s in config.streams]
    out: list[DeliveryConsumer] = [DeliveryMetrics()]
    if rules:
        out.append(StopSignals(rules, names, store, on_step_back=store.step_back))
    out.append(SendingDays(make_warmups(config.streams, settings), store))
    return out
