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

Besides port 25 (store everything) it plays the receivers whose answers the
watcher reads (test-main.cf routes test domains to these ports; each port is
its own Postfix destination, so a failing one never suspends delivery to 25):

* 2521: every MAIL FROM is answered with Yahoo's ``421 4.7.0 [TSS04]`` deferral;
* 2550: each RCPT is answered by its local part (:data:`REPLIES`: Gmail's multi-line
  ``550-5.7.1`` unsolicited bounce, Microsoft's ``451 4.7.500`` and ``451 4.4.4``,
  a full mailbox, an unknown user); any other local part is accepted and stored;
* 2424: LMTP, storing everything (Postfix's lmtp client).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP

YAHOO_TSS04 = (
    "421 4.7.0 [TSS04] Messages from 172.30.25.4 temporarily deferred due to unexpected volume or user"
    " complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"
)

#: Port 2550's answer per recipient local part (real receivers' texts; multi-line where theirs are).
REPLIES = {
    "unsolicited": "\r\n".join((
        "550-5.7.1 [172.30.25.4] Gmail has detected that this message is likely unsolicited mail. To reduce",
        "550-5.7.1 the amount of spam sent to Gmail, this message has been blocked. For more information, go to",
        "550 5.7.1  https://support.google.com/mail/?p=UnsolicitedMessageError a1-20020a170906 - gsmtp",
    )),
    "unknown": "\r\n".join((
        "550-5.1.1 The email account that you tried to reach does not exist. Please try",
        "550-5.1.1 double-checking the recipient's email address for typos or",
        "550 5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser b2-20020a17 - gsmtp",
    )),
    "full": "452 4.2.2 The recipient's inbox is out of storage space. Please direct the recipient to"
    " https://support.google.com/mail/?p=OverQuotaTemp c3-20020a17 - gsmtp",
    "busy": "451 4.7.500 Server busy. Please try again later from [172.30.25.4]. (S77714)"
    " [DB5EUR03FT012.eop-EUR03.prod.protection.outlook.com 2024-03-01T10:00:00.000Z 08DC39A1B2C3D4E5]",
    "tenant": "451 4.4.4 Mail received as unauthenticated, incoming to a recipient domain configured in a hosted"
    " tenant which has no mail-enabled subscriptions. ATTR5 [AM4PEPF00027A5F.eurprd04.prod.outlook.com]",
    "blocklist": "550 5.7.1 Unfortunately, messages from [172.30.25.4] weren't sent. Please contact your Internet"
    " service provider since part of their network is on our block list (S3150). You can also refer your"
    " provider to http://mail.live.com/mail/troubleshooting.aspx#errors. [AM4PEPF00025F97.EURPRD83.prod.outlook.com]",
}

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


class Deferring(Store):
    """Port 2521: a receiver that defers every sender (Yahoo's TSS04)."""

    async def handle_MAIL(self, server: SMTP, session, envelope, address: str, mail_options: list[str]) -> str:
        return YAHOO_TSS04


class Answering(Store):
    """Port 2550: each recipient answered as its local part says (REPLIES), others accepted."""

    async def handle_RCPT(self, server: SMTP, session, envelope, address: str, rcpt_options: list[str]) -> str:
        reply = REPLIES.get(address.partition("@")[0].lower())
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"


class LMTPController(Controller):
    def factory(self):
        return LMTP(self.handler, **self.SMTP_kwargs)


def main() -> None:
    os.makedirs(SPOOL, exist_ok=True)
    # decode_data=False keeps the bytes as sent: DKIM verification needs them raw.
    options = dict(hostname="0.0.0.0", decode_data=False, enable_SMTPUTF8=True, server_hostname="sink.test")
    controllers = [
        Controller(Store(), port=25, **options),
        Controller(Deferring(), port=2521, **options),
        Controller(Answering(), port=2550, **options),
        LMTPController(Store(), port=2424, **options),
    ]
    for controller in controllers:
        controller.start()
    print("sink: listening on 0.0.0.0:25 (and 2521, 2550, 2424: see its docstring)", flush=True)
    try:
        asyncio.get_event_loop().run_forever()
    except KeyboardInterrupt:
        pass
    for controller in controllers:
        controller.stop()


if __name__ == "__main__":
    sys.exit(main())
