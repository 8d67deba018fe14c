"""The real daemon over real sockets, with a client that talks byte for byte as Postfix 3.7 does."""

from __future__ import annotations

import datetime as dt
import grp
import os
import stat
import socket
import time

import pytest
from prometheus_client import REGISTRY

from sendguard.config_reader import ConfigError
from sendguard_policyd import service, status
from sendguard_policyd.protocol import MAX_LINE_BYTES, format_request
from sendguard_testing.policy_client import PolicyClient, postfix_message, postfix_request


def trucking(cap: int = 3) -> dict:
    return {
        "match": {"server_port": [25], "client_address": ["172.18.0.5/32"]},
        "ramp": [[0, cap]],
        "daily_cap": 4000,
        "start_date": dt.date(2026, 1, 1),
        "over_cap": "defer",  # these tests read the deferral; holds: test_policyd_release.py
    }


@pytest.fixture
def daemon(start_daemon):
    return lambda streams=None, **policyd: start_daemon(streams if streams is not None else {"trucking": trucking()}, **policyd)


def send_message(client: PolicyClient, instance: str, recipients: list[str], **values: str) -> list[str]:
    """What smtpd asks for one message, and the answers it gets."""
    return [client.ask(r) for r in postfix_message(instance, f"Q{instance.upper()}", recipients, **values)]


def test_postfix_session_three_per_hour_lets_three_through_and_holds_yahoo(daemon):
    config, handle = daemon()
    with PolicyClient((handle.host, handle.port)) as client:
        answers = [send_message(client, f"m{i}", [f"carrier{i}@example.com"]) for i in range(4)]
        assert [a[-1] for a in answers[:3]] == ["DUNNO"] * 3
        assert all(a[0] == "DUNNO" for a in answers)  # RCPT answers
        fourth = answers[3][-1]
        assert fourth.startswith("DEFER_IF_PERMIT 4.7.1 sendguard: stream trucking is at its hourly cap of 3")
        assert "room frees at" in fourth
        # A Yahoo recipient is held at RCPT; its END-OF-MESSAGE passes (the hold stands) uncounted.
        held = send_message(client, "y1", ["someone@yahoo.co.uk"])
        assert held[0].startswith("HOLD ") and "Yahoo/Verizon-Media family (rule yahoo.*)" in held[0]
        assert held[1] == "DUNNO"
    assert handle.store.windows("trucking", time.time()).hour == 3
    assert "rolling hour    3 of 3" in status.render(config.config, config.policyd)


def test_yahoo_hold_consumes_no_cap(daemon):
    _, handle = daemon()
    with PolicyClient((handle.host, handle.port)) as client:
        for i in range(5):
            answers = send_message(client, f"y{i}", ["a@example.com", f"b{i}@ymail.com"])
            assert answers[1].startswith("HOLD ") and answers[2] == "DUNNO"
        assert [send_message(client, f"m{i}", ["c@example.com"])[-1] for i in range(3)] == ["DUNNO"] * 3
    assert handle.store.windows("trucking", time.time()).hour == 3


def test_postfix_retry_on_a_new_connection_is_not_counted_twice(daemon):
    _, handle = daemon()
    request = postfix_request(protocol_state="END-OF-MESSAGE", instance="retry", queue_id="QR", recipient_count="1")
    with PolicyClient((handle.host, handle.port)) as first:
        first.send_raw(format_request(request))
    # smtpd got no answer (connection lost): it reconnects and sends the same request again.
    time.sleep(0.2)
    with PolicyClient((handle.host, handle.port)) as again:
        assert again.ask(request) == "DUNNO"
        assert again.ask(request) == "DUNNO"
    assert handle.store.windows("trucking", time.time()).hour == 1


def test_pipelined_requests_in_one_write_get_replies_in_order(daemon):
    _, handle = daemon()
    reqs = [postfix_request(protocol_state="END-OF-MESSAGE", instance=f"p{i}", recipient_count="1") for i in range(5)]
    with PolicyClient((handle.host, handle.port)) as client:
        client.send_raw(b"".join(format_request(r) for r in reqs))
        replies = [client.read_reply() for _ in reqs]
    assert replies[:3] == [b"action=DUNNO\n\n"] * 3
    assert all(r.startswith(b"action=DEFER_IF_PERMIT 4.7.1") for r in replies[3:])


def test_garbage_gets_the_bad_request_answer_and_the_connection_goes_on(daemon, policyd_log):
    _, handle = daemon(bad_request_action="DEFER_IF_PERMIT 4.3.0 request not understood")
    with PolicyClient((handle.host, handle.port)) as client:
        client.send_raw(b"\x8f\xff garbage \x01\x02\n\n")
        assert client.read_reply() == b"action=DEFER_IF_PERMIT 4.3.0 request not understood\n\n"
        client.send_raw(b"protocol_state=RCPT\nrecipient=a@b.c\n\n")
        assert client.read_reply().startswith(b"action=DEFER_IF_PERMIT 4.3.0")
        client.send_raw(b"request=smtpd_access_policy\nrecipient=a@b.c\n\n")
        assert client.read_reply().startswith(b"action=DEFER_IF_PERMIT 4.3.0")
        assert client.ask(postfix_request()) == "DUNNO"  # still serving
    causes = [line for line in policyd_log.lines if "bad request" in line]
    assert len(causes) == 3
    assert "not name=value" in causes[0] and "no request= attribute" in causes[1]
    assert "no protocol_state" in causes[2]


def test_oversized_line_is_answered_then_closed_and_others_are_served(daemon, policyd_log):
    _, handle = daemon()
    with PolicyClient((handle.host, handle.port)) as other:
        with PolicyClient((handle.host, handle.port)) as client:
            client.send_raw(b"request=smtpd_access_policy\nsender=" + b"x" * (MAX_LINE_BYTES + 100))
            assert client.read_reply() == b"action=DUNNO\n\n"
            assert client.read_reply() == b""  # closed
        assert other.ask(postfix_request()) == "DUNNO"
    assert policyd_log.matching("request line longer than")


@pytest.mark.parametrize(("request_bytes", "cause"), [
    (b"request=smtpd_access_policy\nsender=" + b"x" * (MAX_LINE_BYTES + 100) + b"\n\n", "line_too_long"),
    (b"request=smtpd_access_policy\n" + b"".join(b"a%d=%s\n" % (i, b"x" * 500) for i in range(150)) + b"\n",
     "request_too_large"),
])  # fmt: skip
def test_an_oversized_request_that_arrives_whole_is_answered_then_closed(daemon, policyd_log, request_bytes, cause):
    # As when the same bytes arrive in pieces: how a request was split must not change the answer.
    _, handle = daemon()
    with PolicyClient((handle.host, handle.port)) as client:
        client.send_raw(request_bytes + format_request(postfix_request()))
        assert client.read_reply() == b"action=DUNNO\n\n"
        assert client.read_reply() == b""  # closed: the request behind it is not answered
    assert REGISTRY.get_sample_value("sendguard_policyd_bad_requests_total", {"reason": cause})


def test_request_without_terminator_is_answered_at_end_of_input(daemon, policyd_log):
    _, handle = daemon()
    with PolicyClient((handle.host, handle.port)) as client:
        client.send_raw(b"request=smtpd_access_policy\nprotocol_state=RCPT\n")
        client.sock.shutdown(socket.SHUT_WR)
        assert client.read_reply() == b"action=DUNNO\n\n"
        assert client.read_reply() == b""
    assert policyd_log.matching("end of input before the empty line")


def test_idle_connection_with_a_half_request_times_out(daemon, policyd_log):
    _, handle = daemon(idle_timeout=1)
    with PolicyClient((handle.host, handle.port)) as client:
        client.send_raw(b"request=smtpd_access_policy\nprotocol_")
        started = time.monotonic()
        assert client.read_reply() == b"action=DUNNO\n\n"
        assert client.read_reply() == b""
        assert 0.8 < time.monotonic() - started < 5
    assert policyd_log.matching("not ended within the idle timeout of 1 s")


def test_unix_socket(daemon, tmp_path):
    path = str(tmp_path / "spool" / "sendguard-policy")
    _, handle = daemon(socket=path, socket_mode="0660")
    assert oct(__import__("os").stat(path).st_mode & 0o777) == "0o660"
    with PolicyClient(path) as client:
        assert send_message(client, "u1", ["x@example.com"])[-1] == "DUNNO"
        assert send_message(client, "u2", ["x@aol.com"])[0].startswith("HOLD ")


def test_unix_socket_with_a_group_postfix_can_use(daemon, tmp_path):
    # umask 077 while it starts: the socket's access comes from socket_mode and socket_group alone.
    path = str(tmp_path / "private" / "sendguard-policy")
    old = os.umask(0o077)
    try:
        _, handle = daemon(socket=path, socket_mode="0660", socket_group="mail")
    finally:
        os.umask(old)
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == grp.getgrnam("mail").gr_gid
    with PolicyClient(path) as client:
        assert send_message(client, "g1", ["x@example.com"])[-1] == "DUNNO"


def test_restart_keeps_the_window(make_config):
    config = make_config({"trucking": trucking(cap=3)})
    first = service.start(config.config, config.policyd)
    with PolicyClient((first.host, first.port)) as client:
        assert [send_message(client, f"a{i}", ["x@example.com"])[-1] for i in range(2)] == ["DUNNO"] * 2
    first.stop()
    second = service.start(config.config, config.policyd)
    try:
        with PolicyClient((second.host, second.port)) as client:
            assert send_message(client, "b0", ["x@example.com"])[-1] == "DUNNO"
            assert send_message(client, "b1", ["x@example.com"])[-1].startswith("DEFER_IF_PERMIT 4.7.1")
    finally:
        second.stop()


def test_listen_address_in_use_stops_startup_with_the_key(make_config):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = make_config({}, listen=f"127.0.0.1:{busy.getsockname()[1]}")
        with pytest.raises(ConfigError) as info:
            service.start(config.config, config.policyd)
    assert "policyd.listen" in str(info.value) and "cannot listen" in str(info.value)


def test_a_client_that_does_not_read_still_gets_every_reply_in_order(daemon):
    # 3,000 pipelined requests whose 4 KB replies are not read until all are sent: 12 MB of
    # replies outgrow every socket buffer, so the daemon must queue them and send the rest
    # whenever the socket is writable again, in order.
    answer = "DEFER_IF_PERMIT 4.3.0 " + "x" * 4000
    _, handle = daemon(streams={}, bad_request_action=answer)
    reqs = [b"garbage\n\n"] * 3000 + [format_request(postfix_request(recipient="last@yahoo.com"))]
    with PolicyClient((handle.host, handle.port), timeout=30) as client:
        client.send_raw(b"".join(reqs))
        time.sleep(0.5)  # the daemon answers all it can and finds the socket full
        replies = [client.read_reply() for _ in reqs]
        assert replies[:-1] == [f"action={answer}\n\n".encode()] * 3000
        assert replies[-1].startswith(b"action=HOLD ")
        assert client.ask(postfix_request()) == "DUNNO"  # the connection still serves


def _busy_polled(samples_before: float) -> float:
    from prometheus_client import REGISTRY

    return (REGISTRY.get_sample_value("sendguard_policyd_busy_poll_seconds_total") or 0.0) - samples_before


@pytest.mark.parametrize("usec", [0, 5000])
def test_busy_poll_polls_only_when_configured(daemon, usec):
    from prometheus_client import REGISTRY

    _, handle = daemon(busy_poll_usec=usec)
    before = REGISTRY.get_sample_value("sendguard_policyd_busy_poll_seconds_total") or 0.0
    with PolicyClient((handle.host, handle.port)) as client:
        for i in range(20):
            assert client.ask(postfix_request(recipient=f"r{i}@example.com")) == "DUNNO"
            time.sleep(0.01)  # a gap longer than the window: every window runs out
    time.sleep(0.05)
    polled = _busy_polled(before)
    if usec:
        # Each of the 20 gaps was polled for (about) the whole 5 ms window before the loop slept.
        assert 20 * 0.004 < polled < 20 * 0.010
    else:
        assert polled == 0.0


def test_many_connections_ready_at_once_each_get_their_own_answer(daemon):
    # Requests written on 30 connections before any reply is read: the daemon finds several
    # sockets ready at once and sends their replies after the batch; each must reach its own client.
    _, handle = daemon(streams={})
    clients = [PolicyClient((handle.host, handle.port)) for _ in range(30)]
    try:
        for round_ in range(5):
            for i, client in enumerate(clients):
                domain = "yahoo.com" if (i + round_) % 3 == 0 else "example.com"
                client.send_raw(format_request(postfix_request(recipient=f"u{i}@{domain}", instance=f"m{round_}.{i}")))
            for i, client in enumerate(clients):
                reply = client.read_reply()
                if (i + round_) % 3 == 0:
                    assert reply.startswith(b"action=HOLD ") and b"yahoo.com" in reply
                else:
                    assert reply == b"action=DUNNO\n\n"
    finally:
        for client in clients:
            client.close()


def test_a_second_daemon_does_not_take_the_first_ones_unix_socket(daemon, make_config, tmp_path):
    path = str(tmp_path / "spool" / "sendguard-policy")
    _, first = daemon(socket=path)
    again = make_config({"trucking": trucking()}, socket=path)
    with pytest.raises(ConfigError) as info:
        service.start(again.config, again.policyd)
    assert "policyd.socket" in str(info.value) and "another process is listening on it" in str(info.value)
    with PolicyClient(path) as client:  # the first daemon still owns it
        assert client.ask(postfix_request()) == "DUNNO"
    first.stop()
    assert not __import__("os").path.exists(path)  # removed by its owner on the way out


def test_a_stale_unix_socket_file_is_replaced(daemon, tmp_path):
    path = tmp_path / "sendguard-policy"
    left_over = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left_over.bind(str(path))  # a socket file nobody listens on, as a killed daemon leaves it
    left_over.close()
    _, handle = daemon(socket=str(path))
    with PolicyClient(str(path)) as client:
        assert client.ask(postfix_request()) == "DUNNO"


def test_daemons_sharing_a_port_with_reuse_port_share_the_load_and_the_cap(make_config, tmp_path):
    # Two daemons (as two processes would) on one TCP port and one store: the kernel spreads
    # the connections over both, and together they still let exactly the cap through.
    db = str(tmp_path / "shared.sqlite")
    one = make_config({"trucking": trucking(cap=30)}, database=db, reuse_port=True)
    first = service.start(one.config, one.policyd)
    two = make_config({"trucking": trucking(cap=30)}, database=db, reuse_port=True, listen=f"127.0.0.1:{first.port}")
    second = service.start(two.config, two.policyd)
    clients = [PolicyClient((first.host, first.port)) for _ in range(20)]
    try:
        time.sleep(0.2)  # let both loops accept
        assert first._server.connections and second._server.connections
        assert len(first._server.connections) + len(second._server.connections) == 20
        passed = 0
        for i in range(60):
            answers = send_message(clients[i % 20], f"r{i}", [f"u{i}@example.com"], server_port="25",
                                   client_address="172.18.0.5")  # fmt: skip
            passed += answers[-1] == "DUNNO"
        assert passed == 30
    finally:
        for client in clients:
            client.close()
        first.stop()
        second.stop()


def test_without_reuse_port_a_taken_port_stops_start_up(daemon, make_config):
    _, first = daemon()
    taken = make_config({"trucking": trucking()}, listen=f"127.0.0.1:{first.port}", reuse_port=True)
    with pytest.raises(ConfigError, match="policyd.listen: cannot listen on"):
        service.start(taken.config, taken.policyd)


def test_the_event_loop_logs_the_summary_without_waiting_for_a_request(daemon, policyd_log):
    config, handle = daemon()
    handle.decider.summary.interval = 0.5  # the sweep runs about once a second
    with PolicyClient((handle.host, handle.port)) as client:
        assert send_message(client, "s1", ["carrier@example.com"])[-1] == "DUNNO"
    deadline = time.monotonic() + 10
    while not policyd_log.matching("summary:") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert policyd_log.matching("summary: stream trucking: 1 recipient(s) in 1 message(s) counted")
    assert "hour 1/3, day 1/4000" in policyd_log.matching("summary:")[0]
