"""The [policyd] section: defaults that work next to Postfix, and errors that stop start-up."""

from __future__ import annotations

import pytest

from sendguard.cli.settings import parse
from sendguard.config_reader import ConfigError


def test_defaults_work_next_to_a_stock_postfix(tmp_path):
    config = parse({"general": {"state_dir": str(tmp_path)}})
    s = config.policyd
    assert s.listen == "127.0.0.1:10040"
    assert s.metrics_listen == "127.0.0.1:9466"
    assert s.database == str(tmp_path / "policyd.sqlite")
    assert s.bad_request_action == "DUNNO"
    assert s.unmatched == "dunno"
    assert s.expected_states == ("RCPT", "END-OF-MESSAGE")
    assert s.socket == "" and s.socket_mode == 0o666
    assert s.busy_poll_usec == 0  # polling spends CPU to save wake-ups: only when asked for


def test_all_keys_parse(tmp_path):
    s = parse(
        {
            "policyd": {
                "listen": "0.0.0.0:10041",
                "socket": str(tmp_path / "policy.sock"),
                "socket_mode": "0660",
                "unmatched": "defer",
                "bad_request_action": "DEFER_IF_PERMIT 4.3.0 policy request not understood",
                "expected_states": ["RCPT"],
                "family_extra_domains": ["BTinternet.com", "sky.*"],
                "idle_timeout": 60,
                "sqlite_synchronous": "full",
                "busy_poll_usec": 200,
            }
        }
    ).policyd
    assert s.socket_mode == 0o660 and s.unmatched == "defer" and s.idle_timeout == 60.0
    assert s.busy_poll_usec == 200
    assert s.family_extra_domains == ("btinternet.com", "sky.*")
    assert s.bad_request_action.startswith("DEFER_IF_PERMIT 4.3.0")


@pytest.mark.parametrize(
    "key, value, reason",
    [
        ("listen", "10040", "HOST:PORT"),
        ("unmatched", "hold", "is not one of"),
        ("bad_request_action", "MAYBE later", "not a Postfix access action"),
        ("bad_request_action", "DUNNO\nREJECT", "line break"),
        ("expected_states", ["RCPT", "END_OF_MESSAGE"], "is not one of"),
        ("family_extra_domains", ["*.example.com"], "wildcard"),
        ("family_extra_domains", ["bob@example.com"], "not a domain"),
        ("socket_mode", "rw-rw-rw-", "octal"),
        ("socket_group", "no-such-group-here", "no group 'no-such-group-here' on this host"),
        ("socket_group", "mail", "set policyd.socket too"),
        ("idle_timeout", 0, "between"),
        ("sqlite_synchronous", "off", "is not one of"),
        ("busy_poll_usec", 20000, "between 0 and 10000"),
        ("busy_poll_usec", "200us", "expected an integer"),
        # Placeholders and machine tuning that no longer exist are unknown keys like any other.
        ("over_cap_action", "defer", "unknown key"),
        ("cpu_latency_hold", True, "unknown key"),
        ("databse", "/tmp/x", "unknown key"),
    ],
)
def test_bad_values_stop_startup_with_file_key_and_reason(key, value, reason):
    with pytest.raises(ConfigError) as info:
        parse({"policyd": {key: value}}, "/etc/sendguard.toml")
    message = str(info.value)
    assert message.startswith("/etc/sendguard.toml: policyd.")
    assert key in message and reason in message


def test_family_mx_settings():
    s = parse({"policyd": {"family_mx_check": True, "family_mx_nameservers": ["127.0.0.1:5353", "::1"]}}).policyd
    assert s.family_mx_check and s.family_mx_nameservers == ("127.0.0.1:5353", "::1")
    with pytest.raises(ConfigError, match="policyd.family_mx_nameservers.0.: 'dns.example' is not an IP address"):
        parse({"policyd": {"family_mx_nameservers": ["dns.example"]}})


def _policyd(tmp_path, **keys):
    return parse({"general": {"state_dir": str(tmp_path)}, "policyd": keys}, str(tmp_path / "sendguard.toml")).policyd


def test_the_store_is_sqlite_unless_redis_is_asked_for(tmp_path):
    s = _policyd(tmp_path)
    assert (s.store, s.redis_url, s.redis_password, s.redis_timeout) == ("sqlite", "redis://127.0.0.1:6379/0", "", 0.5)
    password = tmp_path / "redis.pass"
    password.write_text("s3cret\n")
    password.chmod(0o640)
    s = _policyd(tmp_path, store="redis", redis_url="rediss://sendguard@redis.example.net:6380/2",
                 redis_password_file=str(password), redis_timeout=2)  # fmt: skip
    assert (s.store, s.redis_url, s.redis_password, s.redis_timeout) == (
        "redis", "rediss://sendguard@redis.example.net:6380/2", "s3cret", 2.0)  # fmt: skip
    assert "s3cret" not in repr(s)
    assert s.redis_password_file == str(password)


def test_check_config_never_prints_the_redis_password(tmp_path):
    import subprocess

    from sendguard_testing.command import sendguard_command

    password = tmp_path / "redis.pass"
    password.write_text("s3cret\n")
    password.chmod(0o600)
    config = tmp_path / "sendguard.toml"
    config.write_text(
        f'[general]\nstate_dir = "{tmp_path}"\n[policyd]\nstore = "redis"\nredis_password_file = "{password}"\n'
    )
    out = subprocess.run([sendguard_command(), "check-config", str(config)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert f'redis_password_file = "{password}"' in out.stdout
    assert "s3cret" not in out.stdout + out.stderr
    assert _policyd(tmp_path, store="redis", redis_url="unix:///run/redis/redis.sock?db=1").redis_url.startswith("unix:")


@pytest.mark.parametrize(
    ("keys", "key", "reason"),
    [
        ({"store": "memcached"}, "policyd.store", "memcached"),
        ({"redis_url": "redis://:hunter2@127.0.0.1:6379/0"}, "policyd.redis_url", "carries a password"),
        ({"redis_url": "redis://u:hunter2@127.0.0.1/0"}, "policyd.redis_url", "redis_password_file"),
        ({"redis_url": "unix:///run/redis.sock?password=x"}, "policyd.redis_url", "carries a password"),
        ({"redis_url": "http://127.0.0.1:6379"}, "policyd.redis_url", "scheme"),
        ({"redis_url": "redis://:99999999"}, "policyd.redis_url", "not a URL"),
        ({"redis_url": "unix://"}, "policyd.redis_url", "socket's path"),
        ({"redis_timeout": 30}, "policyd.redis_timeout", "smtpd_policy_service_timeout"),
        ({"redis_timeout": 0}, "policyd.redis_timeout", "more than 0"),
        ({"redis_host_name": "mx 1"}, "policyd.redis_host_name", "white space"),
        ({"store": "redis", "redis_password_file": "/nonexistent/pass"}, "policyd.redis_password_file",
         "cannot read /nonexistent/pass"),
    ],
)
def test_redis_keys_that_stop_start_up(tmp_path, keys, key, reason):
    with pytest.raises(ConfigError) as info:
        _policyd(tmp_path, **keys)
    assert info.value.key == key
    assert reason in info.value.reason
    assert "hunter2" not in str(info.value)


def test_a_password_file_every_user_can_read_is_refused(tmp_path):
    password = tmp_path / "redis.pass"
    password.write_text("s3cret\n")
    password.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        _policyd(tmp_path, store="redis", redis_password_file=str(password))
    assert str(info.value) == (
        f"{tmp_path / 'sendguard.toml'}: policyd.redis_password_file: {password} is readable by every user"
        " (mode 0644): chmod o-r it"
    )
    password.write_text("")
    password.chmod(0o600)
    with pytest.raises(ConfigError, match="is empty"):
        _policyd(tmp_path, store="redis", redis_password_file=str(password))
