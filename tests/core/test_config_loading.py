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
