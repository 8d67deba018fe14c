"""dashboards/sendguard.json asks only for what sendguard exports: ``sendguard run`` is started for
real, given policy requests and milter messages that make each panel's series appear (a signature,
a refusal, a family hold, a counted message, a repaired link), and every metric name a panel or
template query uses must be in the scrape, with the labels the query filters or groups by."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from dmarc_reports import GOOGLE, dated
from cryptography.hazmat.primitives.asymmetric import rsa
from ports import free_port, wait_listening
from prometheus_client.parser import text_string_to_metric_families
from sendguard_testing.command import sendguard_command
from sendguard_testing.milter_client import MilterClient
from sendguard_testing.policy_client import PolicyClient, postfix_message

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "sendguard.json"

#: PromQL words that are not metric names (aggregation modifiers, set operators, offset).
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless"}
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels and strings left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries ([1h], [$__rate_interval], [1h:5m])
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for m in _IDENT.finditer(text):
        word = m.group()
        if word in _KEYWORDS or text[m.end():].lstrip().startswith("("):  # a function call
            continue
        if m.start() > 0 and (text[m.start() - 1].isdigit() or text[m.start() - 1] in ".$"):
            continue  # 1e3, 1h's unit, a $variable
        names.add(word)
    return names


def label_names(expr: str) -> set[str]:
    """The label names an expression filters on ({name="..."}) or groups by (by (a, b))."""
    labels = set()
    for block in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", block))
    for block in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels |= {b.strip() for b in block.split(",") if b.strip()}
    return labels


def test_metric_names_are_read_out_of_promql_carefully():
    expr = ('sum by (domain, selector) (rate(sendguard_milter_signatures_total{reason=~"a|b",x!="sum(y)"}[$__rate_interval]))'
            ' / on(stream) group_left sendguard_x:recorded offset 1h > 1e3 and histogram_quantile(0.99, sum by (le)'
            ' (rate(sendguard_milter_eom_seconds_bucket[5m])))')  # fmt: skip
    assert metric_names(expr) == {"sendguard_milter_signatures_total", "sendguard_x:recorded", "sendguard_milter_eom_seconds_bucket"}
    assert label_names(expr) == {"domain", "selector", "reason", "x", "le"}


def _queries(dashboard: dict) -> list[str]:
    """Every PromQL expression of the panels (rows' panels too), and each template query's metric."""
    exprs = []

    def walk(panels: list[dict]) -> None:
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(dashboard["panels"])
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            # label_values(METRIC, LABEL): the metric is a selector, the label one of its labels.
            m = re.fullmatch(r"label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\)", query)
            assert m, query
            exprs.append(f"max by ({m.group(2)}) ({m.group(1)})")
    return exprs


CONFIG = """
[general]
state_dir = "{state}"

[policyd]
listen = "127.0.0.1:{policyd}"
metrics_listen = "127.0.0.1:{metrics}"

[release]
enabled = false

[milter]
listen = "inet:{milter}@127.0.0.1"
trusted_hosts = ["127.0.0.1/8", "172.18.0.5/32"]

[signing.keys.send]
domain = "send.example.net"
selector = "send"
key_file = "{key}"

[signing.table]
"send.example.net" = "send"

[streams.trucking]
bulk = true
ramp = [[0, 50], [2, 150]]
hourly_ceiling = 150
daily_cap = 4000
start_date = {start}
[streams.trucking.match]
client_address = ["172.18.0.5/32"]

[dmarc]
sources = ["{reports}"]
our_ips = ["192.0.2.25"]
"""

MESSAGE = (
    "From: Trucking <noreply@send.example.net>\r\nTo: carrier@example.org\r\nSubject: Loads\r\n"
    "Date: Sun, 22 Nov 2026 08:00:00 +0000\r\nMessage-ID: <d{n}@send.example.net>\r\nPrecedence: bulk\r\n"
    "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    "Order here: https://send.example.net/order/acme?dot=1@TrackLink\r\n"
)


def _scrape(port: int) -> dict[str, set[str]]:
    """Sample name -> the label names its samples carry."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, set()).update(s.labels)
    return samples


def test_every_metric_a_panel_asks_for_is_exported(tmp_path):
    key_file = tmp_path / "send.pem"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))  # fmt: skip
    key_file.chmod(0o600)
    ports = {"policyd": free_port(), "metrics": free_port(), "milter": free_port()}
    start = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = tmp_path / "sendguard.toml"
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "google.xml").write_bytes(dated(GOOGLE.read_bytes(), int(time.time())))  # the DMARC panels' series
    config.write_text(CONFIG.format(state=tmp_path / "state", key=key_file, start=start, reports=reports, **ports))
    log = tmp_path / "run.log"
    proc = subprocess.Popen([sendguard_command(), "run", "--config", str(config)], stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        wait_listening(ports["milter"], proc, log.read_text)
        wait_listening(ports["policyd"], proc, log.read_text)
        with PolicyClient(("127.0.0.1", ports["policyd"])) as client:
            counted = [client.ask(r) for r in postfix_message("d1", "D00D1", ["carrier@example.org"], client_address="172.18.0.5")]
            family = [client.ask(r) for r in postfix_message("d2", "D00D2", ["someone@yahoo.com"], client_address="172.18.0.5")]
        assert counted[-1] == "DUNNO" and family[0].startswith("HOLD ")

        trusted = MilterClient(ports["milter"])
        trusted.connect("172.18.0.5", 40030)
        signed = trusted.message(MESSAGE.format(n=1).encode(), "bounce@send.example.net")
        trusted.close()
        assert signed["added"] and signed["added"][0][0] == "DKIM-Signature" and b"TrackLink" not in signed["body"]
        untrusted = MilterClient(ports["milter"])
        untrusted.connect("172.18.0.99", 40031)
        refused = untrusted.message(MESSAGE.format(n=2).encode(), "bounce@send.example.net")
        untrusted.close()
        assert refused["result"].startswith(b"y550")

        deadline = time.monotonic() + 20
        while "sendguard_dmarc_window_messages" not in _scrape(ports["metrics"]):  # the first pass is on its thread
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        samples = _scrape(ports["metrics"])
    finally:
        proc.terminate()
        proc.wait(timeout=15)

    exprs = _queries(json.loads(DASHBOARD.read_text()))
    assert len(exprs) >= 10
    missing, unlabelled = [], []
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        missing += [f"{name} (in {expr})" for name in sorted(names) if name not in samples]
        carried = set().union(*(samples.get(n, set()) for n in names))
        unlabelled += [f"{label} (in {expr})" for label in sorted(label_names(expr) - carried)]
    assert not missing, "panels ask for metrics nothing exports:\n" + "\n".join(missing)
    assert not unlabelled, "panels filter or group by labels no sample has:\n" + "\n".join(unlabelled)
