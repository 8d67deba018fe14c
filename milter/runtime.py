"""What every connection of the milter shares: the settings, the streams and the keys in service."""

from __future__ import annotations

from sendguard.streams import Stream

from .keys import KeyStore
from .published_keys import PublishedKeyCheck
from .settings import MilterSettings


class Runtime:
    """The settings, streams and keys one message is handled with (a reload swaps the whole Runtime)."""

    def __init__(
        self, settings: MilterSettings, streams: tuple[Stream, ...], keys: KeyStore, published: PublishedKeyCheck | None = None
    ) -> None:
        self.settings = settings
        self.streams = streams
        self.keys = keys
        #: The published-record check, with ``[signing] verify_published_keys``.
        self.published = published

    def key_problem(self, name: str) -> str | None:
        """Why key ``name``'s published record does not match it (None when it does or is not checked)."""
        return self.published.problem(name) if self.published is not None else None

    def start_watching(self) -> None:
        """Start the key-file watcher and the published-record check."""
        self.keys.watch(self.settings.key_check_interval)
        if self.published is not None:
            self.published.watch(self.settings.published_key_interval)

    def stop_watching(self) -> None:
        """Stop both threads."""
        self.keys.stop()
        if self.published is not None:
            self.published.stop()
