"""The watcher end to end: a real log file, a real SQLite store, the deliveries the consumers get, restarts.

Deliveries are placed in the stream the policy daemon counted their queue id
in, else by syslog name, else "none"; on the operator by relay host, else
recipient domain; with a bounded reason. A restarted watcher (new objects on
the same position file, or a new ``sendguard watch`` process) hands no
delivery on twice and skips none.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from ports import free_port, wait_listening
from sendguard.cli.settings import Settings, parse
from sendguard.config_reader import ConfigError
from sendguard_policyd.store.sqlite import SQLiteCounterStore
from sendguard_policyd.watch import Delivery
from sendguard_policyd.watch import service
from sendguard_policyd.watch.metrics import DeliveryMetrics, RollingOutcomes
from sendguard_testing.command import sendguard_command
from watch_logs import Writer, delivery_line

STREAMS = {
    "trucking": {"match": {"server_port": [25]}, "ramp": [[0, 100]], "start_date": dt.date(2026, 1, 1)},
    "healthcare": {"match": {"server_port": [2526]}, "ramp": [[0, 100]], "start_date": dt.date(2026, 1, 1)},
}


class Recorder:
    """A consumer that keeps every delivery it is handed."""

    def __init__(self) -> None:
        self.got: list[Delivery] = []

    def delivered(self, d: Delivery) -> None:
        self.got.append(d)


def settings_for(tmp_path: Path, **watch: Any) -> Settings:
    data: dict[str, Any] = {
        "general": {"state_dir": str(tmp_path / "state")},
        "policyd": {"database": str(tmp_path / "state" / "policyd.sqlite")},
        "streams": STREAMS,
        "watch": {"log": str(tmp_path / "mail.log"), "start_at": "beginning", **watch},
        "operators": {"ovh": {"hosts": [".mail.ovh.net"], "domains": ["ovh.fr"]}},
    }
    return parse(data, str(tmp_path / "sendguard.toml"))


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteCounterStore(str(tmp_path / "state" / "policyd.sqlite"))
    yield s
    s.close()


def watcher(settings: Settings, store: SQLiteCounterStore, recorder: Recorder) -> service.Watcher:
    w = service.build(settings.config, settings.policyd, store)
    w.consumers = [recorder, *w.consumers]
    return w


def run_until_idle(w: service.Watcher) -> None:
    while w.step():
        pass


def test_deliveries_get_stream_operator_and_reason(tmp_path: Path, store: SQLiteCounterStore):
    settings = settings_for(tmp_path, syslog_streams={"postfix-hc": "healthcare"})
    now = time.time()
    store.admit("trucking", "i1", 1, now, 100, 1000, "AAAA000001")
    store.record_hold("i2", "healthcare", 1, now, "AAAA000002")
    log = Writer(tmp_path / "mail.log")
    log.line(delivery_line(1, qid="AAAA000001", rcpt="a@gmail.com", relay="gmail-smtp-in.l.google.com[142.250.27.26]:25"))
    log.line(delivery_line(2, "bounced", qid="AAAA000002", rcpt="b@example.org", relay="mx1.mail.ovh.net[198.51.100.7]:25",
                           reply="host mx1.mail.ovh.net[198.51.100.7] said: 550 5.1.1 User unknown (in reply to RCPT TO command)"))  # fmt: skip
    log.line(delivery_line(3, "deferred", program="postfix-hc/smtp", qid="AAAA000003", rcpt="c@yahoo.com", relay="none",
                           reply="connect to mta5.am0.yahoodns.net[67.195.204.72]:25: Connection refused"))  # fmt: skip
    log.line(delivery_line(4, qid="AAAA000004", rcpt="d@ovh.fr", relay="none"))
    log.line("Mar  1 10:00:05 mail postfix/qmgr[1]: AAAA000004: removed")
    log.line("garbage that is no syslog line")
    recorder = Recorder()
    w = watcher(settings, store, recorder)
    lines_before = {k: REGISTRY.get_sample_value("sendguard_watch_lines_total", {"kind": k}) or 0 for k in ("delivery", "other", "unparsed")}
    run_until_idle(w)
    w.close()
    got = [(d.queue_id, d.stream, d.operator, d.status, d.reason) for d in recorder.got]
    assert got == [
        ("AAAA000001", "trucking", "google", "sent", ""),
        ("AAAA000002", "healthcare", "ovh", "bounced", "user_unknown"),  # a held message: the store knows it too
        ("AAAA000003", "healthcare", "yahoo", "deferred", "other"),  # no record: by syslog name; no host: by domain
        ("AAAA000004", "none", "ovh", "sent", ""),
    ]
    assert recorder.got[1].relay_ip == "198.51.100.7" and recorder.got[1].domain == "example.org"
    lines_after = {k: REGISTRY.get_sample_value("sendguard_watch_lines_total", {"kind": k}) for k in lines_before}
    assert {k: lines_after[k] - lines_before[k] for k in lines_before} == {"delivery": 4, "other": 1, "unparsed": 1}


def test_an_expiry_is_a_delivery_per_recipient_still_deferred(tmp_path: Path, store: SQLiteCounterStore):
    settings = settings_for(tmp_path)
    store.admit("trucking", "i1", 3, time.time(), 100, 1000, "BBBB000001")
    log = Writer(tmp_path / "mail.log")
    tss04 = "host mta7.am0.yahoodns.net[67.195.204.72] said: 421 4.7.0 [TSS04] Messages from 203.0.113.94 temporarily deferred"
    for n, rcpt in enumerate(("x@yahoo.com", "y@yahoo.com", "z@gmail.com"), 1):
        log.line(delivery_line(n, "deferred", qid="BBBB000001", rcpt=rcpt, relay="mta7.am0.yahoodns.net[67.195.204.72]:25", reply=tss04))
    log.line(delivery_line(4, qid="BBBB000001", rcpt="z@gmail.com", relay="gmail-smtp-in.l.google.com[142.250.27.26]:25"))
    log.line("Mar  6 10:00:00 mail postfix/qmgr[1]: BBBB000001: from=<b@send.example.net>, status=expired, returned to sender")
    log.line("Mar  6 10:00:00 mail postfix/qmgr[1]: CCCC000001: from=<b@send.example.net>, status=expired, returned to sender")
    recorder = Recorder()
    w = watcher(settings, store, recorder)
    run_until_idle(w)
    w.close()
    expired = [(d.queue_id, d.recipient, d.stream, d.operator, d.reason) for d in recorder.got if d.status == "expired"]
    assert expired == [
        ("BBBB000001", "x@yahoo.com", "trucking", "yahoo", "reputation"),
        ("BBBB000001", "y@yahoo.com", "trucking", "yahoo", "reputation"),
        ("CCCC000001", "", "none", "other", "other"),  # its deferrals were not seen: no recipient to name
    ]


def test_a_restarted_watcher_hands_on_each_delivery_once(tmp_path: Path, store: SQLiteCounterStore):
    settings = settings_for(tmp_path)
    log = Writer(tmp_path / "mail.log")
    log.lines(5)
    recorder = Recorder()
    first = watcher(settings, store, recorder)
    run_until_idle(first)
    first.close()
    log.lines(3)
    second = watcher(settings, store, recorder)
    run_until_idle(second)
    log.lines(2)
    run_until_idle(second)
    second.close()
    assert [d.recipient for d in recorder.got] == [f"r{n}@example.com" for n in range(1, 11)]


def test_a_failing_consumer_is_logged_once_and_stops_nothing(tmp_path: Path, store: SQLiteCounterStore, caplog):
    class Broken:
        def delivered(self, d: Delivery) -> None:
            raise RuntimeError("disk full")

    settings = settings_for(tmp_path)
    Writer(tmp_path / "mail.log").lines(4)
    recorder = Recorder()
    w = service.build(settings.config, settings.policyd, store)
    w.consumers = [Broken(), recorder]
    caplog.set_level(logging.INFO, logger="sendguard.watch")
    run_until_idle(w)
    w.close()
    assert len(recorder.got) == 4
    failures = [r for r in caplog.records if "delivery consumer Broken failed" in r.getMessage()]
    assert len(failures) == 1 and "RuntimeError: disk full" in failures[0].getMessage()


def test_metrics_count_by_stream_operator_status_and_reason(tmp_path: Path):
    def d(n: int, status: str, reason: str = "", operator: str = "google", at: float = 0.0) -> Delivery:
        return Delivery(at or time.time(), f"Q{n}", f"r{n}@gmail.com", "gmail.com", "", "", status, "", "", "metrics-test", operator, reason)

    labels = {"stream": "metrics-test", "operator": "google"}
    m = DeliveryMetrics(export=False)
    for n, status, reason in ((1, "sent", ""), (2, "deferred", "reputation"), (3, "bounced", "reputation"), (4, "sent", "")):
        m.delivered(d(n, status, reason))
    assert REGISTRY.get_sample_value("sendguard_watch_deliveries_total", {**labels, "status": "sent"}) == 2
    assert REGISTRY.get_sample_value("sendguard_watch_problems_total", {**labels, "status": "deferred", "reason": "reputation"}) == 1
    assert REGISTRY.get_sample_value("sendguard_watch_problems_total", {**labels, "status": "bounced", "reason": "reputation"}) == 1
    # Recipient 2 is delivered on retry: it counts once, as delivered (3 of 4 recipients).
    m.delivered(d(2, "sent"))
    assert sorted(m.ratios()) == [("metrics-test", "1h", 3, 4), ("metrics-test", "24h", 3, 4)]
    m.delivered(d(5, "deferred", "rate_limited", at=time.time() - 7200))  # two hours ago: in the day only
    assert sorted(m.ratios()) == [("metrics-test", "1h", 3, 4), ("metrics-test", "24h", 3, 5)]


def test_rolling_outcomes_forget_what_left_the_window():
    window = RollingOutcomes(span=60, max_recipients=3)
    window.add(("Q1", "a"), 100, True, 100)
    window.add(("Q2", "b"), 130, False, 130)
    window.add(("Q0", "z"), 60, True, 130)  # already out of the window when it is read
    window.prune(170)
    assert (len(window), window.sent) == (1, 0)
    for n in range(5):
        window.add((f"Q{n + 3}", "c"), 171 + n, True, 171 + n)
    assert (len(window), window.sent) == (3, 3)  # the cap keeps the newest


def test_watch_and_operators_config_errors_are_all_reported(tmp_path: Path):
    data = {
        "streams": STREAMS,
        "watch": {"log": "/var/log/mail.log", "journal": True, "syslog_streams": {"postfix-bulk": "bulk"}},
        "operators": {"Google Mail": {"hosts": [".google.com"]}, "ovh": {}, "x": {"hosts": ["not a host"]}},
        "policyd": {"listen": "nowhere"},
    }
    with pytest.raises(ConfigError) as caught:
        parse(data, "sendguard.toml")
    lines = [str(e) for e in caught.value.all()]
    assert "sendguard.toml: watch.syslog_streams.postfix-bulk: 'bulk' is not a configured stream (healthcare, trucking)" in lines
    assert any(line.startswith("sendguard.toml: operators.Google Mail: 'Google Mail' cannot name an operator") for line in lines)
    assert any(line.startswith("sendguard.toml: operators.ovh.hosts: an operator needs hosts or domains") for line in lines)
    assert any(line.startswith("sendguard.toml: operators.x.hosts[0]: 'not a host' is not a host name") for line in lines)
    assert any(line.startswith("sendguard.toml: policyd.listen:") for line in lines)
    data["watch"] = {"log": "/var/log/mail.log", "journal": True}
    data["operators"] = {}
    data["policyd"] = {}
    with pytest.raises(ConfigError) as caught:
        parse(data, "sendguard.toml")
    assert str(caught.value) == "sendguard.toml: watch.journal: cannot be true while log is set: the watcher follows one source"


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def _sample(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") or line.startswith(f"{name} "):
            metric, _, value = line.rpartition(" ")
            got = metric[len(name):].strip("{}")
            if ",".join(sorted(got.split(","))) == want:
                return float(value)
    return 0.0


def _config_file(tmp_path: Path, metrics: int, extra: str = "") -> Path:
    cfg = tmp_path / "sendguard.toml"
    cfg.write_text(
        f"[general]\nstate_dir = '{tmp_path / 'state'}'\n"
        f"[watch]\nlog = '{tmp_path / 'mail.log'}'\nstart_at = 'beginning'\npoll_interval = 0.1\n"
        f"metrics_listen = '127.0.0.1:{metrics}'\n{extra}"
    )
    return cfg


def _wait_metric(port: int, proc: subprocess.Popen, name: str, want: float, **labels: str) -> str:
    deadline = time.monotonic() + 20
    while True:
        text = _scrape(port)
        if _sample(text, name, **labels) == want:
            return text
        assert proc.poll() is None, "sendguard watch exited"
        assert time.monotonic() < deadline, f"{name}{labels} never reached {want}:\n{text}"
        time.sleep(0.1)


def test_sendguard_watch_process_restarted_across_a_rotation_counts_each_line_once(tmp_path: Path):
    from watch_logs import logrotate

    metrics = free_port()
    cfg = _config_file(tmp_path, metrics)
    log = Writer(tmp_path / "mail.log")
    log.lines(4)

    def start() -> subprocess.Popen:
        out = open(tmp_path / "watch.log", "ab")
        proc = subprocess.Popen([sendguard_command(), "watch", "--config", str(cfg)], stdout=out, stderr=subprocess.STDOUT)
        out.close()
        wait_listening(metrics, proc, lambda: (tmp_path / "watch.log").read_text())
        return proc

    sent = {"stream": "none", "operator": "other", "status": "sent"}
    proc = start()
    try:
        _wait_metric(metrics, proc, "sendguard_watch_deliveries_total", 4, **sent)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        log.lines(3)  # while it is stopped, then the log is rotated and written on
        logrotate(tmp_path / "mail.log", "create")
        log.reopen()
        log.lines(2)
        proc = start()
        # The new process counts from zero: exactly the 5 lines it had not handed on, none of the 4 again.
        text = _wait_metric(metrics, proc, "sendguard_watch_deliveries_total", 5, **sent)
        time.sleep(0.5)  # a few more polls: nothing more may come
        assert _sample(_scrape(metrics), "sendguard_watch_deliveries_total", **sent) == 5
        assert _sample(text, "sendguard_watch_source_up") == 1
        assert _sample(text, "sendguard_watch_delivery_ratio", stream="none", window="1h") in (0.0, 1.0)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert "watching" in (tmp_path / "watch.log").read_text()


def test_sendguard_watch_without_a_source_is_a_config_error(tmp_path: Path):
    cfg = tmp_path / "sendguard.toml"
    cfg.write_text(f"[general]\nstate_dir = '{tmp_path}'\n")
    proc = subprocess.run([sendguard_command(), "watch", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 78
    assert proc.stderr.strip() == (
        f"sendguard: config error: {cfg}: watch.log: sendguard watch needs a log file (watch.log) or watch.journal = true"
    )


def test_sendguard_run_starts_the_watcher_when_a_log_is_configured(tmp_path: Path):
    policyd, milter, metrics = free_port(), free_port(), free_port()
    cfg = _config_file(tmp_path, free_port(), (
        f"[policyd]\nlisten = '127.0.0.1:{policyd}'\nmetrics_listen = '127.0.0.1:{metrics}'\n"
        f"[milter]\nlisten = 'inet:{milter}@127.0.0.1'\n"
    ))  # fmt: skip
    Writer(tmp_path / "mail.log").lines(2)
    out = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen([sendguard_command(), "run", "--config", str(cfg)], stdout=out, stderr=subprocess.STDOUT)
    out.close()
    try:
        wait_listening(milter, proc, lambda: (tmp_path / "run.log").read_text())
        # One endpoint for everything in `sendguard run`: the watcher's metrics are on policyd.metrics_listen.
        _wait_metric(metrics, proc, "sendguard_watch_deliveries_total", 2, stream="none", operator="other", status="sent")
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
    assert "watcher stopped" in (tmp_path / "run.log").read_text()
