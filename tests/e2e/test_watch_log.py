"""The watcher's parser on the delivery lines the real Postfix 3.7 of the stack writes.

The sink plays the receivers (tests/e2e/images/mailtools/sink.py): Gmail's
multi-line 550-5.7.1, Yahoo's 421 TSS04 at MAIL FROM, Microsoft's 451 4.7.500
and 451 4.4.4, a full mailbox, an unknown user; a port with no listener gives
"Connection refused" (and "delivery temporarily suspended" for the mail
behind it), the error transport and the lmtp client log their own lines, and
a message with ``maximal_queue_lifetime = 0`` expires at its first deferral.
Every line Postfix logged for these messages must parse, with the outcome and
reason the receiver's answer means. ``tests/policyd/data/postfix-3.7-maillog.txt``
holds the lines of one such run (set SENDGUARD_WATCH_CAPTURE=FILE to write them again).
"""

from __future__ import annotations

import os
import re
import time

import pytest

from e2e_stack import Stack, make_message, queue_id  # noqa: E402 (tests/e2e is on sys.path via conftest)
from sendguard_policyd.watch.classify import classify
from sendguard_policyd.watch.parse import DELIVERY, UNPARSED, parse_line

pytestmark = pytest.mark.container

SENDER = "billing@example.net"

#: recipient -> (status, reason) the parser must read from Postfix's line for it.
EXPECTED = {
    "ok@replies.test": ("sent", ""),
    "unsolicited@replies.test": ("bounced", "reputation"),
    "unknown@replies.test": ("bounced", "user_unknown"),
    "blocklist@replies.test": ("bounced", "reputation"),
    "full@replies.test": ("deferred", "mailbox_full"),
    "busy@replies.test": ("deferred", "rate_limited"),
    "tenant@replies.test": ("deferred", "dead_tenant"),
    "carrier@tss04.test": ("deferred", "reputation"),
    "box@lmtp.test": ("sent", ""),
    "nobody@error.test": ("bounced", "user_unknown"),
}


def _lines_of(stack: Stack, qids: set[str]) -> list[str]:
    out = []
    for line in stack.logs("postfix").splitlines():
        m = re.search(r" postfix/[\w/.-]+\[\d+\]: ([0-9A-Za-z]+): ", line)
        if m and m[1] in qids:
            out.append(line)
    return out


def _wait_for(stack: Stack, qids: set[str], done, timeout: float = 90) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = _lines_of(stack, qids)
        if done(lines):
            return lines
        if time.monotonic() > deadline:
            raise AssertionError("Postfix did not log the expected lines in time:\n" + "\n".join(lines))
        time.sleep(0.5)


def _wait_for_qid(stack: Stack, token: str, timeout: float = 30) -> str:
    """The queue id of the message whose Message-ID carries ``token`` (cleanup logs it)."""
    deadline = time.monotonic() + timeout
    while True:
        m = re.search(rf"postfix/cleanup\[\d+\]: ([0-9A-Za-z]+): message-id=<{re.escape(token)}\.", stack.logs("postfix"))
        if m:
            return m[1]
        assert time.monotonic() < deadline, f"no cleanup line for {token}"
        time.sleep(0.3)


def _submit(stack: Stack, token: str, rcpts: list[str]) -> str:
    r = stack.submit("app", make_message(token, SENDER, rcpts[0]), SENDER, rcpts)
    assert r.accepted, r
    return queue_id(r)


def test_postfix_delivery_lines_parse_with_their_outcome_and_reason(stack: Stack, token: str):
    queued: set[str] = set()
    try:
        _check_lines(stack, token, queued)
    finally:
        # The deferred ones would be retried for days: nothing of this test stays in the queue for the next.
        for qid in queued:
            stack.exec("postfix", "postsuper", "-d", qid, check=False)


def _check_lines(stack: Stack, token: str, queued: set[str]) -> None:
    qids: dict[str, str] = {}
    replies = [r for r in EXPECTED if r.endswith("@replies.test")]
    qid = _submit(stack, token, replies)
    qids.update({r: qid for r in replies})
    for rcpt in ("carrier@tss04.test", "box@lmtp.test"):
        qids[rcpt] = _submit(stack, token, [rcpt])
    # smtpd refuses a recipient whose transport is the error service at RCPT: submitted locally
    # instead, the error delivery agent logs its bounce.
    local = f"{token}-err"
    stack.sendmail(make_message(local, SENDER, "nobody@error.test"), SENDER, ["nobody@error.test"])
    qids["nobody@error.test"] = _wait_for_qid(stack, local)
    # Two messages to a port with no listener: the first is refused, the second (if qmgr already
    # knows the destination dead) is deferred without a try, "delivery temporarily suspended".
    refused = {_submit(stack, token, [f"r{i}@refused.test"]) for i in range(2)}
    queued.update(qids.values(), refused)

    def complete(lines: list[str]) -> bool:
        seen = {(m[1], m[2]) for m in (re.search(r"([0-9A-Za-z]+): to=<([^>]+)>.* status=", l) for l in lines) if m}
        return all((q, r) in seen for r, q in qids.items()) and sum(1 for q, _ in seen if q in refused) >= 2

    lines = _wait_for(stack, set(qids.values()) | refused, complete)

    # Expiry: maximal_queue_lifetime = 0 tries once, then qmgr returns the mail to its sender.
    stack.exec("postfix", "postconf", "-e", "maximal_queue_lifetime=0")
    stack.exec("postfix", "postfix", "reload")
    try:
        expiring = _submit(stack, token, ["expiring@tss04.test"])
        expired_lines = _wait_for(stack, {expiring}, lambda ls: any("status=expired" in l for l in ls))
    finally:
        stack.exec("postfix", "postconf", "-X", "maximal_queue_lifetime")
        stack.exec("postfix", "postfix", "reload")
    lines += expired_lines

    capture = os.environ.get("SENDGUARD_WATCH_CAPTURE")
    if capture:
        with open(capture, "w") as fh:
            fh.write("\n".join(lines) + "\n")

    parsed = [parse_line(line) for line in lines]
    assert not [line for line, p in zip(lines, parsed) if p.kind == UNPARSED]
    attempts = [p.attempt for p in parsed if p.kind == DELIVERY and p.attempt is not None]
    by_rcpt = {(a.queue_id, a.recipient): a for a in attempts}
    for rcpt, (status, reason) in EXPECTED.items():
        a = by_rcpt[(qids[rcpt], rcpt)]
        assert (a.status, classify(a.status, a.dsn, a.reply)) == (status, reason), a
    assert by_rcpt[(qids["ok@replies.test"], "ok@replies.test")].relay_ip == "172.30.25.10"
    assert by_rcpt[(qids["nobody@error.test"], "nobody@error.test")].relay == ""  # relay=none
    gmail = by_rcpt[(qids["unsolicited@replies.test"], "unsolicited@replies.test")]
    assert "550-5.7.1" in gmail.reply and "550 5.7.1" in gmail.reply  # the multi-line reply, joined
    assert "(in reply to RCPT TO command)" in gmail.reply
    tss04 = by_rcpt[(qids["carrier@tss04.test"], "carrier@tss04.test")]
    assert "[TSS04]" in tss04.reply and "in reply to MAIL FROM command" in tss04.reply
    refusals = [a for a in attempts if a.queue_id in refused]
    assert all(a.status == "deferred" and classify(a.status, a.dsn, a.reply) == "other" for a in refusals)
    assert any("Connection refused" in a.reply for a in refusals)
    expired = [a for a in attempts if a.queue_id == expiring and a.status == "expired"]
    assert len(expired) == 1 and expired[0].recipient == ""
