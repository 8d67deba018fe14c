"""The Prometheus endpoint both services share.

Metrics are registered on prometheus_client's default registry by each part at
import time; this module only serves them. ``sendguard run`` serves one endpoint
for both services (at ``policyd.metrics_listen``); each service run alone serves
its own.
"""

from __future__ import annotations

from prometheus_client import disable_created_metrics, start_http_server

from sendguard import logs
from sendguard.addresses import parse_hostport

log = logs.get("metrics")


# The *_created series double every counter's output and no dashboard uses them.
disable_created_metrics()


class ListenError(Exception):
    """The metrics endpoint could not be opened (address in use, not local, no permission)."""


def serve(listen: str, what: str = "sendguard"):
    """Start serving /metrics on ``host:port`` in a daemon thread (logged, with ``what`` it serves); return the server."""
    host, port = parse_hostport(listen)
    try:
        server, _thread = start_http_server(port, addr=host)
    except OSError as exc:
        raise ListenError(f"cannot serve metrics on {listen}: {exc.strerror or exc}") from None
    shown = f"[{host}]" if ":" in host else host
    log.info("metrics of %s on http://%s:%d/metrics", what, shown, port)
    return server
