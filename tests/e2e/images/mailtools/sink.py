#!/usr/bin/env python3
"""The end-to-end suite's sink: an SMTP server that stores every message it receives.

Each message becomes two files in the spool directory (a host folder the tests
read): ``NNNNNN.json`` with the envelope and ``NNNNNN.eml`` with the raw bytes
exactly as Postfix delivered them. The .eml is renamed into place last, so a
reader that sees it sees a complete message.

A receiver's stop signal, on demand: while ``SPOOL/defer/DOMAIN`` exists, every
RCPT to that domain is answered with the file's text (for instance Yahoo's
``421 4.7.0 [TSS04] Messages from 172.30.25.4 temporarily deferred ...``), so
Postfix logs real deferrals for the watcher to read.

The sink does not announce 8BITMIME: it is the strictest next hop, to which
Postfix would downgrade an 8-bit body to quoted-printable after signing unless
the snippets stop it (disable_mime_output_conversion).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

SPOOL = os.environ.get("SINK_SPOOL", "/sink")
_seq = itertools.count(1)


class Store:
    """aiosmtpd handler writing each message to the spool."""

    async def handle_EHLO(self, server: SMTP, session, envelope, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [r for r in responses if "8BITMIME" not in r.upper()]

    async def handle_RCPT(self, server: SMTP, session, envelope, address: str, rcpt_options: list[str]) -> str:
        domain = address.rpartition("@")[2].lower()
        rule = os.path.join(SPOOL, "defer", domain)
        if domain and os.path.isfile(rule):
            with open(rule) as fh:
                reply = fh.read().strip()
            print(f"sink: RCPT {address}: {reply}", flush=True)
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session, envelope) -> str:
        n = next(_seq)
        base = os.path.join(SPOOL, f"{int(time.time() * 1000):013d}-{n:06d}")
        meta = {
            "peer": session.peer[0],
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "received_at": time.time(),
        }
        with open(base + ".json", "w") as fh:
            json.dump(meta, fh)
        with open(base + ".tmp", "wb") as fh:
            fh.write(envelope.original_content or envelope.content)
        os.rename(base + ".tmp", base + ".eml")
        print(f"sink: stored {base}.eml from {envelope.mail_from} to {envelope.rcpt_tos}", flush=True)
        return "250 2.0.0 stored"


def main() -> None:
    os.makedirs(SPOOL, exist_ok=True)
    # decode_data=False keeps the bytes as sent: DKIM verification needs them raw.
    controller = Controller(Store(), hostname="0.0.0.0", port=25, decode_data=False, enable_SMTPUTF8=True,
                            server_hostname="sink.test")
    controller.start()
    print("sink: listening on 0.0.0.0:25", flush=True)
    try:
        asyncio.get_event_loop().run_forever()
    except KeyboardInterrupt:
        pass
    controller.stop()


if __name__ == "__main__":
    sys.exit(main())
