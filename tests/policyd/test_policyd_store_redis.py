"""The Redis store against a real redis-server: the interface's behaviour, atomicity, expiry, failures.

Time is the Redis server's, so the windows are shortened (``Windows``) and the
tests wait for real seconds instead of passing a later ``now``.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis

from sendguard_policyd.store import (
    ALREADY_COUNTED,
    ALREADY_HELD,
    COUNTED,
    NOT_HELD,
    OVER_DAILY,
    OVER_HOURLY,
    STATE_COUNTED,
    STATE_FAMILY_HOLD,
    STATE_GONE,
    STATE_HELD,
    STATE_RELEASED,
    STATE_RELEASING,
    TOO_LARGE,
    StoreError,
    Windows,
)
from sendguard_policyd.store.redis import RedisCounterStore

HOUR_2S = Windows(hour=2, day=48)


@pytest.fixture
def make_store(redis_url: str):
    opened: list[RedisCounterStore] = []

    def make(windows: Windows = HOUR_2S, url: str = redis_url) -> RedisCounterStore:
        store = RedisCounterStore(url, timeout=0.5, windows=windows)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def raw(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def test_admit_counts_until_the_cap_then_refuses(make_store):
    store = make_store()
    now = time.time()
    outcomes = [store.admit("trucking", f"m{i}", 2, now, 5, 100, f"Q{i}") for i in range(4)]
    assert [a.outcome for a in outcomes] == [COUNTED, COUNTED, OVER_HOURLY, OVER_HOURLY]
    assert (outcomes[1].hour_count, outcomes[1].day_count) == (4, 4)
    assert (outcomes[2].hour_count, outcomes[2].day_count) == (4, 4)  # a refusal counts nothing
    assert outcomes[0].passes and not outcomes[2].passes
    assert store.admit("trucking", "one", 1, now, 5, 100).outcome == COUNTED  # one still fits
    assert store.windows("trucking", now).hour == 5
    assert store.windows("healthcare", now).hour == 0  # streams are independent


def test_admit_is_idempotent_per_instance_across_hosts(make_store):
    host_a, host_b = make_store(), make_store()
    now = time.time()
    assert host_a.admit("trucking", "inst-1", 3, now, 10, None).outcome == COUNTED
    again = host_b.admit("trucking", "inst-1", 3, now, 10, None)
    assert again.outcome == ALREADY_COUNTED and again.passes
    assert again.hour_count == 3
    assert host_b.message_state("inst-1") == STATE_COUNTED
    assert host_b.message_state("never-seen") is None
    # Without an instance nothing can be deduplicated: each request counts.
    assert host_a.admit("trucking", "", 1, now, 10, None).outcome == COUNTED
    assert host_a.admit("trucking", "", 1, now, 10, None).outcome == COUNTED
    assert host_b.windows("trucking", now).hour == 5


def test_too_large_and_a_paused_cap(make_store):
    store = make_store()
    now = time.time()
    assert store.admit("s", "big", 6, now, 5, None).outcome == TOO_LARGE
    assert store.admit("s", "big-day", 6, now, None, 5).outcome == TOO_LARGE
    paused = store.admit("s", "p", 1, now, 0, None)
    assert paused.outcome == OVER_HOURLY and paused.room_at is None  # nothing to wait for: the cap is 0
    assert store.windows("s", now).hour == 0


def test_room_at_names_when_the_window_frees_and_it_does(make_store):
    store = make_store()
    first = time.time()
    assert store.admit("s", "a", 3, first, 3, None).outcome == COUNTED
    refused = store.admit("s", "b", 1, time.time(), 3, None)
    assert refused.outcome == OVER_HOURLY
    assert refused.room_at is not None
    # The second that counted "a" leaves a 2-second window 3 seconds after its start at most.
    assert first < refused.room_at <= first + 3.1
    while time.time() < refused.room_at - 0.3:
        assert store.admit("s", f"early-{time.time()}", 1, time.time(), 3, None).outcome == OVER_HOURLY
        time.sleep(0.1)
    time.sleep(max(0.0, refused.room_at - time.time()) + 0.05)
    assert store.admit("s", "b", 1, time.time(), 3, None).outcome == COUNTED


def test_the_daily_cap_and_its_room(make_store):
    store = make_store(Windows(hour=1, day=4))
    now = time.time()
    assert store.admit("s", "a", 2, now, None, 3).outcome == COUNTED
    time.sleep(2.1)  # out of the hour, still in the day
    over = store.admit("s", "b", 2, time.time(), None, 3)
    assert over.outcome == OVER_DAILY
    assert (over.hour_count, over.day_count) == (0, 2)
    assert over.room_at is not None and now < over.room_at <= now + 5.1
    time.sleep(max(0.0, over.room_at - time.time()) + 0.05)
    assert store.admit("s", "b", 2, time.time(), None, 3).outcome == COUNTED


def test_no_window_ever_holds_more_than_the_cap(make_store):
    """Admissions as fast as they come for 5 s across 2-second windows: no fixed buckets,
    so no two adjacent ones can let 2 x cap through around a boundary."""
    store = make_store()
    cap = 7
    counted: list[float] = []
    end = time.time() + 5
    i = 0
    while time.time() < end:
        i += 1
        if store.admit("s", f"m{i}", 1, time.time(), cap, None).outcome == COUNTED:
            counted.append(time.time())
    assert len(counted) >= 2 * cap  # the windows rolled: more than one cap's worth passed in all
    for start in counted:
        inside = [t for t in counted if start <= t < start + HOUR_2S.hour]
        assert len(inside) <= cap


def test_the_server_clock_decides_not_the_callers(make_store):
    host_a, host_b = make_store(), make_store()
    now = time.time()
    assert host_a.admit("s", "a", 3, now, 4, None).outcome == COUNTED
    # A host whose clock runs an hour ahead still sees the same window.
    skewed = host_b.admit("s", "b", 3, now + 3600, 4, None)
    assert skewed.outcome == OVER_HOURLY and skewed.hour_count == 3
    # room_at comes back on the caller's clock.
    assert skewed.room_at is not None and now + 3600 < skewed.room_at <= now + 3600 + 3.1


def test_family_hold_is_marked_once_and_never_counted(make_store):
    store = make_store()
    now = time.time()
    assert store.mark_family_hold("f1", "trucking", now, "QF1", "yahoo.*") is True
    assert store.mark_family_hold("f1", "trucking", now, "QF1", "yahoo.*") is False
    assert store.mark_family_hold("", "trucking", now, "", "yahoo.*") is True
    assert store.message_state("f1") == STATE_FAMILY_HOLD
    held = store.admit("trucking", "f1", 1, now, 10, None)
    assert held.outcome == ALREADY_HELD and not held.passes
    assert store.windows("trucking", now).hour == 0
    assert store.mark_family_hold("n1", "none", now, "QN1", "aol.*")
    assert store.family_holds(now - 60) == {"trucking": 1, "none": 1}
    assert store.family_holds(time.time() + 5) == {}


def test_hold_claim_finish(make_store, redis_url):
    store = make_store()
    now = time.time()
    assert store.admit("s", "counted", 4, now, 5, None).outcome == COUNTED
    assert store.record_hold("h1", "s", 2, now, "QH1") is True
    assert store.record_hold("h1", "s", 2, now, "QH1") is False  # a retry: the record stays as it is
    assert store.record_hold("counted", "s", 4, now, "QC") is False  # recorded before, in another state
    time.sleep(0.002)
    assert store.record_hold("h2", "s", 1, now, "QH2") is True
    assert store.windows("s", now).hour == 4  # holding counts nothing
    assert store.message_state("h1") == STATE_HELD

    held = store.held_messages("s")
    assert [(m.queue_id, m.instance, m.stream, m.recipients, m.state) for m in held] == [
        ("QH1", "h1", "s", 2, STATE_HELD),
        ("QH2", "h2", "s", 1, STATE_HELD),
    ]
    assert held[0].at <= held[1].at
    backlog = store.held_backlog()
    assert set(backlog) == {"s"}
    assert (backlog["s"].messages, backlog["s"].recipients, backlog["s"].oldest_at) == (2, 3, held[0].at)

    over = store.claim_release("QH1", now, 5, None)  # 4 + 2 > 5: nothing changes
    assert over.outcome == OVER_HOURLY and over.room_at is not None
    assert store.message_state("h1") == STATE_HELD
    assert store.claim_release("QH2", now, 5, None).outcome == COUNTED  # 4 + 1 fits
    assert store.windows("s", now).hour == 5
    assert store.message_state("h2") == STATE_RELEASING
    # A crash before postsuper -H: the next pass (another process, no memory) claims again.
    other = make_store()
    again = other.claim_release("QH2", now, 5, None)
    assert again.outcome == ALREADY_COUNTED and again.hour_count == 5
    assert [m.state for m in other.held_messages("s")] == [STATE_HELD, STATE_RELEASING]
    other.finish_release("QH2", STATE_RELEASED, now)
    assert other.message_state("h2") == STATE_RELEASED
    assert other.claim_release("QH2", now, 5, None).outcome == NOT_HELD
    assert [m.queue_id for m in store.held_messages("s")] == ["QH1"]

    # Released by an operator: gone, never counted.
    store.finish_release("QH1", STATE_GONE, now)
    assert store.message_state("h1") == STATE_GONE
    assert store.held_backlog() == {}
    assert store.held_messages("s") == []
    assert store.windows("s", now).hour == 5
    assert store.claim_release("QNOPE", now, 5, None).outcome == NOT_HELD
    store.finish_release("QNOPE", STATE_GONE, now)  # nothing to close: no error
    with pytest.raises(ValueError):
        store.finish_release("QH1", STATE_COUNTED, now)
    # What is finished expires by itself; nothing of the backlog is left.
    client = raw(redis_url)
    assert client.ttl("{sendguard:s}:m:h1") > 0
    assert not client.exists("{sendguard:s}:held", "{sendguard:s}:heldrec", "{sendguard:s}:heldq")


def test_a_held_record_does_not_expire_while_held(make_store, redis_url):
    store = make_store()
    store.record_hold("h", "s", 1, time.time(), "QH")
    client = raw(redis_url)
    assert client.ttl("{sendguard:s}:m:h") == -1
    assert client.ttl("{sendguard:s}:held") == -1


def test_a_claim_that_fits_a_paused_or_small_cap(make_store):
    store = make_store()
    now = time.time()
    store.record_hold("h", "s", 6, now, "QH")
    assert store.claim_release("QH", now, 5, None).outcome == TOO_LARGE
    assert store.claim_release("QH", now, 0, None).outcome == OVER_HOURLY
    assert store.claim_release("QH", now, None, None).outcome == COUNTED


def test_every_key_of_a_stream_carries_its_hash_tag_and_expires(make_store, redis_url):
    store = make_store(Windows(hour=1, day=3))
    now = time.time()
    store.admit("trucking", "a", 1, now, None, None, "QA")
    store.mark_family_hold("f", "trucking", now, "QF", "yahoo.*")
    store.record_hold("h", "trucking", 1, now, "QH")
    client = raw(redis_url)
    keys = set(client.keys("*"))
    assert keys - {"sendguard:streams"}
    assert all(k.startswith("{sendguard:trucking}:") for k in keys - {"sendguard:streams"})
    for key in keys - {"sendguard:streams", "{sendguard:trucking}:m:h", "{sendguard:trucking}:held",
                       "{sendguard:trucking}:heldrec", "{sendguard:trucking}:heldq"}:  # fmt: skip
        assert 0 < client.ttl(key) <= 3 + 60, key


def test_memory_per_stream_is_one_entry_per_second_of_the_day(make_store, redis_url):
    store = make_store(Windows(hour=1, day=2))
    client = raw(redis_url)
    end = time.time() + 5
    i = 0
    while time.time() < end:
        i += 1
        store.admit("s", f"m{i}", 1, time.time(), None, None)
        time.sleep(0.01)
    # Seconds older than the day were trimmed by the counts: at most day + now's second + one.
    assert client.zcard("{sendguard:s}:sec") <= 4
    assert client.zcard("{sendguard:s}:cum") <= 4
    assert store.windows("s", time.time()).day <= i


def test_two_hosts_at_once_never_pass_more_than_the_cap(make_store):
    hosts = [make_store(), make_store()]
    results: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        host = hosts[n % 2]
        for i in range(8):
            outcome = host.admit("s", f"w{n}-{i}", 1, time.time(), 100, 1000).outcome
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 320
    assert results.count(COUNTED) == 100
    assert hosts[0].windows("s", time.time()).hour == 100


def test_redis_down_is_a_store_error_and_recovery_needs_no_reopen(make_store, redis_server):
    store = make_store()
    now = time.time()
    assert store.admit("s", "before", 1, now, 10, None).outcome == COUNTED
    redis_server.stop()
    calls = [
        lambda: store.admit("s", "during", 1, now, 10, None),
        lambda: store.windows("s", now),
        lambda: store.mark_family_hold("f", "s", now, "Q", "yahoo.*"),
        lambda: store.message_state("before"),
        lambda: store.record_hold("h", "s", 1, now, "QH"),
        lambda: store.held_messages("s"),
        lambda: store.claim_release("QH", now, 10, None),
        lambda: store.finish_release("QH", STATE_GONE, now),
        lambda: store.held_backlog(),
        lambda: store.family_holds(now),
    ]
    started = time.monotonic()
    for call in calls:
        with pytest.raises(StoreError) as info:
            call()
        assert redis_server.url in str(info.value) and "\n" not in str(info.value)
    assert time.monotonic() - started < 2  # refused connections, then failing at once: nobody waits
    # Started again, empty (no persistence here) and without the scripts: the same store works.
    redis_server.start()
    deadline = time.monotonic() + 5
    while True:
        try:
            assert store.admit("s", "after", 1, time.time(), 10, None).outcome == COUNTED
            break
        except StoreError:
            assert time.monotonic() < deadline, "the store did not recover"
            time.sleep(0.1)
    assert store.record_hold("h", "s", 1, now, "QH") is True
    assert store.held_backlog()["s"].messages == 1  # the stream registry was written again


def test_a_slow_redis_times_out_within_the_timeout(make_store, redis_server):
    store = make_store()
    store.admit("s", "a", 1, time.time(), 10, None)
    assert redis_server.proc is not None
    redis_server.proc.send_signal(19)  # SIGSTOP: connected, but never answers
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match="Timeout"):
            store.admit("s", "b", 1, time.time(), 10, None)
        assert time.monotonic() - started < 1.5
        started = time.monotonic()
        with pytest.raises(StoreError, match="unavailable"):
            store.admit("s", "c", 1, time.time(), 10, None)
        assert time.monotonic() - started < 0.1  # the next request does not wait the timeout again
    finally:
        redis_server.proc.send_signal(18)  # SIGCONT


def test_an_acl_user_with_a_password_file_is_enough(tmp_path, make_config):
    """The ACL the docs give, the password from redis_password_file, through settings and backend."""
    from redis_server import RedisServer
    from sendguard_policyd.backend import open_reader, open_store

    acl = ("--user", "sendguard", "on", ">s3cret", "~{sendguard:*", "~sendguard:*",
           "+@read", "+@write", "+@scripting", "+@connection", "+time")  # fmt: skip
    server = RedisServer(tmp_path / "acl", extra_args=acl)
    server.start()
    try:
        password = tmp_path / "redis.pass"
        password.write_text("s3cret\n")
        password.chmod(0o600)
        url = f"redis://sendguard@127.0.0.1:{server.port}/0"
        settings = make_config(
            store="redis", redis_url=url, redis_password_file=str(password), test_window_seconds=HOUR_2S.hour
        ).policyd
        store = open_store(settings)
        reader = open_reader(settings)
        try:
            now = time.time()
            assert store.admit("s", "a", 1, now, 5, None).outcome == COUNTED
            assert store.mark_family_hold("f", "s", now, "QF", "yahoo.*")
            assert store.record_hold("h", "s", 2, now, "QH")
            assert store.claim_release("QH", now, 5, None).outcome == COUNTED
            store.finish_release("QH", STATE_RELEASED, now)
            assert reader.windows("s", now).hour == 3
            assert reader.family_holds(now - 10) == {"s": 1}
            assert reader.held_backlog() == {}
        finally:
            store.close()
            reader.close()
        wrong = RedisCounterStore(url, password="wrong")
        with pytest.raises(StoreError, match="AuthenticationError"):
            wrong.windows("s", time.time())
        wrong.close()
    finally:
        server.stop()


def test_each_host_releases_only_what_its_own_postfix_holds(redis_url):
    """Two hosts hold mail under the same short queue id: each lists, claims and finishes its own."""
    a = RedisCounterStore(redis_url, windows=HOUR_2S, host="mx1")
    b = RedisCounterStore(redis_url, windows=HOUR_2S, host="mx2")
    try:
        now = time.time()
        assert a.record_hold("a-1", "s", 1, now, "4F2A")
        assert b.record_hold("b-1", "s", 2, now, "4F2A")
        assert [(m.instance, m.queue_id) for m in a.held_messages("s")] == [("a-1", "4F2A")]
        assert [(m.instance, m.queue_id) for m in b.held_messages("s")] == [("b-1", "4F2A")]
        backlog = a.held_backlog()["s"]  # status shows the whole budget's backlog
        assert (backlog.messages, backlog.recipients) == (2, 3)
        # A fresh releaser on mx2 (no memory of the listing) finds mx2's message, not mx1's.
        fresh_b = RedisCounterStore(redis_url, windows=HOUR_2S, host="mx2")
        claimed = fresh_b.claim_release("4F2A", now, 10, None)
        assert (claimed.outcome, claimed.hour_count) == (COUNTED, 2)
        fresh_b.finish_release("4F2A", STATE_RELEASED, now)
        fresh_b.close()
        assert a.message_state("a-1") == STATE_HELD and b.message_state("b-1") == STATE_RELEASED
        assert a.claim_release("4F2A", now, 10, None).outcome == COUNTED
        assert a.windows("s", now).hour == 3
    finally:
        a.close()
        b.close()
