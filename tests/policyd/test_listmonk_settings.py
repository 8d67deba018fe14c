"""[listmonk.NAME]: what start-up accepts, and every problem that stops it with FILE: KEY: REASON."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sendguard.cli.settings import parse
from sendguard.config_reader import ConfigError
from sendguard_testing.command import sendguard_command

STREAMS = {
    "trucking": {"ramp": [[0, 50], [2, 150]], "daily_cap": 4000, "start_date": dt.date(2024, 1, 1), "match": {"server_port": [25]}},
    "healthcare": {"hourly_ceiling": 1000, "match": {"server_port": [2526]}},
}


def token_file(tmp_path: Path, text: str = "api-token-1234\n", mode: int = 0o600) -> Path:
    path = tmp_path / "listmonk.token"
    path.write_text(text)
    path.chmod(mode)
    return path


def config(tmp_path: Path, **tables: dict[str, Any]):
    data = {"general": {"state_dir": str(tmp_path / "state")}, "streams": STREAMS, "listmonk": tables}
    return parse(data, str(tmp_path / "sendguard.toml"))


def table(tmp_path: Path, **keys: Any) -> dict[str, Any]:
    base = {"url": "http://172.18.0.2:9000", "username": "sendguard", "stream": "trucking"}
    if "password_file" not in keys:
        base["password_file"] = str(token_file(tmp_path))
    base.update(keys)
    return base


def test_a_listmonk_table_with_its_defaults(tmp_path):
    (one,) = config(tmp_path, trucking=table(tmp_path)).listmonk
    assert (one.name, one.url, one.username, one.stream) == ("trucking", "http://172.18.0.2:9000", "sendguard", "trucking")
    assert one.secret == "api-token-1234"  # the file's first line
    assert one.auth == "token" and one.interval == 60.0
    assert not one.pause_campaigns and not one.resume_campaigns  # campaigns are touched only when asked
    assert one.apply_while_running == "pause_briefly"
    assert one.state_file == str(tmp_path / "state" / "listmonk-trucking.json")
    assert "api-token-1234" not in repr(one)


def test_every_key(tmp_path):
    (one,) = config(
        tmp_path,
        hc=table(tmp_path, url="https://lists.example.net/listmonk/", stream="healthcare", auth="basic",
                 pause_campaigns=True, resume_campaigns=True, apply_while_running="wait", interval=30, timeout=5),
    ).listmonk  # fmt: skip
    assert one.url == "https://lists.example.net/listmonk"
    assert (one.auth, one.pause_campaigns, one.resume_campaigns, one.apply_while_running) == ("basic", True, True, "wait")
    assert (one.interval, one.timeout) == (30.0, 5.0)


def test_a_relative_password_file_is_read_beside_the_config(tmp_path):
    token_file(tmp_path)
    (one,) = config(tmp_path, trucking=table(tmp_path, password_file="listmonk.token")).listmonk
    assert one.password_file == str(tmp_path / "listmonk.token") and one.secret == "api-token-1234"


@pytest.mark.parametrize(
    ("keys", "key", "reason"),
    [
        ({"stream": "marketing"}, "stream", "'marketing' is not a configured stream (trucking, healthcare)"),
        ({"url": "ftp://172.18.0.2"}, "url", "http:// or https://"),
        ({"url": "http://sendguard:api-token-1234@172.18.0.2:9000"}, "url", "carries credentials"),
        ({"url": "http://172.18.0.2:99999"}, "url", "not a URL"),
        ({"username": "send guard"}, "username", "white space"),
        ({"password_file": "/nonexistent/token"}, "password_file", "cannot read /nonexistent/token"),
        ({"auth": "bearer"}, "auth", "is not one of token, basic"),
        ({"apply_while_running": "reload"}, "apply_while_running", "is not one of pause_briefly, wait"),
        ({"interval": 1}, "interval", "between 5 and 3600"),
        ({"pause_campaign": True}, "pause_campaign", "unknown key"),
    ],
)
def test_problems_that_stop_start_up(tmp_path, keys, key, reason):
    with pytest.raises(ConfigError) as info:
        config(tmp_path, trucking=table(tmp_path, **keys))
    assert info.value.key == f"listmonk.trucking.{key}"
    assert reason in info.value.reason
    assert "api-token-1234" not in str(info.value)


def test_required_keys(tmp_path):
    with pytest.raises(ConfigError) as info:
        config(tmp_path, trucking={"url": "http://172.18.0.2:9000"})
    assert info.value.key == "listmonk.trucking.username" and info.value.reason == "is required"


def test_a_token_file_every_user_can_read_is_refused(tmp_path):
    path = token_file(tmp_path, mode=0o644)
    with pytest.raises(ConfigError) as info:
        config(tmp_path, trucking=table(tmp_path, password_file=str(path)))
    assert str(info.value) == (
        f"{tmp_path / 'sendguard.toml'}: listmonk.trucking.password_file: {path} is readable by every user"
        " (mode 0644): chmod o-r it"
    )
    empty = token_file(tmp_path, text="")
    with pytest.raises(ConfigError, match="listmonk.trucking.password_file: .* is empty"):
        config(tmp_path, trucking=table(tmp_path, password_file=str(empty)))


def test_every_table_s_problem_is_reported_and_two_tables_cannot_share_one_listmonk(tmp_path):
    with pytest.raises(ConfigError) as info:
        config(
            tmp_path,
            a=table(tmp_path, stream="nope"),
            b=table(tmp_path, url="http://10.0.0.9:9000"),
            c=table(tmp_path, url="http://10.0.0.9:9000/", stream="healthcare"),
            d=table(tmp_path, auth="oauth"),
        )
    problems = [(e.key, e.reason) for e in info.value.all()]
    assert [key for key, _ in problems] == ["listmonk.a.stream", "listmonk.d.auth", "listmonk.c.url"]
    assert "the same Listmonk as listmonk.b" in problems[2][1]


def test_a_disabled_table_needs_no_readable_token(tmp_path):
    (one,) = config(tmp_path, trucking=table(tmp_path, password_file="/nonexistent/token", enabled=False)).listmonk
    assert not one.enabled and one.secret == ""


def test_check_config_never_prints_the_token(tmp_path):
    token = token_file(tmp_path)
    cfg = tmp_path / "sendguard.toml"
    cfg.write_text(
        f'[general]\nstate_dir = "{tmp_path}"\n'
        '[streams.trucking]\nhourly_ceiling = 300\n[streams.trucking.match]\nserver_port = [25]\n'
        f'[listmonk.trucking]\nurl = "http://127.0.0.1:9000"\nusername = "sendguard"\npassword_file = "{token}"\n'
        'stream = "trucking"\n'
    )
    out = subprocess.run([sendguard_command(), "check-config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert f'password_file = "{token}"' in out.stdout and 'stream = "trucking"' in out.stdout
    assert "api-token-1234" not in out.stdout + out.stderr


def test_the_example_s_listmonk_tables_parse_once_uncommented(tmp_path):
    import tomllib

    example = (Path(__file__).resolve().parents[2] / "examples" / "sendguard.toml").read_text()
    lines, inside = [], False
    for line in example.splitlines():
        if line.startswith("# [listmonk."):
            inside = True
        elif inside and line.startswith("# ---"):
            inside = False
        lines.append(line[2:] if inside and line.startswith("# ") else ("" if inside and line == "#" else line))
    text = "\n".join(lines).replace("/var/lib/sendguard", str(tmp_path / "state")).replace("/etc/sendguard", str(tmp_path))
    (tmp_path / "state").mkdir()
    for stream in ("trucking", "healthcare"):
        (tmp_path / "state" / f"{stream}.start").write_text("1700000000\n")
        token_file(tmp_path).rename(tmp_path / f"listmonk-{stream}.token")
    settings = parse(tomllib.loads(text), str(tmp_path / "sendguard.toml"))
    assert [(one.name, one.stream, one.pause_campaigns) for one in settings.listmonk] == [
        ("trucking", "trucking", True), ("healthcare", "healthcare", True)
    ]
