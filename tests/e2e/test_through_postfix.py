"""sendguard through a real Postfix, wired only with postfix-snippets/ (docker-compose.test.yml).

Each test submits mail over SMTP from an injector container with a fixed
address (or with sendmail inside the Postfix container) and checks what the
injector was answered, what the sink received, and what Postfix's queue and
logs hold. The numbers come from tests/e2e/sendguard.test.toml: trusted clients
172.30.25.5 (listmonk, trucking stream, port 25, cap 3 per window, held over
it), 172.30.25.25 (listmonk-hc, healthcare stream, port 2526, cap 2, held) and
172.30.25.7 (app: no stream on port 25, the reminders stream on port 2527, cap
3, deferred over it); 172.30.25.66 (outsider) is on the same network and not
trusted. The "hour" of the caps is test_window_seconds (20 s) long.
"""

from __future__ import annotations

import calendar
import email
import email.message
import email.policy
import quopri
import re
import time
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from e2e_stack import (
    BULK_HEADERS,
    Counted,
    Stack,
    Submission,
    container,
    dkim_tags,
    make_message,
    metric,
    postfix_log,
    queue_id,
    wait_for_sendguard,
)

pytestmark = pytest.mark.container

_CONFIG = tomllib.loads((Path(__file__).parent / "sendguard.test.toml").read_text())
#: Seconds of the rolling "hour" (the day is 24 times that).
WINDOW = _CONFIG["policyd"]["test_window_seconds"]
#: The cap per window of each stream (the test config gives ramp and ceiling the same value).
CAPS = {name: table["hourly_ceiling"] for name, table in _CONFIG["streams"].items()}
OVER_CAP = {name: table["over_cap"] for name, table in _CONFIG["streams"].items()}
RELEASE_INTERVAL = _CONFIG["release"]["interval"]
#: Which injector and port feed each stream.
STREAM_SOURCE = {"trucking": ("listmonk", 25), "healthcare": ("listmonk-hc", 2526), "reminders": ("app", 2527)}
HOLD_STREAMS = [name for name in STREAM_SOURCE if OVER_CAP[name] == "hold"]


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


def test_a_key_with_an_ed25519_half_signs_twice_rsa_first_and_both_verify(stack: Stack, token: str) -> None:
    """send.example.net's key has an Ed25519 key beside its RSA key: two signatures leave Postfix,
    the RSA one on top (verifiers that read only the first meet rsa-sha256), each verifying on its own."""
    bulk = make_message(token + "-dual", "Trucking News <noreply@send.example.net>", "carrier@example.com", headers=BULK_HEADERS)
    assert stack.submit("app", bulk, "bounces@send.example.net", ["carrier@example.com"]).accepted
    [sent] = stack.wait_for_sink(token + "-dual")
    tags = dkim_tags(sent.raw)
    assert [(t["a"], t["s"]) for t in tags] == [("rsa-sha256", "send"), ("ed25519-sha256", "send-ed")], tags
    assert tags[0]["bh"] == tags[1]["bh"] and tags[0]["h"] == tags[1]["h"]
    assert stack.dkim_verify(sent.raw, idx=0) and stack.dkim_verify(sent.raw, idx=1)
    changed = sent.raw.replace(b"Trucking News", b"Trucking Newz", 1)
    assert not stack.dkim_verify(changed, idx=0) and not stack.dkim_verify(changed, idx=1)
    # example.net's key has no Ed25519 half: one signature.
    root = make_message(token + "-single", "Billing <billing@example.net>", "customer@example.com")
    assert stack.submit("app", root, "billing@example.net", ["customer@example.com"]).accepted
    [single] = stack.wait_for_sink(token + "-single")
    assert [(t["a"], t["s"]) for t in dkim_tags(single.raw)] == [("rsa-sha256", "mail")]


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


def _campaign(tag: str, rcpt: str) -> bytes:
    return make_message(tag, "Campaign <noreply@send.example.net>", rcpt, headers=BULK_HEADERS)


def _submit_counted(stack: Stack, stream: str, tag: str, rcpt: str) -> Submission:
    """Submit one campaign message to ``stream``; an accepted one goes into the ledger of counted mail."""
    injector, port = STREAM_SOURCE[stream]
    before = time.time()
    r = stack.submit(injector, _campaign(tag, rcpt), "bounces@send.example.net", [rcpt], port=port)
    if r.accepted:
        # Counted at END-OF-MESSAGE, after the data was sent and before the 250 came back.
        stack.ledger.append(Counted(stream, 1, before, time.time()))
    return r


def _wait_for_empty_window(stack: Stack, stream: str) -> None:
    """Wait until nothing counted earlier in the run is left in ``stream``'s rolling window."""
    deadline = time.monotonic() + WINDOW + 10
    while metric(stack.scrape(), "sendguard_policyd_rolling_hour_recipients", stream=stream) > 0:
        assert time.monotonic() < deadline, f"the {stream} window never emptied in {WINDOW + 10} s"
        time.sleep(0.5)


def _fill_stream(stack: Stack, stream: str, token: str) -> list[Submission]:
    """Use up the cap of ``stream``, whose window is empty, with one message per recipient slot."""
    return [_submit_counted(stack, stream, f"{token}-{stream}-{i}", f"r{i}@example.com") for i in range(CAPS[stream])]


def _over_cap(stack: Stack, stream: str, tag: str) -> Submission:
    injector, port = STREAM_SOURCE[stream]
    rcpt = f"{tag}@example.com"  # the tag in the envelope: postqueue -j shows envelopes, not content
    return stack.submit(injector, _campaign(tag, rcpt), "bounces@send.example.net", [rcpt], port=port)


def test_defer_stream_answers_the_message_over_the_cap_4_7_1_and_postfix_keeps_nothing(
    stack: Stack, token: str
) -> None:
    """over_cap = "defer": cap + 1 inside one window is deferred at end of data and never queued."""
    stream = "reminders"
    _wait_for_empty_window(stack, stream)
    started = time.monotonic()
    answers = _fill_stream(stack, stream, token)
    assert all(r.accepted for r in answers), [str(r) for r in answers]
    over = _over_cap(stack, stream, token + "-over")
    # Only inside the window that the first message opened is cap + 1 over the cap.
    assert time.monotonic() - started < WINDOW - 2, "filling the stream took longer than its window"
    assert over.stage == "data" and 400 <= over.code < 500, f"cap + 1 on {stream}: {over}"
    assert "4.7.1" in over.message and stream in over.message, over

    for i in range(CAPS[stream]):
        [got] = stack.wait_for_sink(f"{token}-{stream}-{i}")
        _signed_by(stack, got.raw, "send.example.net", "send")
    # Deferred mail was never accepted: the client keeps it, and there is nothing in Postfix's
    # queue that a release or a flush could send early.
    assert not [m for m in stack.queue() if token in str(m)], stack.queue()
    stack.flush()
    stack.assert_not_in_sink(token + "-over", wait=3)


def _releaser_log(stack: Stack) -> dict[str, tuple[float, int, int]]:
    """The releaser's release lines by queue id: (when, hour count after it, hourly cap)."""
    out = {}
    pattern = re.compile(
        r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) sendguard\.release\[\d+\]: INFO: (\w+): release: stream \w+:"
        r" \d+ recipient\(s\), hour (\d+)/(\d+)"
    )
    for line in stack.logs("postfix").splitlines():
        m = pattern.match(line)
        if m:
            at = calendar.timegm(time.strptime(m[1], "%Y-%m-%d %H:%M:%S")) + int(m[2]) / 1000
            out[m[3]] = (at, int(m[4]), int(m[5]))
    return out


def _spacing(times: list[float], cap: int) -> list[float]:
    """For times sorted, how far each one is from the one ``cap`` places later: a window of W
    seconds holds at most ``cap`` of them exactly when every such distance is at least W."""
    return [round(later - earlier, 2) for earlier, later in zip(times, times[cap:])]


def test_over_cap_mail_is_held_and_released_at_the_cap_rate_in_order(stack: Stack, token: str) -> None:
    """3 x cap messages at once on each hold stream: every client gets 250, all arrive, none twice,
    never more than the cap inside any window, in submission order; a family hold stays held."""
    _hold_and_release(stack, token)


def _hold_and_release(stack: Stack, token: str, while_held: Callable[[dict[str, list[str]]], None] | None = None) -> None:
    """The hold-and-release proof on whichever store the stack runs; ``while_held`` is given the
    queue ids held per stream, right after the bursts, while all of them still wait."""
    bursts = {stream: 3 * CAPS[stream] for stream in HOLD_STREAMS}
    family_tag = f"{token}-family"
    releases_before = stack.scrape_releaser()

    def burst(stream: str) -> list[tuple[str, Submission]]:
        out = []
        for i in range(bursts[stream]):
            tag = f"{token}-{stream}-{i:02d}"
            rcpt = f"r{i}@example.com"
            if i < CAPS[stream]:
                out.append((tag, _submit_counted(stack, stream, tag, rcpt)))
            else:
                injector, port = STREAM_SOURCE[stream]
                r = stack.submit(injector, _campaign(tag, rcpt), "bounces@send.example.net", [rcpt], port=port)
                out.append((tag, r))
            if stream == "trucking" and i == CAPS[stream]:
                # A Yahoo-family message of the same stream, among the held ones: the releaser
                # must leave it in the hold queue however much room frees.
                injector, port = STREAM_SOURCE[stream]
                family = stack.submit(injector, _campaign(family_tag, "someone@yahoo.com"),
                                      "bounces@send.example.net", ["someone@yahoo.com"], port=port)  # fmt: skip
                out.append((family_tag, family))
        return out

    started = time.time()
    with ThreadPoolExecutor(len(HOLD_STREAMS)) as pool:
        submitted = dict(zip(HOLD_STREAMS, pool.map(burst, HOLD_STREAMS)))
    burst_seconds = time.time() - started
    for stream, answers in submitted.items():
        # Held mail is accepted: Listmonk sees no error, counts nothing against max_send_errors.
        assert all(r.accepted for _, r in answers), [f"{tag}: {r}" for tag, r in answers if not r.accepted]
    assert burst_seconds < WINDOW - 5, f"the bursts took {burst_seconds:.1f} s: not 'at once' beside a {WINDOW} s window"
    family_qid = queue_id(dict(submitted["trucking"])[family_tag])
    ids = {stream: [queue_id(r) for tag, r in answers if tag != family_tag] for stream, answers in submitted.items()}

    # What waits is visible while it waits (sendguard status and the metrics read the same store).
    backlog = stack.scrape()
    for stream in HOLD_STREAMS:
        waiting = metric(backlog, "sendguard_policyd_held_backlog_messages", stream=stream)
        assert waiting == 2 * CAPS[stream], f"{stream}: backlog {waiting} right after the burst"
    if while_held is not None:
        while_held({stream: ids[stream][CAPS[stream]:] for stream in HOLD_STREAMS})

    # Two windows after the burst the last wave is out; allow each window a few seconds of slack.
    got = {stream: stack.wait_for_sink(f"{token}-{stream}-", count=bursts[stream], timeout=2 * WINDOW + 30)
           for stream in HOLD_STREAMS}  # fmt: skip
    time.sleep(RELEASE_INTERVAL + 1)  # a release past the cap would show now
    log = postfix_log(stack.logs("postfix"))
    released_by_postsuper = [line.text.split(":")[0] for line in log
                             if line.program == "postfix/postsuper" and line.text.endswith(": released from hold")]  # fmt: skip
    releaser = _releaser_log(stack)

    for stream in HOLD_STREAMS:
        cap = CAPS[stream]
        tags = [tag for tag, _ in submitted[stream] if tag != family_tag]
        # None lost, none twice.
        arrived = {tag: [m for m in stack.find_in_sink(tag)] for tag in tags}
        assert all(len(copies) == 1 for copies in arrived.values()), {t: len(c) for t, c in arrived.items()}
        for tag in tags[:1] + tags[-1:]:
            _signed_by(stack, arrived[tag][0].raw, "send.example.net", "send")

        # The first cap went straight through; every later one was held by Postfix for the
        # policy daemon, with its reason naming the stream.
        held_ids = ids[stream][cap:]
        holds = {line.text.split(":")[0]: line.text for line in log
                 if line.program.endswith("smtpd") and ": hold: END-OF-MESSAGE" in line.text}  # fmt: skip
        assert not set(ids[stream][:cap]) & set(holds), f"{stream}: one of the first {cap} was held"
        for qid in held_ids:
            assert qid in holds, f"{stream}: Postfix logged no hold for {qid}"
            assert f"stream {stream}" in holds[qid] and "cap" in holds[qid], holds[qid]

        # Released oldest first, by Postfix's own log of postsuper.
        order = [qid for qid in released_by_postsuper if qid in held_ids]
        assert order == held_ids, f"{stream}: released in the order {order}, submitted {held_ids}"
        for qid in held_ids:
            assert qid in releaser, f"{stream}: the releaser logged no release of {qid}"
            at, hour, in_force = releaser[qid]
            assert in_force == cap and hour <= cap, f"{stream}: {qid} released at {hour}/{in_force}"
            # Counted by its claim just before postsuper ran (the line is written after it).
            stack.ledger.append(Counted(stream, 1, at - 5, at))

        # What left: at the sink, never more than the cap inside any window. A window holds its
        # counts a little over W seconds (whole-second buckets, counted late, never early), so
        # arrivals could only come closer than W by how much later one message's delivery took
        # than another's (well under the slack). And as fast as the windows allow: each wave
        # follows the one before by W plus at most a release interval and the same slack.
        arrivals = [arrived[tag][0].envelope["received_at"] for tag in tags]
        spacing = _spacing(sorted(arrivals), cap)
        assert min(spacing) >= WINDOW - 1.5, f"{stream}: {cap + 1} arrivals inside {WINDOW} s: {spacing}"
        assert max(spacing) <= WINDOW + RELEASE_INTERVAL + 6, f"{stream}: released slower than the cap: {spacing}"
        # Postfix's log says the same of the deliveries (its stamps are whole seconds).
        sent = sorted(line.at for line in log if line.program == "postfix/smtp" and "status=sent" in line.text
                      and line.text.split(":")[0] in ids[stream])  # fmt: skip
        assert len(sent) == bursts[stream], f"{stream}: Postfix logged {len(sent)} deliveries"
        assert min(_spacing(sent, cap)) >= WINDOW - 2, f"{stream}: Postfix sent {cap + 1} inside a window"
        # In submission order: Postfix delivers one wave's messages side by side, so the order
        # shows from wave to wave (inside a wave it is the release order checked above).
        waves = [arrivals[w * cap:(w + 1) * cap] for w in range(3)]
        assert max(waves[0]) < min(waves[1]) and max(waves[1]) < min(waves[2]), f"{stream}: waves overlap: {waves}"

    # The family hold of the same stream is still held, never released, never sent.
    assert family_qid not in released_by_postsuper and family_qid not in releaser
    queued = {m["queue_id"]: m["queue_name"] for m in stack.queue()}
    assert queued.get(family_qid) == "hold", f"the family hold {family_qid} left the hold queue: {queued}"
    assert not stack.find_in_sink(family_tag)
    # Nothing of the bursts is left in Postfix's queue.
    left = [qid for stream in HOLD_STREAMS for qid in ids[stream] if qid in queued]
    assert not left, f"still queued after the drain: {left}"

    after = stack.scrape()
    releases_after = stack.scrape_releaser()
    for stream in HOLD_STREAMS:
        assert metric(after, "sendguard_policyd_held_backlog_messages", stream=stream) == 0
        released = metric(releases_after, "sendguard_policyd_releases_total", stream=stream) - metric(
            releases_before, "sendguard_policyd_releases_total", stream=stream
        )
        assert released == 2 * CAPS[stream], f"{stream}: the releaser counted {released} releases"


# 7 --------------------------------------------------------------------------------------------------


def test_sendguard_restart_fails_safe_and_keeps_counters(stack: Stack, token: str) -> None:
    """While sendguard is down Postfix answers 4xx (nothing unsigned leaves); after it, the window is intact."""
    stream = "reminders"
    _wait_for_empty_window(stack, stream)
    started = time.monotonic()
    answers = _fill_stream(stack, stream, token)
    assert all(r.accepted for r in answers), [str(r) for r in answers]
    before = stack.scrape()
    hour_before = metric(before, "sendguard_policyd_rolling_hour_recipients", stream=stream)
    assert hour_before == CAPS[stream], f"rolling hour before the restart: {hour_before}"

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

    after = stack.scrape()
    over = _over_cap(stack, stream, token + "-over")
    # Past one window the counts would have left by themselves, and this would prove nothing.
    assert time.monotonic() - started < WINDOW - 1, f"the restart took longer than one {WINDOW} s window"
    assert metric(after, "sendguard_policyd_rolling_hour_recipients", stream=stream) == hour_before
    assert over.stage == "data" and 400 <= over.code < 500, f"the restart reset the {stream} window: {over}"
    assert not [m for m in stack.queue() if token + "-over" in str(m)], stack.queue()
    stack.flush()
    stack.assert_not_in_sink(token + "-down", wait=2)
    stack.assert_not_in_sink(token + "-over", wait=1)

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
    scraped_from = time.time()
    after = stack.scrape()
    scraped_to = time.time()

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    # The held message is signed too (it came from a trusted client): holding is Postfix's job.
    assert delta("sendguard_milter_signatures_total", domain="send.example.net", selector="send") == 1
    assert delta("sendguard_milter_signatures_total", domain="example.net", selector="mail") == 1
    assert delta("sendguard_milter_messages_total", outcome="signed") == 2
    assert delta("sendguard_milter_refusals_total", reason="client_not_trusted") == 1
    assert delta("sendguard_milter_messages_total", outcome="refused") == 1
    assert delta("sendguard_policyd_holds_total") == 1
    assert delta("sendguard_policyd_holds_total", reason="family") == 1
    assert delta("sendguard_policyd_decisions_total", stream="none", action="hold") == 1
    first = min(c.lo for c in stack.ledger)
    assert scraped_to - first < 24 * WINDOW, "the run outlasted one test day: the day gauges no longer see it all"
    for stream, cap in CAPS.items():
        assert metric(after, "sendguard_policyd_hourly_cap_recipients", stream=stream) == cap
        day = metric(after, "sendguard_policyd_rolling_day_recipients", stream=stream)
        # The ledger learns of released mail from test 6, once it has seen it all go.
        assert day == stack.counted(stream), f"{stream}: rolling day {day}, the suite counted {stack.counted(stream)}"
        # The short window has let some of the run's counts go: it holds those counted in the
        # last WINDOW seconds (a count near the edge may be on either side).
        surely, maybe = stack.in_window(stream, scraped_from, scraped_to, WINDOW)
        hour = metric(after, "sendguard_policyd_rolling_hour_recipients", stream=stream)
        assert surely <= hour <= maybe, f"{stream}: rolling hour {hour}, the ledger says {surely}..{maybe}"


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


# 9b -------------------------------------------------------------------------------------------------


def test_html_only_campaign_gets_a_text_part_and_a_repaired_message_id_and_still_verifies(stack: Stack, token: str) -> None:
    """Issue 19 through Postfix: the trucking stream's HTML-only campaign with a container's
    Message-ID leaves as multipart/alternative (text first) with <unique@send.example.net>,
    and the signature verifies over what Postfix sent, so Postfix applied the milter's header
    changes as the milter signed them; a message without a Message-ID gets one, signed."""
    html = (
        '<html><body><h1>Lanes this week</h1><p>Hello &amp; welcome,</p><ul><li>Dallas</li><li>Tulsa</li></ul>'
        '<p><a href="https://example.net/lanes">See the lanes</a></p>'
        '<img src="https://lists.example.net/campaign/open.gif" width="1" height="1"></body></html>'
    )
    head = (
        "From: Trucking News <noreply@send.example.net>\r\nTo: carrier@example.com\r\n"
        f"Subject: HTML only [{token}-html]\r\nMessage-ID: <{token}.1@3f2a9c1b7d0e>\r\n"
        "List-Unsubscribe: <https://lists.example.net/optout>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    )
    raw = head.encode() + quopri.encodestring(html.encode()).replace(b"\n", b"\r\n")
    _wait_for_empty_window(stack, "trucking")
    injector, port = STREAM_SOURCE["trucking"]
    before = time.time()
    r = stack.submit(injector, raw, "bounces@send.example.net", ["carrier@example.com"], port=port)
    assert r.accepted, r
    stack.ledger.append(Counted("trucking", 1, before, time.time()))
    [got] = stack.wait_for_sink(token + "-html")
    _signed_by(stack, got.raw, "send.example.net", "send")
    msg = email.message_from_bytes(got.raw, policy=email.policy.default)
    assert re.fullmatch(r"<\d{14}\.[0-9a-f]{16}@send\.example\.net>", msg["Message-ID"]), msg["Message-ID"]
    assert msg.get_content_type() == "multipart/alternative"
    text, html_part = msg.get_payload()
    plain = text.get_content()
    assert text.get_content_type() == "text/plain"
    assert "Lanes this week" in plain and "- Dallas" in plain and "See the lanes (https://example.net/lanes)" in plain
    assert "Hello & welcome," in plain and "open.gif" not in plain
    assert html_part.get_content_type() == "text/html"
    assert html_part.get_payload(decode=True).decode().rstrip("\r\n") == html, "the HTML arrives as it was sent"
    assert "message-id: bad_host (right-hand side '3f2a9c1b7d0e')" in stack.logs("sendguard")

    missing = make_message(token + "-noid", "Billing <billing@example.net>", "customer@example.com")
    missing = re.sub(rb"Message-ID: [^\r\n]*\r\n", b"", missing, count=1, flags=re.I)
    r = stack.submit("app", missing, "billing@example.net", ["customer@example.com"])
    assert r.accepted, r
    [got] = stack.wait_for_sink(token + "-noid")
    _signed_by(stack, got.raw, "example.net", "mail")
    ids = email.message_from_bytes(got.raw, policy=email.policy.default).get_all("Message-ID")
    # Postfix adds no Message-ID for a remote client (local_header_rewrite_clients): the milter's is the one.
    assert len(ids) == 1 and re.fullmatch(r"<\d{14}\.[0-9a-f]{16}@example\.net>", ids[0]), ids
    assert f"message-id: missing, replaced with {ids[0]}" in stack.logs("sendguard")
    assert "message-id" in dkim_tags(got.raw)[0]["h"].lower().split(":"), "the added Message-ID is signed"


# 10 -------------------------------------------------------------------------------------------------


@pytest.fixture
def redis_store(stack: Stack) -> Iterator[Stack]:
    """The stack with the policy daemon and the releaser on the Redis service; SQLite again afterwards."""
    # The ledger mirrors the SQLite windows (test 8 compares them); what this phase counts is in Redis.
    counted, stack.ledger = stack.ledger, []
    try:
        stack.use_store("redis")
        yield stack
    finally:
        stack.use_store("sqlite")
        stack.ledger = counted


def test_hold_and_release_on_the_redis_store(redis_store: Stack, token: str) -> None:
    """Test 6 again with the counters and the hold records in Redis: the policy daemon records each
    hold under the Postfix host's name, and the releaser, another process on that host, finds
    them there and lets them go at the cap rate; holds it did not make stay held."""
    stack = redis_store
    host = _CONFIG["policyd"]["redis_host_name"]
    # Holds made before the switch (tests 5, 6 and 8 leave family holds): none of them is the
    # Redis releaser's, so all must stay.
    others = {m["queue_id"] for m in stack.queue() if m["queue_name"] == "hold"}

    def recorded_in_redis(held: dict[str, list[str]]) -> None:
        # Were either process still on SQLite, the holds would not be here (and nothing released).
        for stream, qids in held.items():
            out = stack.exec("redis", "redis-cli", "--raw", "HKEYS", f"{{sendguard:{stream}}}:heldq")
            missing = [qid for qid in qids if f"{qid}@{host}" not in out.split()]
            assert not missing, f"{stream}: no hold record in Redis for {missing} under {host}: {out.split()}"

    _hold_and_release(stack, token, while_held=recorded_in_redis)
    queued = {m["queue_id"]: m["queue_name"] for m in stack.queue()}
    assert all(queued.get(qid) == "hold" for qid in others), f"held before: {others}, queue now: {queued}"
