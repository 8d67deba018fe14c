"""The consumers every delivery is handed to: the one place they are listed.

The watcher calls each in turn, in log order, on its own thread. Here: the
metrics (``metrics.py``). The stop-signal rules and the sending-day counter
join them here.
"""

from __future__ import annotations

from sendguard.config import Config
from sendguard_policyd.settings import PolicydSettings
from sendguard_policyd.store import CounterStore
from sendguard_policyd.watch import DeliveryConsumer
from sendguard_policyd.watch.metrics import DeliveryMetrics


def consumers(config: Config, settings: PolicydSettings, store: CounterStore) -> list[DeliveryConsumer]:
    """The consumers of a running watcher, for ``config``'s streams, counting in ``store``."""
    return [DeliveryMetrics()]
