"""The releaser: held mail leaves in arrival order, exactly as fast as the windows allow, nothing lost.

Postfix's commands are stand-ins here (``sendguard_testing.fake_postfix``), run
as real processes; the container suite proves the same against a real Postfix.
"""

from __future__ import annotations

import datetime as dt
import subprocess

import pytest

from sendguard_policyd import metrics
from sendguard_policyd.postfix_queue import PostfixError, PostfixQueue, parse_json_line, parse_postfix_time
from sendguard_policyd.release import ARRIVAL_GRACE, Releaser
from sendguard_policyd.store import HOLD_PAUSE, STATE_RELEASING, Pause, Windows
from sendguard_policyd.store.sqlite import SQLiteCounterStore
from sendguard_policyd.warmup import make_warmups
from sendguard_testing.command import sendguard_command
from sendguard_testing.fake_postfix import FakePostfix

T0 = dt.datetime(2026, 3, 2, 10, 0, 0, tzinfo=dt.timezone.utc).timestamp()
CAP = 2
WINDOW = 10  # seconds: the "hour" of these tests, the day 240 s


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def postfix(tmp_path, monkeypatch) -> FakePostfix:
    fake = FakePostfix(tmp_path / "postfix")
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    return fake


@pytest.fixture
def world(make_config, tmp_path, postfix):
    config = make_config(
        {"trucking": {"match": {"server_port": [25]}, "ramp": [[0, CAP]], "start_date": dt.date(2026, 1, 1)}},
        test_window_seconds=WINDOW,
    )
    store = SQLiteCounterStore(config.policyd.database, windows=Windows.scaled(WINDOW))
    clock = Clock()
    releaser = Releaser(config.streams, store, PostfixQueue(), 0.5, clock)
    yield releaser, store, clock, postfix
    store.close()


def hold(store: SQLiteCounterStore, postfix: FakePostfix, qid: str, at: float, recipients: int = 1) -> None:
    """What END-OF-MESSAGE over the cap leaves behind: a record, and the message in the hold queue."""
    assert store.record_hold(f"i-{qid}", "trucking", recipients, at, qid)
    postfix.hold(qid, at)


def test_held_mail_leaves_in_order_at_the_cap_rate_and_never_over_it(world):
    releaser, store, clock, postfix = world
    store.admit("trucking", "sent-1", 1, T0, CAP, None)
    store.admit("trucking", "sent-2", 1, T0, CAP, None)
    for n in range(5):
        hold(store, postfix, f"H{n}", T0 + n * 0.1)
    passes = []
    for step in range(10):
        clock.now = T0 + 1 + step * 5
        passes.append(releaser.run_pass().released.get("trucking", 0))
        assert store.windows("trucking", clock.now).hour <= CAP  # never over, at any pass
    assert postfix.released() == ["H0", "H1", "H2", "H3", "H4"]  # arrival order, each once
    assert passes[0] == 0  # the window was full: nothing left early
    assert sum(passes) == 5 and max(passes) <= CAP
    assert all(postfix.queue_of(f"H{n}") == "deferred" for n in range(5))
    assert ["postqueue", "-i", "H0"] in postfix.calls()  # scheduled at once, not at the next queue scan
    assert store.held_backlog() == {}


def test_a_crash_between_claim_and_release_counts_once(world):
    releaser, store, clock, postfix = world
    hold(store, postfix, "HC", T0)
    clock.now = T0 + 1
    # A pass that claimed (counted) the message and died before postsuper ran.
    assert store.claim_release("HC", clock.now, CAP, None).outcome == "counted"
    assert store.windows("trucking", clock.now).hour == 1
    assert releaser.run_pass().released == {"trucking": 1}
    assert postfix.released() == ["HC"]
    assert store.windows("trucking", clock.now).hour == 1  # not counted again


def test_postsuper_failing_leaves_the_message_counted_and_held_until_it_works(world):
    releaser, store, clock, postfix = world
    hold(store, postfix, "HF", T0)
    hold(store, postfix, "HG", T0 + 0.1)
    clock.now = T0 + 1
    before = metrics.RELEASE_ERRORS.labels("postsuper")._value.get()
    postfix.fail("postsuper")
    result = releaser.run_pass()
    assert result.errors == 1 and result.released == {}
    assert metrics.RELEASE_ERRORS.labels("postsuper")._value.get() == before + 1
    assert {m.queue_id: m.state for m in store.held_messages("trucking")} == {"HF": STATE_RELEASING, "HG": "held"}
    assert postfix.queue_of("HF") == "hold"
    postfix.fail()
    assert releaser.run_pass().released == {"trucking": 2}
    assert postfix.released() == ["HF", "HG"]
    assert store.windows("trucking", clock.now).hour == 2  # HF counted once


def test_postfix_stopped_is_an_error_not_a_loss(world):
    releaser, store, clock, postfix = world
    hold(store, postfix, "HS", T0)
    clock.now = T0 + 1
    postfix.fail("postqueue")
    assert releaser.run_pass().errors == 1
    assert store.windows("trucking", clock.now).hour == 0 and len(store.held_messages("trucking")) == 1
    postfix.fail()
    assert releaser.run_pass().released == {"trucking": 1}


def test_only_its_own_holds_are_touched_and_vanished_ones_are_closed_uncounted(world):
    releaser, store, clock, postfix = world
    postfix.hold("FAMILY1", T0)  # a Yahoo-family hold: no over-cap record
    postfix.hold("OPERATOR", T0)  # held by hand
    hold(store, postfix, "MINE", T0)
    hold(store, postfix, "DELETED", T0)
    postfix.remove("DELETED")  # postsuper -d by an operator
    clock.now = T0 + ARRIVAL_GRACE + 1
    result = releaser.run_pass()
    assert postfix.released() == ["MINE"]
    assert result.gone == {"trucking": 1}
    assert postfix.queue_of("FAMILY1") == "hold" and postfix.queue_of("OPERATOR") == "hold"
    assert store.windows("trucking", clock.now).hour == 1
    assert store.held_backlog() == {}


def test_a_message_not_yet_filed_in_the_hold_queue_waits_and_is_not_given_up(world):
    # The daemon records the hold when it answers HOLD; Postfix files the message a moment later
    # (after the milters). A pass in between must neither close it nor let later mail overtake it.
    releaser, store, clock, postfix = world
    assert store.record_hold("i-EARLY", "trucking", 1, T0, "EARLY")  # answered, not filed yet
    hold(store, postfix, "LATER", T0 + 0.5)
    clock.now = T0 + 1
    result = releaser.run_pass()
    assert result.gone == {} and postfix.released() == []
    postfix.hold("EARLY", T0)  # Postfix has filed it
    assert releaser.run_pass().released == {"trucking": 2}
    assert postfix.released() == ["EARLY", "LATER"]


def test_a_message_that_can_never_fit_does_not_block_the_stream(world, caplog):
    releaser, store, clock, postfix = world
    hold(store, postfix, "HUGE", T0, recipients=CAP + 1)
    hold(store, postfix, "SMALL", T0 + 1)
    clock.now = T0 + 2
    result = releaser.run_pass()
    assert postfix.released() == ["SMALL"]
    assert result.waiting == {"trucking": 1}
    assert "HUGE: stream trucking: 3 recipients can never fit" in caplog.text


def test_long_holds_are_flagged_in_a_metric_and_one_log_line(world, caplog):
    releaser, store, clock, postfix = world
    store.admit("trucking", "full-1", CAP, T0 + 3600 * 30, CAP, None)  # the window is full: nothing leaves
    postfix.set_lifetime("2d")
    hold(store, postfix, "OLD", T0)
    hold(store, postfix, "NEW", T0 + 3600 * 30)
    clock.now = T0 + 3600 * 30 + 1  # OLD held 30 h: over half of 2 days
    releaser.run_pass()
    releaser.run_pass()
    assert metrics.HELD_NEAR_LIFETIME.labels("trucking")._value.get() == 1
    assert caplog.text.count("OLD: stream trucking: held 30.0 h, over 50% of maximal_queue_lifetime (48.0 h)") == 1


def test_release_once_on_the_command_line(make_config, postfix, tmp_path):
    config_file = tmp_path / "sendguard.toml"
    db = tmp_path / "state" / "policyd.sqlite"
    config_file.write_text(
        f'[general]\nstate_dir = "{tmp_path}/state"\n[policyd]\ndatabase = "{db}"\ntest_window_seconds = {WINDOW}\n'
        '[streams.trucking]\nramp = [[0, 2]]\nstart_date = 2026-01-01\n[streams.trucking.match]\nserver_port = [25]\n'
    )
    store = SQLiteCounterStore(str(db), windows=Windows.scaled(WINDOW))
    import time

    now = time.time()
    for qid in ("A1", "A2", "A3"):
        hold(store, postfix, qid, now)
    store.close()
    run = subprocess.run(
        [sendguard_command(), "release", "--once", "--config", str(config_file)],
        capture_output=True, text=True, timeout=60, env={**postfix.env(), "HOME": str(tmp_path)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "stream trucking: released 2, still held 1, gone 0"
    assert postfix.released() == ["A1", "A2"]
    status = subprocess.run([sendguard_command(), "status", "--config", str(config_file)], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert "held backlog    1 message(s), 1 recipient(s)" in status.stdout, status.stdout


def test_postfix_time_values_and_queue_lines():
    assert parse_postfix_time("5d") == 5 * 86400
    assert parse_postfix_time("3600s") == 3600
    assert parse_postfix_time("10", default_unit="d") == 10 * 86400
    with pytest.raises(PostfixError):
        parse_postfix_time("soon")
    line = '{"queue_name": "hold", "queue_id": "4XyZ", "arrival_time": 1700000000, "recipients": []}'
    assert parse_json_line(line).queue_id == "4XyZ"
    assert parse_json_line("   ") is None
    with pytest.raises(PostfixError, match="not a queue entry"):
        parse_json_line("postqueue: fatal: Queue report unavailable")


def test_the_release_loop_runs_until_sigterm(postfix, tmp_path):
    import signal
    import time

    from ports import free_port

    db = tmp_path / "state" / "policyd.sqlite"
    config_file = tmp_path / "sendguard.toml"
    config_file.write_text(
        f'[general]\nstate_dir = "{tmp_path}/state"\n[policyd]\ndatabase = "{db}"\n'
        f'[release]\ninterval = 0.2\nmetrics_listen = "127.0.0.1:{free_port()}"\n'
        '[streams.trucking]\nhourly_ceiling = 5\n[streams.trucking.match]\nserver_port = [25]\n'
    )
    store = SQLiteCounterStore(str(db))
    hold(store, postfix, "LOOP1", time.time())
    store.close()
    proc = subprocess.Popen([sendguard_command(), "release", "--config", str(config_file)], env=postfix.env(),
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while postfix.released() != ["LOOP1"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert postfix.released() == ["LOOP1"]
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=20)
    log = proc.stderr.read()
    assert rc == 0, log
    assert "LOOP1: release: stream trucking: 1 recipient(s)" in log and "releaser stopped" in log


def test_release_through_the_redis_store_keeps_order_and_the_cap(make_config, postfix, redis_url):
    # The same releaser on the shared store: its windows run on the Redis server's clock, so this
    # runs in real time with two-second windows.
    import time

    from sendguard_policyd.backend import open_store

    settings = make_config(
        {"trucking": {"match": {"server_port": [25]}, "hourly_ceiling": 1, "over_cap": "hold"}},
        store="redis", redis_url=redis_url, redis_host_name="mx1", test_window_seconds=2,
    )  # fmt: skip
    store = open_store(settings.policyd)
    try:
        now = time.time()
        assert store.admit("trucking", "sent", 1, now, 1, None).outcome == "counted"
        for n in range(3):
            hold(store, postfix, f"R{n}", now + n * 0.01)
        releaser = Releaser(settings.streams, store, PostfixQueue())
        released_at: dict[str, float] = {}
        deadline = time.monotonic() + 20
        while len(released_at) < 3 and time.monotonic() < deadline:
            releaser.run_pass()
            for qid in postfix.released():
                released_at.setdefault(qid, time.monotonic())
            time.sleep(0.1)
        assert postfix.released() == ["R0", "R1", "R2"]  # every one, once, in order
        times = [released_at[q] for q in ("R0", "R1", "R2")]
        # At most one per two-second window (its one-second sliver included).
        assert all(b - a >= 1.9 for a, b in zip(times, times[1:])), times
        assert store.held_backlog() == {}
    finally:
        store.close()


def test_sighup_does_not_stop_the_release_loop(postfix, tmp_path):
    import signal
    import time

    from ports import free_port

    config_file = tmp_path / "sendguard.toml"
    config_file.write_text(
        f'[general]\nstate_dir = "{tmp_path}/state"\n[release]\ninterval = 0.2\n'
        f'metrics_listen = "127.0.0.1:{free_port()}"\n'
    )
    proc = subprocess.Popen([sendguard_command(), "release", "--config", str(config_file)], env=postfix.env(),
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        time.sleep(1.5)
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert proc.poll() is None, "SIGHUP stopped the releaser"
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=20)
    assert rc == 0
    assert "SIGHUP: the policy daemon does not reload its configuration" in proc.stderr.read()


def test_held_mail_is_released_at_the_effective_warmup_day_s_cap(make_config, postfix):
    # Calendar day 2 (cap 3), stepped back 2 days by a stop signal: day 0, cap 1. A release at the
    # calendar cap would send three times what the daemon now lets through.
    config = make_config(
        {"trucking": {"match": {"server_port": [25]}, "ramp": [[0, 1], [2, 3]],
                      "start_date": dt.datetime.fromtimestamp(T0 - 2.5 * 86400, dt.timezone.utc)}},
        test_window_seconds=WINDOW,
    )  # fmt: skip
    store = SQLiteCounterStore(config.policyd.database, windows=Windows.scaled(WINDOW))
    try:
        store.step_back("trucking", 2, "yahoo_tss04", T0 - 600)
        for n in range(4):
            hold(store, postfix, f"H{n}", T0 + n * 0.1)
        clock = Clock()
        clock.now = T0 + 1
        warmups = make_warmups(config.streams, config.policyd)
        releaser = Releaser(config.streams, store, PostfixQueue(), 0.5, clock, warmups=warmups)
        assert releaser.run_pass().released == {"trucking": 1}
        assert postfix.released() == ["H0"]
    finally:
        store.close()


# -- pauses: nothing of a paused stream or operator leaves; after the pause, through the caps ---------


def pause_hold(store, postfix, qid: str, at: float, operators: tuple[str, ...]) -> None:
    """What END-OF-MESSAGE of a paused stream leaves behind: a record held by the pause, the message held."""
    assert store.record_hold(f"i-{qid}", "trucking", 1, at, qid, HOLD_PAUSE, operators)
    postfix.hold(qid, at)


def test_nothing_of_a_paused_stream_is_released_until_the_pause_ends(world, caplog):
    caplog.set_level("INFO", logger="sendguard.release")
    releaser, store, clock, postfix = world
    hold(store, postfix, "CAP1", T0)  # over its cap before the pause
    pause_hold(store, postfix, "P1", T0 + 0.1, ("google",))
    pause_hold(store, postfix, "P2", T0 + 0.2, ("microsoft",))
    pause_hold(store, postfix, "P3", T0 + 0.3, ("other",))
    store.pause(Pause("trucking", "", T0, T0 + 30, "TSS04", "yahoo_tss04"))
    for step in range(5):
        clock.now = T0 + 1 + step * 5  # windows free every 10 s: there is room, the pause alone keeps it all
        result = releaser.run_pass()
        assert result.released == {} and result.paused == {"trucking": 4}
    assert postfix.released() == []
    assert len([r for r in caplog.messages if "release: stream trucking is paused (rule yahoo_tss04" in r]) == 1
    # The pause is over: the held mail leaves in arrival order, counted against the cap then.
    clock.now = T0 + 30
    assert releaser.run_pass().released == {"trucking": CAP}
    assert postfix.released() == ["CAP1", "P1"]
    assert store.windows("trucking", clock.now).hour == CAP
    clock.now = T0 + 45
    releaser.run_pass()
    assert postfix.released() == ["CAP1", "P1", "P2", "P3"]
    assert store.held_backlog() == {}


def test_a_paused_operator_waits_and_the_rest_of_the_stream_goes_on(world):
    releaser, store, clock, postfix = world
    pause_hold(store, postfix, "G1", T0, ("google",))
    hold(store, postfix, "OLD", T0 + 0.1)  # held over its cap by an earlier release: operators not recorded
    pause_hold(store, postfix, "UNK", T0 + 0.2, ("?",))  # its recipient's MX was not known yet
    pause_hold(store, postfix, "M1", T0 + 0.3, ("microsoft",))
    pause_hold(store, postfix, "GM", T0 + 0.4, ("google", "microsoft"))
    pause_hold(store, postfix, "O1", T0 + 0.5, ("other",))
    store.pause(Pause("trucking", "google", T0, None, "checking Postmaster Tools", "manual"))
    clock.now = T0 + 1
    result = releaser.run_pass()
    assert postfix.released() == ["M1", "O1"]  # the google ones and the unknown ones do not hold them back
    assert result.paused == {"trucking": 4}
    store.resume("trucking", "google", T0 + 20)
    clock.now = T0 + 20
    releaser.run_pass()
    clock.now = T0 + 35
    releaser.run_pass()
    assert postfix.released() == ["M1", "O1", "G1", "OLD", "UNK", "GM"]
    assert store.windows("trucking", clock.now).hour <= CAP
