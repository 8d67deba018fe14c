"""The sync keeps Listmonk's window on the cap in force: set, read back, retried until applied.

Against the stand-in over a real socket; the cap in force is a small real
object the test changes (a new warmup day, a pause, a resume), as the
policy daemon's sources would.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from prometheus_client import REGISTRY

from listmonk_standin import ListmonkStandin
from sendguard_policyd.cap_in_force import CapInForce
from sendguard_policyd.listmonk.settings import ListmonkSettings
from sendguard_policyd.listmonk.sync import ListmonkSync

_names = itertools.count()


@dataclass
class Caps:
    """The cap in force the test sets (a CapInForceSource)."""

    hourly: int | None = 50
    daily: int | None = 4000
    paused: bool = False
    reason: str = "warmup day 0"

    def __call__(self, stream: str, now: float) -> CapInForce:
        assert stream == "trucking"
        return CapInForce(self.hourly, self.daily, self.paused, self.reason)


@pytest.fixture
def standin():
    server = ListmonkStandin(reload_delay=0.05, downtime=0.05).start()
    yield server
    server.stop()


@pytest.fixture
def make_sync(tmp_path: Path, standin: ListmonkStandin) -> Callable[..., ListmonkSync]:
    def build(caps: Caps, server: ListmonkStandin | None = None, **keys) -> ListmonkSync:
        name = keys.pop("name", f"lm{next(_names)}")  # metrics are process-wide: a label per test
        settings = ListmonkSettings(
            name=name, url=(server or standin).url, username="sendguard", password_file="unused", stream="trucking",
            secret="api-token-1234", timeout=5, interval=60, state_file=str(tmp_path / f"listmonk-{name}.json"), **keys,
        )  # fmt: skip
        return ListmonkSync(settings, caps, retry_first=0.05, retry_max=0.4, reload_grace=0.3)

    return build


def run_until(sync: ListmonkSync, done: Callable[[], bool], timeout: float = 10.0) -> list[float]:
    """Run passes (a short pause between them) until ``done()``; the delays the passes asked for."""
    delays = []
    deadline = time.monotonic() + timeout
    while True:
        delays.append(sync.step())
        if done():
            return delays
        assert time.monotonic() < deadline, "the sync did not get there"
        time.sleep(min(delays[-1], 0.5))


def step(sync: ListmonkSync) -> float:
    """One pass, then the wait it asked for (at most half a second): Listmonk restarts after an update."""
    delay = sync.step()
    time.sleep(min(delay, 0.5))
    return delay


def mismatch(sync: ListmonkSync) -> float | None:
    return REGISTRY.get_sample_value("sendguard_listmonk_window_mismatch", {"listmonk": sync.settings.name})


def updates(sync: ListmonkSync, result: str) -> float:
    return REGISTRY.get_sample_value("sendguard_listmonk_updates_total", {"listmonk": sync.settings.name, "result": result}) or 0.0


def campaign_changes(sync: ListmonkSync, action: str) -> float:
    labels = {"listmonk": sync.settings.name, "action": action}
    return REGISTRY.get_sample_value("sendguard_listmonk_campaign_changes_total", labels) or 0.0


def in_force(sync: ListmonkSync) -> Callable[[], bool]:
    return lambda: mismatch(sync) == 0


def test_the_window_is_set_read_back_and_the_metric_follows(make_sync, standin, policyd_log):
    caps = Caps()
    sync = make_sync(caps)
    assert mismatch(sync) == 1  # unknown until read back
    delays = run_until(sync, in_force(sync))
    assert standin.applied_window() == (True, 1, "150s")  # 2 per 150 s: never over 50 in a rolling hour
    assert delays[-1] == 60  # in force: the next look after the interval
    assert updates(sync, "applied") == 1 and updates(sync, "needs_restart") == 0
    name = sync.settings.name
    assert policyd_log.matching(f"listmonk {name}: stream trucking: the window to set is 1 per 150s: keeps every"
                                " rolling window under 50 per hour and 4000 per day: warmup day 0")  # fmt: skip
    assert policyd_log.matching(f"listmonk {name}: set window 1 per 150s (was no window): applied, Listmonk reloads")
    assert policyd_log.matching(f"listmonk {name}: window 1 per 150s in force (read back)")
    assert standin.secret_overwrites == [] and standin.wiped_keys == []
    # Nothing changes: one pass reads, sends nothing.
    puts = sum(1 for m, p, _ in standin.requests if m == "PUT")
    assert sync.step() == 60
    assert sum(1 for m, p, _ in standin.requests if m == "PUT") == puts


def test_a_new_warmup_day_raises_the_window(make_sync, standin, policyd_log):
    caps = Caps()
    sync = make_sync(caps)
    run_until(sync, in_force(sync))
    caps.hourly, caps.reason = 150, "warmup day 2"
    step(sync)
    assert mismatch(sync) == 1
    run_until(sync, in_force(sync))
    assert standin.applied_window() == (True, 2, "75s")
    assert policyd_log.matching("set window 2 per 75s (was 1 per 150s): applied")
    assert policyd_log.matching("warmup day 2")


def test_while_a_campaign_runs_it_is_paused_for_the_change_and_started_again(make_sync, policyd_log):
    standin = ListmonkStandin(reload_delay=0.05, downtime=0.05, drain_seconds=0.3).start()
    try:
        cid = standin.add_campaign("spring newsletter")
        sync = make_sync(Caps(), server=standin)
        run_until(sync, lambda: mismatch(sync) == 0 and standin.status(cid) == "running")
        assert standin.applied_window() == (True, 1, "150s")
        assert updates(sync, "needs_restart") >= 2  # the first answer, then tries while the campaign drained
        assert updates(sync, "applied") == 1
        assert campaign_changes(sync, "paused") == 1 and campaign_changes(sync, "started") == 1
        # Listmonk restarted only through the settings, never with a campaign running (no /api/admin/reload).
        assert standin.reloads == [{"via": "settings", "campaigns_running": False}]
        name = sync.settings.name
        assert policyd_log.matching(f"listmonk {name}: paused campaign 'spring newsletter' (id {cid}): to apply window")
        assert policyd_log.matching(f"listmonk {name}: started campaign 'spring newsletter' (id {cid}) again")
        assert json.loads(Path(sync.settings.state_file).read_text()) == {"for_apply": {}, "for_pause": {}}
    finally:
        standin.stop()


def test_wait_mode_retries_with_a_bounded_backoff_until_no_campaign_runs(make_sync, standin, policyd_log):
    cid = standin.add_campaign("spring newsletter")
    sync = make_sync(Caps(), apply_while_running="wait")
    delays = [sync.step() for _ in range(6)]
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]  # doubling, bounded
    assert standin.status(cid) == "running"  # untouched
    assert mismatch(sync) == 1 and standin.needs_restart
    assert standin.applied_window()[0] is False  # stored, not applied
    assert len(policyd_log.matching("applies it only once no campaign runs")) == 1  # said once, not per retry
    standin.finish_campaign(cid)
    run_until(sync, in_force(sync))
    assert standin.applied_window() == (True, 1, "150s")


def test_a_pause_lowers_the_window_to_the_floor_and_pauses_the_campaigns(make_sync, standin, policyd_log):
    caps = Caps()
    cid = standin.add_campaign("spring newsletter")
    sync = make_sync(caps, pause_campaigns=True)
    run_until(sync, lambda: mismatch(sync) == 0 and standin.status(cid) == "running")
    caps.paused, caps.reason = True, "paused (yahoo_tss04)"
    run_until(sync, lambda: mismatch(sync) == 0)
    assert standin.applied_window() == (True, 1, "1h")  # the floor: Listmonk turns a rate of 0 into no limit at all
    assert standin.status(cid) == "paused"
    record = json.loads(Path(sync.settings.state_file).read_text())
    assert record["for_pause"] == {str(cid): "spring newsletter"}
    name = sync.settings.name
    assert policyd_log.matching(f"listmonk {name}: paused campaign 'spring newsletter' (id {cid}): stream trucking"
                                " is paused (yahoo_tss04)")  # fmt: skip
    assert policyd_log.matching("the window to set is 1 per 1h: the floor Listmonk applies while the stream is paused")
    # A campaign started by hand during the pause is paused again.
    other = standin.add_campaign("autumn newsletter")
    sync.step()
    assert standin.status(other) == "paused"
    # The pause ends: the window rises again, the campaigns stay paused (resume_campaigns = false), and it is said.
    caps.paused, caps.reason = False, "warmup day 0"
    run_until(sync, lambda: mismatch(sync) == 0)
    assert standin.applied_window() == (True, 1, "150s")
    assert standin.status(cid) == "paused" and standin.status(other) == "paused"
    assert policyd_log.matching(f"listmonk {name}: stream trucking is no longer paused; campaigns 'spring newsletter'"
                                f" (id {cid}), 'autumn newsletter' (id {other}) stay paused (resume_campaigns = false)")
    assert json.loads(Path(sync.settings.state_file).read_text())["for_pause"] == {}


def test_resume_campaigns_starts_again_only_what_sendguard_paused(make_sync, standin, tmp_path):
    caps = Caps(paused=True, reason="paused (gmail_unsolicited)")
    ours = standin.add_campaign("spring newsletter")
    theirs = standin.add_campaign("paused by an operator", status="paused")
    sync = make_sync(caps, pause_campaigns=True, resume_campaigns=True, name="resumer")
    run_until(sync, in_force(sync))
    assert standin.status(ours) == "paused"
    # sendguard restarts; the record of what it paused is in the state file.
    again = ListmonkSync(sync.settings, caps, retry_first=0.05, retry_max=0.4, reload_grace=0.3)
    caps.paused, caps.reason = False, "warmup day 3"
    run_until(again, lambda: standin.status(ours) == "running")
    assert standin.applied_window() == (True, 1, "150s")  # the window first, then the campaign
    assert standin.status(theirs) == "paused"
    assert campaign_changes(again, "started") == 1


def test_a_pause_without_pause_campaigns_keeps_them_running_at_the_floor(make_sync, standin):
    cid = standin.add_campaign("spring newsletter")
    sync = make_sync(Caps(paused=True, reason="paused (by hand)"))
    run_until(sync, lambda: mismatch(sync) == 0 and standin.status(cid) == "running")
    assert standin.applied_window() == (True, 1, "1h")


def test_a_window_changed_by_hand_is_put_back(make_sync, standin, policyd_log):
    sync = make_sync(Caps())
    run_until(sync, in_force(sync))
    standin.set_window_by_hand(True, 500, "1h")
    step(sync)
    assert mismatch(sync) == 1
    assert policyd_log.matching("the window was changed outside sendguard (to 500 per 1h); setting 1 per 150s again")
    run_until(sync, in_force(sync))
    assert standin.applied_window() == (True, 1, "150s")


def test_listmonk_down_is_retried_and_said_once(make_sync, standin, policyd_log):
    sync = make_sync(Caps())
    standin.down = True
    delays = [sync.step() for _ in range(4)]
    assert delays == [0.05, 0.1, 0.2, 0.4]
    assert mismatch(sync) == 1
    warnings = policyd_log.matching(f"listmonk {sync.settings.name}: GET /api/settings: HTTP 503")
    assert len(warnings) == 1 and "the policy daemon is not affected" in warnings[0]
    standin.down = False
    run_until(sync, in_force(sync))
    assert policyd_log.matching(f"listmonk {sync.settings.name}: answers again")


def test_a_failed_update_is_counted(make_sync, standin):
    sync = make_sync(Caps())
    standin.users.clear()  # the token revoked
    sync.step()
    assert mismatch(sync) == 1 and updates(sync, "failed") == 0  # the read failed: no update was sent
    standin.users["sendguard"] = "api-token-1234"
    standin.stored["smtp"][0]["enabled"] = False  # Listmonk refuses a PUT without an enabled SMTP server
    sync.step()
    assert updates(sync, "failed") == 1


def test_a_cap_source_that_fails_leaves_listmonk_alone(make_sync, standin, policyd_log):
    def broken(stream: str, now: float) -> CapInForce:
        raise OSError("store unreachable")

    sync = make_sync(Caps())
    sync._cap_in_force = broken
    assert sync.step() == 0.05
    assert standin.requests == []
    assert policyd_log.matching("the cap in force of stream trucking cannot be read (store unreachable)")


def test_serve_runs_until_stopped(make_sync, standin):
    sync = make_sync(Caps())
    stop = threading.Event()
    thread = threading.Thread(target=sync.serve, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while mismatch(sync) != 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
