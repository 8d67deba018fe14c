"""The Listmonk campaigns sendguard paused, remembered in a file so a restart of sendguard forgets none.

Two kinds: campaigns paused because their stream is paused (``pause_campaigns``),
and campaigns paused for a moment so that a settings change applies
(``apply_while_running = "pause_briefly"``). Only these are ever started again
by sendguard: a campaign an operator paused is none of its business.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sendguard import logs

log = logs.get("policyd.listmonk")

KINDS = ("for_pause", "for_apply")


class PausedCampaigns:
    """Campaign id -> name, per kind, saved to ``path`` (JSON) after every change."""

    def __init__(self, path: str) -> None:
        self.path = Path(path) if path else None
        self.for_pause: dict[int, str] = {}
        self.for_apply: dict[int, str] = {}
        self._load()

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            for kind in KINDS:
                record = data.get(kind, {})
                getattr(self, kind).update({int(k): str(v) for k, v in record.items()})
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            # An unreadable record loses only which campaigns to start again: they stay paused, the safe side.
            log.warning("%s cannot be read (%s): the campaigns it names stay paused until started by hand", self.path, exc)

    def save(self) -> None:
        """Write the record (atomically: a crash leaves the old one or the new one)."""
        if self.path is None:
            return
        data = {kind: {str(k): v for k, v in getattr(self, kind).items()} for kind in KINDS}
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot save %s (%s): the campaigns sendguard paused are remembered until it stops", self.path, exc)
