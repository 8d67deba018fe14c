"""A real authoritative DNS server for tests: Debian's NSD, unprivileged, on 127.0.0.1 and a free port.

NSD runs in the foreground (``-d``) with its own config file: no chroot, no
privilege drop (``username: ""``), no database file (``database: ""``, NSD 4's
zone files read directly), pid, state and log files in the test's directory,
no remote control. Every zone given is served from a zone file written there.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode

from ports import free_port

NSD = "/usr/sbin/nsd"


def _udp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class NsdServer:
    """NSD serving ``zones`` (origin -> zone-file text) from ``directory``; :meth:`stop` ends it."""

    def __init__(self, directory: Path, zones: dict[str, str]) -> None:
        if shutil.which(NSD) is None and not Path(NSD).exists():
            raise RuntimeError("nsd is not installed (apt-get install nsd; scripts/bootstrap.sh test installs it)")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = next(p for p in iter(free_port, None) if _udp_free(p))
        self.zones = zones
        conf = [
            "server:",
            f"  ip-address: 127.0.0.1@{self.port}",
            "  do-ip6: no",
            '  username: ""',
            '  chroot: ""',
            '  database: ""',
            f'  zonesdir: "{directory}"',
            f'  pidfile: "{directory}/nsd.pid"',
            f'  xfrdfile: "{directory}/xfrd.state"',
            f'  zonelistfile: "{directory}/zone.list"',
            f'  xfrdir: "{directory}"',
            f'  logfile: "{directory}/nsd.log"',
            "  server-count: 1",
            "  verbosity: 1",
            "remote-control:",
            "  control-enable: no",
        ]
        for origin, text in zones.items():
            zone_file = f"{origin}.zone"
            (directory / zone_file).write_text(text)
            conf += ["zone:", f"  name: {origin}", f"  zonefile: {zone_file}"]
        self.config = directory / "nsd.conf"
        self.config.write_text("\n".join(conf) + "\n")
        self.log = directory / "nsd.log"
        self.process = subprocess.Popen(
            [NSD, "-d", "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=open(directory / "nsd.stderr", "wb")
        )
        self._wait_ready()

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, as ``--nameserver`` takes it."""
        return f"127.0.0.1:{self.port}"

    def _wait_ready(self, timeout: float = 15.0) -> None:
        """Until every zone's SOA is answered with authority (NSD loads zones after it binds)."""
        deadline = time.monotonic() + timeout
        pending = set(self.zones)
        while pending:
            if self.process.poll() is not None:
                raise RuntimeError(f"nsd exited with {self.process.returncode}: {self._logs()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nsd did not serve {sorted(pending)} within {timeout} s: {self._logs()}")
            for origin in list(pending):
                try:
                    reply = dns.query.udp(dns.message.make_query(origin, "SOA"), "127.0.0.1", timeout=0.5, port=self.port)
                except (OSError, dns.exception.Timeout):
                    continue
                if reply.rcode() == dns.rcode.NOERROR and reply.answer:
                    pending.discard(origin)
            if pending:
                time.sleep(0.05)

    def _logs(self) -> str:
        parts = [p.read_text(errors="replace") for p in (self.log, self.directory / "nsd.stderr") if p.exists()]
        return " | ".join(parts)[-2000:]

    def stop(self) -> None:
        """End NSD (SIGTERM, then SIGKILL if it lingers)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
