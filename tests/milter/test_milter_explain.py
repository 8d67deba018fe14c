"""``sendguard explain`` prints the milter's own decision and the reasons behind it."""

from __future__ import annotations

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
