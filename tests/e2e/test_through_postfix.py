"""sendguard through a real Postfix, wired only with postfix-snippets/ (docker-compose.test.yml).

Each test submits mail over SMTP from an injector container with a fixed
address (or with sendmail inside the Postfix container) and checks what the
injector was answered, what the sink received, and what Postfix's queue and
logs hold. The numbers follow tests/e2e/sendguard.test.toml: trusted clients
172.30.25.5 (listmonk, trucking stream, port 25, cap 3/h), 172.30.25.25
(listmonk-hc, healthcare stream, port 2526, cap 2/h) and 172.30.25.7 (app, no
stream); 172.30.25.66 (outsider) is on the same network and not trusted.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import time

import pytest
from e2e_stack import BULK_HEADERS, Stack, Submission, container, dkim_tags, make_message, metric, wait_for_sendguard

pytestmark = pytest.mark.container

CAPS = {"trucking": 3, "healthcare": 2}
#: Which injector and port feed each stream.
STREAM_SOURCE = {"trucking": ("listmonk", 25), "healthcare": ("listmonk-hc", 2526)}


def _signed_by(stack: Stack, raw: bytes, domain: str, selector: str) -> None:
    tags = dkim_tags(raw)
    assert tags, f"no DKIM-Signature on the delivered message:\n{raw[:1500]!r}"
    assert (tags[0].get("d"), tags[0].get("s")) == (domain, selector), f"signed with {tags[0]}"
    assert stack.dkim_verify(raw), f"dkimpy does not verify the delivered message:\n{raw[:3000]!r}"


# 1 --------------------------------------------------------------------------------------------------


def test_trusted_client_mail_is_signed_per_domain_and_verifies(stack: Stack, token: str) -> None:
    """A trusted client's mail leaves signed with the From domain's own key and selector."""
    bulk = make_message(token + "-send", "Trucking News <noreply@send.example.net>", "carrier@example.com",
                        headers={**BULK_HEADERS, "Reply-To": "info@example.net"})
    root = make_message(token + "-root", "Billing <billing@example.net>", "customer@example.com")

    r1 = stack.submit("app", bulk, "bounces@send.example.net", ["carrier@example.com"])
    r2 = stack.submit("app", root, "billing@example.net", ["customer@example.com"])
    assert r1.accepted, r1
    assert r2.accepted, r2

    [sent] = stack.wait_for_sink(token + "-send")
    _signed_by(stack, sent.raw, "send.example.net", "send")
    [rooted] = stack.wait_for_sink(token + "-root")
    _signed_by(stack, rooted.raw, "example.net", "mail")
    # From is oversigned: a From added on the way must break the signature.
    assert dkim_tags(sent.raw)[0]["h"].lower().split(":").count("from") >= 2


# 2 --------------------------------------------------------------------------------------------------


def test_untrusted_client_bulk_is_refused_and_plain_mail_passes_unsigned(stack: Stack, token: str) -> None:
    """Bulk mail from outside the trusted scope is refused with 5.7.1 and a reason; plain mail passes."""
    bulk = make_message(token + "-bulk", "noreply@send.example.net", "carrier@example.com", headers=BULK_HEADERS)
    r = stack.submit("outsider", bulk, "noreply@send.example.net", ["carrier@example.com"])
    assert r.stage == "data" and r.code == 550, r
    assert r.message.startswith("5.7.1"), r
    assert "bulk mail from 172.30.25.66 would leave unsigned" in r.message, r
    assert "trusted_hosts" in r.message, r

    plain = make_message(token + "-plain", "someone@example.org", "info@example.net")
    r = stack.submit("outsider", plain, "someone@example.org", ["info@example.net"])
    assert r.accepted, r
    [got] = stack.wait_for_sink(token + "-plain")
    assert not dkim_tags(got.raw), "mail from an untrusted client must never be signed"
    stack.assert_not_in_sink(token + "-bulk", wait=2)
    assert "would leave unsigned" in stack.logs("sendguard")


# 3 --------------------------------------------------------------------------------------------------

PER_SUBSCRIBER = "https://example.net/carrier/quote?dot=3141592@TrackLink"
BROKEN_QUERY = "https://example.net/order/acme-freight&utm_source=listmonk&utm_campaign=june&dot=3141592"
LISTMONK_REDIRECT = "https://lists.example.net/link/6f1c2a7e-8d3b-4c55-9e21-0a4b5c6d7e8f/4b1f0c2d-1111-2222-3333-444455556666"


def _listmonk_message(token: str) -> bytes:
    """A campaign as Listmonk renders it: multipart/alternative, quoted-printable HTML with long lines."""
    html = (
        "<html><body><p>Hello ACME Freight,</p>"
        f'<p><a href="{PER_SUBSCRIBER}">Get your personal quote for DOT 3141592 - lanes, rates and insurance'
        " in one place, prepared for your fleet this week</a></p>"
        f'<p><a href="{BROKEN_QUERY}">Order now</a></p>'
        f'<p><a href="{LISTMONK_REDIRECT}">Read the newsletter</a></p>'
        "</body></html>"
    )
    text = f"Hello ACME Freight,\n\nYour quote: {PER_SUBSCRIBER}\nOrder: {BROKEN_QUERY}\n"
    msg = email.message.EmailMessage(policy=email.policy.SMTP)
    msg["From"] = "Trucking News <noreply@send.example.net>"
    msg["To"] = "dispatch@acme-freight.example.com"
    msg["Reply-To"] = "info@example.net"
    msg["Subject"] = f"Your lanes this week [{token}]"
    msg["Message-ID"] = f"<{token}@send.example.net>"
    for name, value in BULK_HEADERS.items():
        msg[name] = value
    msg.set_content(text, cte="quoted-printable")
    msg.add_alternative(html, subtype="html", cte="quoted-printable")
    return msg.as_bytes()


def _part_text(raw: bytes, subtype: str) -> str:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    for part in msg.walk():
        if part.get_content_type() == f"text/{subtype}":
            return part.get_content()
    raise AssertionError(f"no text/{subtype} part")


def test_listmonk_tracklink_on_per_subscriber_link_is_stripped_and_query_repaired_then_signed(
    stack: Stack, token: str
) -> None:
    """The brief's incident 5 through Postfix: marker stripped, `&`-first query repaired, then signed."""
    raw = _listmonk_message(token)
    r = stack.submit("app", raw, "bounces@send.example.net", ["dispatch@acme-freight.example.com"])
    assert r.accepted, r
    [got] = stack.wait_for_sink(token)
    _signed_by(stack, got.raw, "send.example.net", "send")

    html = _part_text(got.raw, "html")
    text = _part_text(got.raw, "plain")
    for body in (html, text):
        assert "@TrackLink" not in body, body
        assert "https://example.net/carrier/quote?dot=3141592" in body
        assert "https://example.net/order/acme-freight?utm_source=listmonk&utm_campaign=june&dot=3141592" in body
    assert f'href="{LISTMONK_REDIRECT}"' in html, "Listmonk's own redirect links stay untouched"


# 4 --------------------------------------------------------------------------------------------------


def test_locally_submitted_mail_is_signed(stack: Stack, token: str) -> None:
    """sendmail(1) inside the Postfix host goes through non_smtpd_milters and is signed."""
    raw = make_message(token, "Cron <cron@example.net>", "ops@example.com", subject="nightly report")
    stack.sendmail(raw, "cron@example.net", ["ops@example.com"])
    [got] = stack.wait_for_sink(token)
    _signed_by(stack, got.raw, "example.net", "mail")


def test_local_bulk_that_cannot_be_signed_is_bounced_to_its_sender(stack: Stack, token: str) -> None:
    """sendmail(1) bulk mail for a domain with no key is refused by the milter; Postfix bounces it, never sends it."""
    sender = f"ops+{token}@example.net"
    raw = make_message(token, "News <news@unsigned.example.org>", "reader@example.com", headers=BULK_HEADERS)
    stack.sendmail(raw, sender, ["reader@example.com"])
    # The bounce goes to the envelope sender, which relays to the sink like all mail here.
    bounces = [m for m in stack.wait_for_sink(token) if m.envelope["mail_from"] in ("", "<>")]
    delivered = [m for m in stack.find_in_sink(token) if m.envelope["mail_from"] == sender]
    assert not delivered, "bulk mail with no signing key left unsigned"
    assert bounces and bounces[0].envelope["rcpt_tos"] == [sender], [m.envelope for m in stack.find_in_sink(token)]
    assert b"would leave unsigned" in bounces[0].raw, bounces[0].raw[:3000]


# 5 --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rcpt", ["someone@yahoo.com", "someone@aol.co.uk"])
def test_yahoo_family_recipient_is_held_in_postfix(stack: Stack, token: str, rcpt: str) -> None:
    """Mail to the Yahoo / Verizon-Media family is held in Postfix's hold queue, with the reason logged."""
    sender = f"billing+{token}@example.net"
    raw = make_message(token, f"Billing <{sender}>", rcpt)
    r = stack.submit("app", raw, sender, [rcpt])
    assert r.accepted, f"a held message is accepted, not refused: {r}"

    deadline = time.monotonic() + 20
    held: list[dict] = []
    while not held and time.monotonic() < deadline:
        held = [m for m in stack.queue() if m.get("sender") == sender]
        time.sleep(0.3)
    assert held, f"no message from {sender} in Postfix's queue: {stack.queue()}"
    assert held[0]["queue_name"] == "hold", f"the message is in the {held[0]['queue_name']} queue, not hold"
    assert [x["address"] for x in held[0]["recipients"]] == [rcpt]

    # Postfix logs the HOLD with the policy daemon's reason (at RCPT time, before the queue id
    # exists: NOQUEUE); the policy daemon names the queue id at end of message.
    hold_lines = [line for line in stack.logs("postfix").splitlines() if ": hold: " in line and f"from=<{sender}>" in line]
    assert hold_lines, f"Postfix logged no hold for mail from {sender}"
    assert "family" in hold_lines[0].lower(), f"the hold reason names no family rule: {hold_lines[0]}"
    queue_id = held[0]["queue_id"]
    assert any(queue_id in line and "family" in line for line in stack.logs("sendguard").splitlines()), (
        f"sendguard logged nothing about the family hold of {queue_id}"
    )
    stack.flush()
    stack.assert_not_in_sink(token, wait=3)


# 6 --------------------------------------------------------------------------------------------------


def _fill_stream(stack: Stack, stream: str, token: str) -> list[Submission]:
    """Send to ``stream`` until its cap (as counted by this run) is used up; return the answers."""
    injector, port = STREAM_SOURCE[stream]
    answers = []
    for i in range(CAPS[stream] - stack.ledger.get(stream, 0)):
        raw = make_message(f"{token}-{stream}-{i}", "Campaign <noreply@send.example.net>", f"r{i}@example.com",
                           headers=BULK_HEADERS)
        r = stack.submit(injector, raw, "bounces@send.example.net", [f"r{i}@example.com"], port=port)
        if r.accepted:
            stack.ledger[stream] = stack.ledger.get(stream, 0) + 1
        answers.append(r)
    return answers


def _over_cap(stack: Stack, stream: str, tag: str) -> Submission:
    injector, port = STREAM_SOURCE[stream]
    raw = make_message(tag, "Campaign <noreply@send.example.net>", "over@example.com", headers=BULK_HEADERS)
    return stack.submit(injector, raw, "bounces@send.example.net", ["over@example.com"], port=port)


def test_caps_defer_the_message_over_the_cap_and_streams_count_apart(stack: Stack, token: str) -> None:
    """Cap + 1 is deferred at end of data and never reaches the sink; port 25 and 2526 keep separate counts."""
    answers = _fill_stream(stack, "trucking", token)
    assert all(r.accepted for r in answers), [str(r) for r in answers]
    over = _over_cap(stack, "trucking", token + "-over25")
    assert over.stage == "data" and 400 <= over.code < 500, f"cap + 1 on trucking: {over}"
    assert "4.7.1" in over.message and "trucking" in over.message, over

    # The trucking stream is full; healthcare (port 2526) still has its whole budget.
    answers = _fill_stream(stack, "healthcare", token)
    assert all(r.accepted for r in answers), [str(r) for r in answers]
    over = _over_cap(stack, "healthcare", token + "-over2526")
    assert over.stage == "data" and 400 <= over.code < 500, f"cap + 1 on healthcare: {over}"
    assert "healthcare" in over.message, over

    # What each stream let through arrives, signed for the bulk subdomain (both ports go through the milter).
    for stream in CAPS:
        for i in range(CAPS[stream]):
            [got] = stack.wait_for_sink(f"{token}-{stream}-{i}")
            _signed_by(stack, got.raw, "send.example.net", "send")
    # Deferred mail was never accepted, so it is not in Postfix's queue and cannot leave early.
    stack.flush()
    stack.assert_not_in_sink(token + "-over", wait=3)
    assert not [m for m in stack.queue() if token in str(m)]


# 7 --------------------------------------------------------------------------------------------------


def test_sendguard_restart_fails_safe_and_keeps_counters(stack: Stack, token: str) -> None:
    """While sendguard is down Postfix answers 4xx (nothing unsigned leaves); after it, the window is intact."""
    answers = _fill_stream(stack, "trucking", token)
    assert all(r.accepted for r in answers), [str(r) for r in answers]
    before = stack.scrape()
    hour_before = metric(before, "sendguard_policyd_rolling_hour_recipients", stream="trucking")
    assert hour_before == CAPS["trucking"], f"rolling hour before the restart: {hour_before}"

    stack.run("stop", "-t", "5", container("sendguard"))
    try:
        down = make_message(token + "-down", "Trucking News <noreply@send.example.net>", "carrier@example.com",
                            headers=BULK_HEADERS)
        # The snippets' default_action=tempfail: Postfix answers 451 4.7.1 from the start of the session.
        for injector in ("app", "listmonk"):
            r = stack.submit(injector, down, "bounces@send.example.net", ["carrier@example.com"])
            assert r.code == 451 and "4.7.1" in r.message, f"with sendguard down, {injector} got {r}"
    finally:
        stack.run("start", container("sendguard"))
        wait_for_sendguard(stack)
    stack.flush()
    stack.assert_not_in_sink(token + "-down", wait=3)

    after = stack.scrape()
    assert metric(after, "sendguard_policyd_rolling_hour_recipients", stream="trucking") == hour_before
    over = _over_cap(stack, "trucking", token + "-over")
    assert over.stage == "data" and 400 <= over.code < 500, f"the restart reset the trucking window: {over}"
    stack.assert_not_in_sink(token + "-over", wait=2)

    # Back up, the milter signs again: the retry of the mail refused while it was down goes out signed.
    r = stack.submit("app", down, "bounces@send.example.net", ["carrier@example.com"])
    assert r.accepted, r
    [got] = stack.wait_for_sink(token + "-down")
    assert dkim_tags(got.raw) and stack.dkim_verify(got.raw)


# 8 --------------------------------------------------------------------------------------------------


def test_metrics_agree_with_what_the_suite_did(stack: Stack, token: str) -> None:
    """Scraped over HTTP, the counters move by exactly what this test sends; stream gauges match the ledger."""
    before = stack.scrape()
    signed = make_message(token + "-signed", "noreply@send.example.net", "x@example.com", headers=BULK_HEADERS)
    assert stack.submit("app", signed, "bounces@send.example.net", ["x@example.com"]).accepted
    refused = make_message(token + "-refused", "noreply@send.example.net", "x@example.com", headers=BULK_HEADERS)
    assert stack.submit("outsider", refused, "noreply@send.example.net", ["x@example.com"]).code == 550
    held = make_message(token + "-held", "billing@example.net", "someone@yahoo.co.uk")
    assert stack.submit("app", held, "billing@example.net", ["someone@yahoo.co.uk"]).accepted
    stack.wait_for_sink(token + "-signed")
    after = stack.scrape()

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    # The held message is signed too (it came from a trusted client): holding is Postfix's job.
    assert delta("sendguard_milter_signatures_total", domain="send.example.net", selector="send") == 1
    assert delta("sendguard_milter_signatures_total", domain="example.net", selector="mail") == 1
    assert delta("sendguard_milter_messages_total", outcome="signed") == 2
    assert delta("sendguard_milter_refusals_total", reason="client_not_trusted") == 1
    assert delta("sendguard_milter_messages_total", outcome="refused") == 1
    assert delta("sendguard_policyd_holds_total") == 1
    assert delta("sendguard_policyd_decisions_total", stream="none", action="hold") == 1
    for stream, cap in CAPS.items():
        assert metric(after, "sendguard_policyd_hourly_cap_recipients", stream=stream) == cap
        assert metric(after, "sendguard_policyd_rolling_hour_recipients", stream=stream) == stack.ledger.get(stream, 0)
        assert metric(after, "sendguard_policyd_rolling_day_recipients", stream=stream) == stack.ledger.get(stream, 0)


# 9 --------------------------------------------------------------------------------------------------


def test_signature_survives_a_7bit_next_hop_and_long_lines_are_refused(stack: Stack, token: str) -> None:
    """The sink announces no 8BITMIME: an 8-bit body still arrives byte for byte and verifies;
    bulk mail with a line Postfix would fold after signing is refused instead of leaving broken."""
    body = "Grüße aus Köln — prices in €, délai garanti.\r\n".encode() * 3
    raw = (
        b"From: Trucking News <noreply@send.example.net>\r\nTo: carrier@example.com\r\n"
        + f"Subject: 8bit [{token}-8bit]\r\nMessage-ID: <{token}@send.example.net>\r\n".encode()
        + b"List-Unsubscribe: <https://lists.example.net/optout>\r\nMIME-Version: 1.0\r\n"
        + b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + body
    )
    r = stack.submit("app", raw, "bounces@send.example.net", ["carrier@example.com"])
    assert r.accepted, r
    [got] = stack.wait_for_sink(token + "-8bit")
    assert body in got.raw, "Postfix changed the 8-bit body after signing (downgraded to quoted-printable?)"
    _signed_by(stack, got.raw, "send.example.net", "send")

    long_line = raw.replace(token.encode() + b"-8bit", token.encode() + b"-long").replace(
        b"Content-Transfer-Encoding: 8bit\r\n\r\n", b"Content-Transfer-Encoding: 8bit\r\n\r\n" + b"x" * 1200 + b"\r\n"
    )
    r = stack.submit("app", long_line, "bounces@send.example.net", ["carrier@example.com"])
    assert r.stage == "data" and r.code == 550 and "998" in r.message, r
    stack.assert_not_in_sink(token + "-long", wait=2)
