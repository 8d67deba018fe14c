"""The installed ``sendguard dmarc`` command and ``sendguard run`` with ``[dmarc]``: a real config
file, real report files, the real metrics endpoint scraped over HTTP."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from dmarc_reports import GOOGLE, MICROSOFT, dated, gzipped, report_mail, with_id, write_maildir, zipped
from ports import free_port, wait_listening
from sendguard_testing.command import sendguard_command

DMARC = """
[general]
state_dir = "{tmp}/state"

[dmarc]
sources = ["Maildir", "saved"]
our_ips = ["192.0.2.25", "2001:db8:25::/64"]
interval = 10
metrics_listen = "127.0.0.1:{metrics}"
"""


def setup(tmp_path: Path, metrics: int, extra: str = "") -> Path:
    now = int(time.time())
    write_maildir(tmp_path / "Maildir", [report_mail(gzipped(dated(GOOGLE.read_bytes(), now)), "google.xml.gz")])
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "outlook.zip").write_bytes(zipped(dated(MICROSOFT.read_bytes(), now)))
    cfg = tmp_path / "sendguard.toml"
    cfg.write_text(DMARC.format(tmp=tmp_path, metrics=metrics) + extra)
    return cfg


def metrics_of(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("sendguard_dmarc")}  # fmt: skip


OURS = 'sendguard_dmarc_messages_total{ours="true",reporter="google.com",source_ip="192.0.2.25"}'
SPOOF = 'sendguard_dmarc_window_messages{ours="false",reporter="google.com",source_ip="203.0.113.77",window="7d"}'


def wait_for(check, what: str, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert proc.poll() is None, f"sendguard exited: {log.read_text()}"
        assert time.monotonic() < deadline, f"{what} did not happen: {log.read_text()}"
        time.sleep(0.2)


def run(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sendguard_command(), "dmarc", "--config", str(cfg), *args], capture_output=True, text=True, timeout=60)


def test_one_pass_then_another_stores_nothing_twice(tmp_path: Path):
    cfg = setup(tmp_path, free_port())
    (tmp_path / "saved" / "lunch.eml").write_text("From: a@example.net\nSubject: lunch\n\nhi\n")
    first = run(cfg)
    assert first.returncode == 0, first.stderr
    assert "dmarc: 2 new report(s), 0 already stored, 1 unreadable (logged)" in first.stdout
    assert "lunch.eml: skipped: a mail with no report attached (subject 'lunch')" in first.stderr
    second = run(cfg)
    assert "dmarc: 0 new report(s), 0 already stored, 0 unreadable (logged), 3 file(s) unchanged" in second.stdout


def test_without_sources_start_up_stops_naming_the_key(tmp_path: Path):
    cfg = tmp_path / "sendguard.toml"
    cfg.write_text(f'[general]\nstate_dir = "{tmp_path}"\n[dmarc]\nour_ips = ["192.0.2.25"]\n')
    done = run(cfg, "--follow")
    assert done.returncode == 78
    assert f"sendguard: config error: {cfg}: dmarc.sources: sendguard dmarc needs at least one source" in done.stderr


def test_follow_exports_from_the_database_and_a_restart_counts_nothing_twice(tmp_path: Path):
    metrics = free_port()
    cfg = setup(tmp_path, metrics)
    log = tmp_path / "follow.log"

    def follow(*args: str) -> subprocess.Popen:
        with open(log, "ab") as fh:
            proc = subprocess.Popen([sendguard_command(), "dmarc", "--follow", "--config", str(cfg), *args],
                                    stdout=fh, stderr=subprocess.STDOUT)  # fmt: skip
        wait_listening(metrics, proc, log.read_text)
        return proc

    proc = follow()
    try:
        wait_for(lambda: metrics_of(metrics).get("sendguard_dmarc_reports") == 2, "the first pass", proc, log)
        m = metrics_of(metrics)
        assert m[OURS] == 1000
        assert m['sendguard_dmarc_pass_total{ours="true",reporter="google.com",source_ip="192.0.2.25"}'] == 1000
        assert m['sendguard_dmarc_dkim_aligned_total{ours="true",reporter="google.com",source_ip="192.0.2.25"}'] == 940
        assert m[SPOOF] == 250
        assert m['sendguard_dmarc_window_pass_messages{ours="true",reporter="Enterprise Outlook",source_ip="2001:db8:25::10",window="7d"}'] == 300
        # A new report arrives in the maildir: the next pass (interval 10 s) adds it.
        write_maildir(tmp_path / "Maildir", [report_mail(gzipped(with_id(dated(GOOGLE.read_bytes(), int(time.time())), "day-2")), "g2.xml.gz")])
        wait_for(lambda: metrics_of(metrics).get("sendguard_dmarc_reports") == 3, "the second pass", proc, log)
        assert metrics_of(metrics)[OURS] == 2000
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    metrics = free_port()  # --listen overrides [dmarc] metrics_listen
    proc = follow("--listen", f"127.0.0.1:{metrics}")  # the same database: the same totals at once
    try:
        m = metrics_of(metrics)
        assert m[OURS] == 2000 and m["sendguard_dmarc_reports"] == 3
        wait_for(lambda: "dmarc pass: 0 new report(s)" in log.read_text(), "the pass after the restart", proc, log)
        assert metrics_of(metrics)[OURS] == 2000
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0


def test_sendguard_run_ingests_and_serves_the_dmarc_metrics_on_its_endpoint(tmp_path: Path):
    metrics, policy, milter = free_port(), free_port(), free_port()
    cfg = setup(tmp_path, free_port(), f"""
[policyd]
listen = "127.0.0.1:{policy}"
metrics_listen = "127.0.0.1:{metrics}"

[release]
enabled = false

[milter]
listen = "inet:{milter}@127.0.0.1"
""")
    log = tmp_path / "run.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sendguard_command(), "run", "--config", str(cfg)], stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_listening(metrics, proc, log.read_text)
        wait_for(lambda: metrics_of(metrics).get("sendguard_dmarc_reports") == 2, "the pass", proc, log)
        assert metrics_of(metrics)[OURS] == 1000
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0


def test_a_database_that_cannot_be_opened_stops_start_up_naming_the_key(tmp_path: Path):
    (tmp_path / "state").write_text("a file where the state folder should be\n")
    cfg = setup(tmp_path, free_port())
    for args in ((), ("--follow",)):
        done = run(cfg, *args)
        assert done.returncode == 78, done.stdout + done.stderr
        assert f"sendguard: config error: {cfg}: dmarc.database: cannot open {tmp_path}/state/dmarc.sqlite" in done.stderr
