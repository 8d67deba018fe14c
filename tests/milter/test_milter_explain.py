"""``sendguard explain`` prints the milter's own decision and the reasons behind it."""

from __future__ import annotations

import email
import io
import re
from email import policy as email_policy

import dkim
import Milter

from sendguard.cli.commands import main
from sendguard.cli.settings import load
from sendguard_milter import explain as explain_module
from sendguard_milter.keys import KeyStore


def explain(settings, **question):
    """The explanation for ``settings`` (what ``sendguard explain`` prints)."""
    return explain_module.explain(settings.milter, settings.streams, KeyStore(settings.milter.keys), **question)


def test_campaign_mail_from_listmonk_is_signed_with_selector_send(write_config):
    out = explain(load(write_config()), from_addr="noreply@send.example.net", client="172.18.0.5", port=25)
    assert "in scope: client 172.18.0.5 in trusted_hosts 172.18.0.5/32" in out
    assert "stream:    trucking (bulk = true)" in out
    assert "bulk:      yes: stream trucking is bulk" in out
    assert "table row: send.example.net -> key send (exact match)" in out
    assert "decision:  SIGN d=send.example.net s=send" in out


def test_bulk_from_outside_the_scope_is_refused(write_config):
    out = explain(load(write_config()), from_addr="noreply@send.example.net", client="172.18.0.99", headers=["Precedence: bulk"])
    assert "NOT in scope" in out
    assert "decision:  REFUSE (client_not_trusted): 550 5.7.1 bulk mail from 172.18.0.99 would leave unsigned: client not in trusted_hosts" in out


def test_inbound_mail_passes(write_config):
    out = explain(load(write_config()), from_addr="someone@example.org", client="198.51.100.4")
    assert "decision:  PASS unsigned: not bulk and not in scope" in out


def test_wildcard_row_and_sasl(write_config):
    out = explain(load(write_config()), from_addr="app@billing.example.net", client="198.51.100.4", sasl="app")
    assert "SASL authenticated as app" in out
    assert "table row: *.example.net -> key mail (wildcard match)" in out
    assert "decision:  SIGN d=example.net s=mail" in out


def test_cli_explain(write_config, capsys):
    path = write_config()
    rc = main(["explain", "--config", str(path), "--from", "ops@example.net", "--client", "127.0.0.1"])
    assert rc == 0
    assert "decision:  SIGN d=example.net s=mail" in capsys.readouterr().out


def test_a_split_open_scope_never_reaches_a_sign_decision(write_config, capsys):
    """`explain --client 8.8.8.8` said SIGN for trusted_hosts = ["0.0.0.0/1", "128.0.0.0/1"]."""
    cfg = write_config()
    old = 'trusted_hosts = ["127.0.0.1/8", "::1/128", "172.18.0.5/32", "172.18.0.25/32"]'
    cfg.write_text(cfg.read_text().replace(old, 'trusted_hosts = ["0.0.0.0/1", "128.0.0.0/1"]'))
    assert main(["explain", "--config", str(cfg), "--from", "noreply@send.example.net", "--client", "8.8.8.8"]) == 78
    err = capsys.readouterr().err
    assert f"{cfg}: milter.trusted_hosts[0]: 0.0.0.0/1 covers " in err
    assert "SIGN" not in capsys.readouterr().out


def test_an_acknowledged_public_host_is_explained_by_its_list(write_config):
    cfg = write_config(milter_extra='trusted_public_hosts = ["93.184.215.14/32"]')
    out = explain(load(cfg), from_addr="noreply@send.example.net", client="93.184.215.14", headers=["Precedence: bulk"])
    assert "in scope: client 93.184.215.14 in trusted_public_hosts 93.184.215.14/32" in out
    assert "decision:  SIGN d=send.example.net s=send" in out


# -- a whole message: the milter's own end of message, on a file --------------------------

CAMPAIGN = (
    "From: Trucking <noreply@send.example.net>\n"
    "To: carrier@example.org\n"
    "Subject: Loads this week\n"
    "Date: Sun, 22 Nov 2026 08:00:00 +0000\n"
    "Message-ID: <3f2a9c1b7d.42@localhost.localdomain>\n"
    "MIME-Version: 1.0\n"
    "Content-Type: text/html; charset=utf-8\n"
    "List-Unsubscribe: <mailto:u@send.example.net>\n"
    "\n"
    "<h1>Loads this week</h1>\n"
    '<p>Welcome, <a href="https://send.example.net/order/acme?dot=1234567&utm_source=x@TrackLink">see the loads</a>.</p>\n'
).encode()

HYGIENE = "add_text_part = true\nmessage_id_repair = true\n"


def _campaign(tmp_path):
    path = tmp_path / "campaign.eml"
    path.write_bytes(CAMPAIGN)  # LF line ends, as a saved file has them
    return path


def test_explain_message_shows_the_repairs_and_writes_a_message_that_verifies(write_config, tmp_path, capsys, test_keys):
    cfg = write_config(milter_extra=HYGIENE)
    out = tmp_path / "sent.eml"
    argv = ["explain", "--config", str(cfg), "--message", str(_campaign(tmp_path)), "--client", "172.18.0.5", "--port", "25"]
    assert main([*argv, "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "stream:    trucking (bulk = true)" in text
    assert "links:     strip 1 @TrackLink marker(s), repair 0 query string(s)" in text
    assert "           strip marker: send.example.net/order/acme (part 0)" in text
    assert "text part: added a text/plain part rendered from the HTML" in text
    assert re.search(r"message-id: bad_host \(right-hand side 'localhost.localdomain'\), replaced with <[^>]+@send\.example\.net>", text)
    assert "decision:  SIGN d=send.example.net s=send" in text
    assert f"written:   {out}" in text

    sent = out.read_bytes()
    assert sent.startswith(b"DKIM-Signature: ")
    assert dkim.verify(sent, dnsfunc=test_keys.dnsfunc)
    assert b"@TrackLink" not in sent and b"\r\n" in sent and re.search(rb"(?<!\r)\n", sent) is None
    parsed = email.message_from_bytes(sent, policy=email_policy.default)
    assert parsed.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert "see the loads (https://send.example.net/order/acme?dot=1234567&utm_source=x)" in parsed.get_body(("plain",)).get_content()


def _same_apart_from_random_parts(message: bytes) -> bytes:
    """The message with its signatures left out and the new Message-ID and MIME boundary (random each time) named."""
    head, _, body = message.partition(b"\r\n\r\n")
    fields = re.split(rb"\r\n(?![ \t])", head)
    kept = [f for f in fields if not f.lower().startswith(b"dkim-signature:")]
    text = b"\r\n".join(kept) + b"\r\n\r\n" + body
    boundary = re.search(rb'boundary="([^"]+)"', text)
    assert boundary is not None
    text = text.replace(boundary.group(1), b"BOUNDARY")
    return re.sub(rb"Message-ID: <[^>]+>", b"Message-ID: <NEW>", text)


def test_explain_message_writes_what_the_milter_sends(write_config, driver, tmp_path, capsys, test_keys):
    """The file explain writes is the message the milter, driven as Postfix drives it, hands back."""
    cfg = write_config(milter_extra=HYGIENE)
    out = tmp_path / "sent.eml"
    argv = ["explain", "--config", str(cfg), "--message", str(_campaign(tmp_path)), "--client", "172.18.0.5", "--port", "25"]
    assert main([*argv, "--output", str(out)]) == 0
    capsys.readouterr()
    through_milter = driver(milter_extra=HYGIENE).run(CAMPAIGN, client="172.18.0.5", daemon_port="25")
    assert through_milter.rc == Milter.CONTINUE
    assert dkim.verify(through_milter.message, dnsfunc=test_keys.dnsfunc)
    assert _same_apart_from_random_parts(out.read_bytes()) == _same_apart_from_random_parts(through_milter.message)


def test_explain_message_out_of_scope_repairs_nothing_and_refuses_bulk(write_config, tmp_path, capsys):
    cfg = write_config(milter_extra=HYGIENE)
    out = tmp_path / "sent.eml"
    argv = ["explain", "--config", str(cfg), "--message", str(_campaign(tmp_path)), "--client", "203.0.113.9", "--output", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "repairs:   none: only mail in scope is repaired" in captured.out
    assert "decision:  REFUSE (client_not_trusted): 550 5.7.1" in captured.out
    assert "refused: nothing written to --output" in captured.err
    assert not out.exists()


def test_explain_message_from_standard_input_without_repairs_asked(write_config, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"From " + b"x@y Sun Nov 22 08:00:00 2026\n" + CAMPAIGN)))
    assert main(["explain", "--config", str(write_config()), "--message", "-", "--client", "172.18.0.5", "--port", "25"]) == 0
    text = capsys.readouterr().out
    assert "from:      noreply@send.example.net (domain send.example.net)" in text  # the mbox From line is not a header
    assert "text part: not asked for (add_text_part = false)" in text
    assert "message-id: kept" in text
    assert "decision:  SIGN d=send.example.net s=send" in text


def test_explain_arguments_that_do_not_go_together(write_config, tmp_path, capsys):
    cfg = str(write_config())
    missing = str(tmp_path / "nothing.eml")
    assert main(["explain", "--config", cfg, "--client", "127.0.0.1"]) == 64
    assert "give --from ADDR (with --header) or --message FILE" in capsys.readouterr().err
    assert main(["explain", "--config", cfg, "--client", "127.0.0.1", "--message", missing, "--header", "X: y"]) == 64
    assert "--header is for --from" in capsys.readouterr().err
    assert main(["explain", "--config", cfg, "--client", "127.0.0.1", "--from", "a@example.net", "--output", missing]) == 64
    assert "--output needs --message" in capsys.readouterr().err
    assert main(["explain", "--config", cfg, "--client", "127.0.0.1", "--message", missing]) == 66
    assert f"{missing}: cannot read: No such file or directory" in capsys.readouterr().err
    headless = tmp_path / "headless.eml"
    headless.write_bytes(b"Subject: no sender\n\nbody\n")
    assert main(["explain", "--config", cfg, "--client", "127.0.0.1", "--message", str(headless)]) == 64
    assert "the message has no From header field" in capsys.readouterr().err
