"""Listmonk's settings API and its traps, over a real socket to the stand-in (tests/support/listmonk_standin.py).

Each trap is shown twice: a naive client falls into it and the stand-in
records the damage; sendguard's client does not.
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import time

import pytest

from listmonk_standin import MASK, SECRETS, ListmonkStandin
from ports import free_port
from sendguard_policyd.listmonk.client import ListmonkClient, ListmonkError, is_masked, unmasked

WINDOW_KEYS = ("app.message_sliding_window", "app.message_sliding_window_duration", "app.message_sliding_window_rate")


@pytest.fixture
def standin():
    server = ListmonkStandin(reload_delay=0.05, downtime=0.05).start()
    yield server
    server.stop()


def client_for(standin: ListmonkStandin, auth: str = "token", token: str = "api-token-1234") -> ListmonkClient:
    return ListmonkClient(standin.url, "sendguard", token, auth=auth, timeout=5)


def raw(standin: ListmonkStandin, method: str, path: str, body: object = None) -> tuple[int, dict]:
    """A request as a naive script would send it (the token header, the body as given)."""
    conn = http.client.HTTPConnection("127.0.0.1", standin.port, timeout=5)
    payload = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=payload, headers={"Authorization": "token sendguard:api-token-1234"})
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    return response.status, answer


def wait_applied(standin: ListmonkStandin, rate: int) -> None:
    deadline = time.monotonic() + 5
    while standin.applied_window()[1] != rate:
        assert time.monotonic() < deadline, f"the stand-in never applied rate {rate}: {standin.applied_window()}"
        time.sleep(0.02)


def test_get_masks_every_secret_with_bullets(standin):
    settings = client_for(standin).get_settings()
    assert settings["smtp"][0]["password"] == MASK * len(SECRETS["smtp[0].password"])
    assert settings["security.oidc"]["client_secret"] == MASK * len(SECRETS["security.oidc.client_secret"])
    assert settings["bounce.mailboxes"][0]["password"].strip(MASK) == ""
    assert is_masked(settings["upload.s3.aws_secret_access_key"])


def test_a_naive_client_that_puts_the_masked_settings_back_overwrites_the_stored_passwords(standin):
    status, answer = raw(standin, "GET", "/api/settings")
    settings = answer["data"]
    settings["app.message_sliding_window"] = True
    settings["app.message_sliding_window_rate"] = 40
    status, _ = raw(standin, "PUT", "/api/settings", settings)
    assert status == 200
    overwritten = {path for path, _, _ in standin.secret_overwrites}
    assert "smtp[0].password" in overwritten and "bounce.mailboxes[0].password" in overwritten
    # Listmonk would now log in to Postfix with a password of bullets.
    assert standin.stored_secret("smtp[0].password") == MASK * len(SECRETS["smtp[0].password"])


def test_a_naive_client_that_puts_only_the_window_keys_wipes_the_rest(standin):
    status, answer = raw(standin, "PUT", "/api/settings", {"app.message_sliding_window": True,
                                                            "app.message_sliding_window_rate": 40})  # fmt: skip
    assert status == 400 and "SMTP" in answer["message"]  # no SMTP server left: Listmonk refuses
    smtp = copy.deepcopy(raw(standin, "GET", "/api/settings")[1]["data"]["smtp"])
    smtp[0]["password"] = ""
    status, _ = raw(standin, "PUT", "/api/settings", {"smtp": smtp, "app.message_sliding_window_rate": 40})
    assert status == 200
    assert "app.root_url" in standin.wiped_keys and standin.stored["app.root_url"] == ""
    assert standin.stored["app.from_email"] == ""


def test_the_client_changes_the_window_and_nothing_else(standin):
    before = copy.deepcopy(standin.stored)
    client = client_for(standin)
    settings = client.get_settings()
    settings.update({"app.message_sliding_window": True, "app.message_sliding_window_duration": "150s",
                     "app.message_sliding_window_rate": 1})  # fmt: skip
    assert client.put_settings(settings) is True
    assert standin.secret_overwrites == [] and standin.wiped_keys == []
    after = copy.deepcopy(standin.stored)
    for key in WINDOW_KEYS:
        after.pop(key), before.pop(key)
    assert after == before  # every other key, every secret, as it was
    wait_applied(standin, 1)
    assert standin.applied_window() == (True, 1, "150s")
    assert standin.reloads == [{"via": "settings", "campaigns_running": False}]


def test_while_a_campaign_runs_the_change_is_stored_but_not_applied(standin):
    standin.add_campaign("spring newsletter")
    client = client_for(standin)
    settings = client.get_settings()
    settings.update({"app.message_sliding_window": True, "app.message_sliding_window_rate": 7})
    assert client.put_settings(settings) is False  # needs_restart
    assert client.needs_restart() is True
    assert client.get_settings()["app.message_sliding_window_rate"] == 7  # reads back as if applied...
    time.sleep(0.2)
    assert standin.applied_window()[1] == 10000  # ...while Listmonk still runs on the old window
    assert standin.reloads == []


def test_a_paused_campaign_stays_in_listmonk_until_its_messages_drain():
    standin = ListmonkStandin(drain_seconds=0.3).start()
    try:
        cid = standin.add_campaign("spring newsletter")
        client = client_for(standin)
        assert [c.id for c in client.running_campaigns()] == [cid]
        assert client.set_campaign_status(cid, "paused").status == "paused"
        assert client.running_campaigns() == []
        assert client.put_settings(client.get_settings()) is False  # still draining: needs_restart
        time.sleep(0.35)
        assert client.put_settings(client.get_settings()) is True
    finally:
        standin.stop()


def test_campaign_status_changes_follow_listmonk_s_rules(standin):
    cid = standin.add_campaign("finished one", status="finished")
    with pytest.raises(ListmonkError) as info:
        client_for(standin).set_campaign_status(cid, "paused")
    assert info.value.status == 400 and "cannot change a finished campaign" in str(info.value)
    with pytest.raises(ListmonkError) as info:
        client_for(standin).campaign(99)
    assert info.value.status == 404


def test_token_and_basic_auth(standin):
    assert client_for(standin).needs_restart() is False
    assert client_for(standin, auth="basic").needs_restart() is False
    token_header = standin.requests[0][2]
    basic_header = standin.requests[1][2]
    assert token_header == "token sendguard:api-token-1234"
    assert base64.b64decode(basic_header.split()[1]).decode() == "sendguard:api-token-1234"
    with pytest.raises(ListmonkError) as info:
        client_for(standin, token="wrong").get_settings()
    assert info.value.status == 403 and "wrong" not in str(info.value)


def test_a_listmonk_before_v4_takes_basic_auth_only():
    old = ListmonkStandin(users={"admin": "admin-pass"}, token_auth=False).start()
    try:
        with pytest.raises(ListmonkError) as info:
            ListmonkClient(old.url, "admin", "admin-pass", auth="token").get_settings()
        assert info.value.status == 403
        assert ListmonkClient(old.url, "admin", "admin-pass", auth="basic").get_settings()["app.root_url"]
    finally:
        old.stop()


def test_listmonk_unreachable_is_an_error_with_the_reason():
    client = ListmonkClient(f"http://127.0.0.1:{free_port()}", "sendguard", "t", timeout=2)
    with pytest.raises(ListmonkError) as info:
        client.get_settings()
    assert info.value.status is None and "GET /api/settings" in str(info.value)
    assert "refused" in str(info.value).lower()


def test_listmonk_restarting_answers_503(standin):
    standin.down = True
    with pytest.raises(ListmonkError) as info:
        client_for(standin).needs_restart()
    assert info.value.status == 503


def test_unmasked_blanks_only_whole_masks():
    value = {"a": MASK * 3, "b": [{"password": MASK}, {"password": ""}], "c": "pass•word", "d": 3, "e": None}
    assert unmasked(value) == {"a": "", "b": [{"password": ""}, {"password": ""}], "c": "pass•word", "d": 3, "e": None}
    assert not is_masked("") and not is_masked("•x")
