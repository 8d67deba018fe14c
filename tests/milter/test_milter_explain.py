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
