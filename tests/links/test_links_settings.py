"""The [links] table: defaults, extension of the per-subscriber list, refusals naming the key."""

from __future__ import annotations

import pytest

from sendguard.cli.settings import parse
from sendguard.config_reader import ConfigError, Section
from sendguard_milter.links.rewrite import LinkPolicy
from sendguard_milter.links.settings import parse_links


def links(data: dict) -> LinkPolicy:
    return parse_links(Section(data, "links", "/etc/sendguard.toml"))


def test_defaults() -> None:
    policy = links({})
    assert policy == LinkPolicy()
    assert (policy.mode, policy.per_subscriber_params, policy.strip_all_markers) == ("strip", ("dot", "npi", "clia"), True)
    assert links({"strip_all_markers": False}).strip_all_markers is False  # the old rule, on request


def test_configured_parameters_extend_the_builtin_ones() -> None:
    policy = links({"per_subscriber_params": ["lp", "Carrier_ID", "dot"], "strip_all_markers": True, "mode": "report-only"})
    assert policy.per_subscriber_params == ("dot", "npi", "clia", "lp", "carrier_id")
    assert policy.strip_all_markers and policy.mode == "report-only"


@pytest.mark.parametrize(
    "data, key, reason",
    [
        ({"mode": "remove"}, "links.mode", "is not one of strip, report-only, off"),
        ({"strip_all_markers": "yes"}, "links.strip_all_markers", "expected a boolean"),
        ({"per_subscriber_params": ["dot", "a b"]}, "links.per_subscriber_params[1]", "is not a query parameter name"),
        ({"per_subscriber_params": "dot"}, "links.per_subscriber_params", "expected a list"),
        ({"max_part_bytes": 10}, "links.max_part_bytes", "must be at least 1024"),
        ({"max_part_bytes": 4096, "max_message_bytes": 2048}, "links.max_part_bytes", "larger than max_message_bytes"),
        ({"max_depth": 0}, "links.max_depth", "must be at least 1"),
        ({"stripall": True}, "links.stripall", "unknown key"),
    ],
)
def test_bad_values_stop_startup_naming_file_and_key(data: dict, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        links(data)
    assert err.value.file == "/etc/sendguard.toml" and err.value.key == key
    assert reason in err.value.reason


def test_the_shared_config_carries_the_links_policy_to_the_milter() -> None:
    config = parse({"links": {"mode": "off", "per_subscriber_params": ["lp"]}})
    assert config.milter.links.mode == "off"
    assert "lp" in config.milter.links.per_subscriber_params


def test_stream_mode_overrides_only_the_mode() -> None:
    policy = links({"strip_all_markers": True})
    assert policy.with_mode(None) is policy
    assert policy.with_mode("report-only") == LinkPolicy(mode="report-only", strip_all_markers=True)
