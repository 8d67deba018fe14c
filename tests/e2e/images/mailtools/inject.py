#!/usr/bin/env python3
"""Submit one message (read from stdin) over SMTP and print what the server answered, as JSON.

Stands in for Listmonk and other injectors: the tests exec it inside a
container with a fixed address, so Postfix sees that address as the client.
Every reply is reported, never raised: a refusal is a result the tests check.

usage: inject.py --port 25 --from ADDR --to ADDR [--to ADDR ...] [--host postfix] < message
"""

from __future__ import annotations

import argparse
import json
import smtplib
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="postfix")
    ap.add_argument("--port", type=int, default=25)
    ap.add_argument("--from", dest="sender", required=True)
    ap.add_argument("--to", dest="rcpts", action="append", required=True)
    ap.add_argument("--helo", default="injector.test")
    args = ap.parse_args()
    message = sys.stdin.buffer.read()

    result: dict = {"stage": "connect", "code": 0, "message": "", "rcpt": {}}
    try:
        with smtplib.SMTP(args.host, args.port, local_hostname=args.helo, timeout=60) as smtp:
            smtp.ehlo()
            result["stage"] = "mail"
            code, msg = smtp.mail(args.sender, ["BODY=8BITMIME"] if smtp.has_extn("8bitmime") else [])
            result.update(code=code, message=msg.decode(errors="replace"))
            if code != 250:
                return _done(result)
            result["stage"] = "rcpt"
            accepted = 0
            for rcpt in args.rcpts:
                code, msg = smtp.rcpt(rcpt)
                result["rcpt"][rcpt] = [code, msg.decode(errors="replace")]
                result.update(code=code, message=msg.decode(errors="replace"))
                accepted += code in (250, 251)
            if not accepted:
                return _done(result)
            result["stage"] = "data"
            code, msg = _data(smtp, message)
            result.update(code=code, message=msg)
    except (OSError, smtplib.SMTPException) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, smtplib.SMTPResponseException):
            result.update(code=exc.smtp_code, message=exc.smtp_error.decode(errors="replace"))
    return _done(result)


def _data(smtp: smtplib.SMTP, message: bytes) -> tuple[int, str]:
    try:
        code, msg = smtp.data(message)
    except smtplib.SMTPDataError as exc:
        return exc.smtp_code, exc.smtp_error.decode(errors="replace")
    return code, msg.decode(errors="replace")


def _done(result: dict) -> int:
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
