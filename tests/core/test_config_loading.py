"""The shared config core: types, unknown keys, file errors, and the message an operator sees."""

from __future__ import annotations

import pytest

from sendguard.cli.settings import load, parse
from sendguard.config_reader import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "sendguard.toml"
    path.write_text(text)
    return path


def test_embedded_defaults_need_no_file():
    config = load(None)
    assert config.policyd.listen == "127.0.0.1:10040"
    assert config.streams == ()


def test_unknown_top_level_key_names_file_and_key(tmp_path):
    path = write(tmp_path, "[polcyd]\nlisten = '127.0.0.1:1'\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(err.value) == f"{path}: polcyd: unknown key"


def test_unknown_nested_key_is_refused(tmp_path):
    path = write(tmp_path, "[general]\nstate_dir = '/tmp'\nlog_levle = 'info'\n")
    with pytest.raises(ConfigError, match=r"general\.log_levle: unknown key"):
        load(path)


def test_wrong_type_names_expected_type(tmp_path):
    path = write(tmp_path, "[general]\nstate_dir = 5\n")
    with pytest.raises(ConfigError, match=r"general\.state_dir: expected a string, got an integer"):
        load(path)


def test_boolean_is_not_an_integer():
    with pytest.raises(ConfigError, match="got a boolean"):
        parse({"streams": {"s": {"match": {"server_port": [25]}, "daily_cap": True}}})


def test_bad_value_reason(tmp_path):
    path = write(tmp_path, "[general]\nlog_level = 'loud'\n")
    with pytest.raises(ConfigError, match="'loud' is not one of debug, info, warning, error"):
        load(path)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "absent.toml")
    path = write(tmp_path, "[general\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(path)


def test_every_problem_is_reported_at_once_one_line_each():
    """A stream, the policy daemon and the milter each read on past the others' errors."""
    with pytest.raises(ConfigError) as err:
        parse({
            "streams": {"a": {"match": {"server_port": [0]}}, "b": {"daily_cap": 0, "match": {"server_port": [26]}}},
            "policyd": {"listen": "nowhere"},
            "milter": {"trusted_hosts": ["2000::/3"]},
        })  # fmt: skip
    assert [f"{e.key}: {e.reason}" for e in err.value.all()] == [
        "streams.a.match.server_port[0]: 0 is not a port",
        "streams.b.daily_cap: must be positive",
        "policyd.listen: 'nowhere' is not HOST:PORT",
        "milter.trusted_hosts[0]: " + err.value.all()[3].reason,
    ]
    assert str(err.value).count("\n") == 3 and str(err.value).startswith("<embedded defaults>: streams.a.match")


def test_every_unknown_key_of_a_table_is_named():
    with pytest.raises(ConfigError) as err:
        parse({"milter": {"trusted_host": [], "refusal": 550}, "polcyd": {}})
    # The top level is looked at once every part has read its tables (a part that failed may not have).
    assert [e.key for e in err.value.all()] == ["milter.refusal", "milter.trusted_host"]
    with pytest.raises(ConfigError) as err:
        parse({"polcyd": {}, "milter_": {}})
    assert [e.key for e in err.value.all()] == ["milter_", "polcyd"]
