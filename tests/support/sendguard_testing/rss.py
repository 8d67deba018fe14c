"""Resident memory of running processes, read from /proc: one reading, or sampled in the background."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class RssSampler:
    """Samples the RSS of named processes every ``interval`` seconds in a thread, each sample
    tagged with ``progress()`` (messages done, say), until :meth:`stop`."""

    pids: dict[str, int]
    progress: Callable[[], int]
    interval: float = 1.0
    #: (progress, {name: MB}) per sample, oldest first.
    samples: list[tuple[int, dict[str, float]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def sample(self) -> None:
        """Take one sample now."""
        self.samples.append((self.progress(), {name: rss_mb(pid) for name, pid in self.pids.items()}))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        """Stop sampling, with one last sample (once: a second call does nothing)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.sample()

    def at(self, name: str, progress: int) -> float:
        """``name``'s RSS at the first sample taken once ``progress`` was reached (the last one if never)."""
        for done, values in self.samples:
            if done >= progress:
                return values[name]
        return self.samples[-1][1][name]

    def peak(self, name: str) -> float:
        """The highest RSS sampled for ``name``."""
        return max(values[name] for _, values in self.samples)
