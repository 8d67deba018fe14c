"""One link at a time: when a marker goes, when a query is repaired, and that nothing else moves."""

from __future__ import annotations

import pytest

from sendguard_milter.links.rewrite import LinkPolicy
from sendguard_milter.links.url_repair import repair_url

PARAMS = frozenset({"dot", "npi", "clia"})


def fix(url: str, strip_all: bool = LinkPolicy().strip_all_markers, params: frozenset[str] = PARAMS) -> str:
    return repair_url(url, params, strip_all).text


@pytest.mark.parametrize(
    "before, after",
    [
        # The incident's shapes: marker on a per-subscriber link.
        ("https://example.net/order/acme?dot=1234567@TrackLink", "https://example.net/order/acme?dot=1234567"),
        ("https://example.net/p?npi=1093817465&utm_source=listmonk@TrackLink", "https://example.net/p?npi=1093817465&utm_source=listmonk"),
        ("https://example.net/lab?CLIA=05D0642827@TrackLink", "https://example.net/lab?CLIA=05D0642827"),
        # The marker shipped literally at the end of the query (incident 5, second instance).
        ("https://example.net/order/acme?dot=55&utm_campaign=x@TrackLink", "https://example.net/order/acme?dot=55&utm_campaign=x"),
        # Listmonk's detector gives up on [] (#2493) and leaves the marker.
        ("https://example.net/q?ids[]=1&ids[]=2&dot=9@TrackLink", "https://example.net/q?ids[]=1&ids[]=2&dot=9"),
        # Non-ASCII IRI (#2499): every other character kept as is.
        ("https://bücher.example/straße/größe?npi=42@TrackLink", "https://bücher.example/straße/größe?npi=42"),
        # A marker after a template expression (#3076): unrendered token means per-subscriber.
        ("https://example.net/o/{{ .Subscriber.Attribs.slug }}?x=1@TrackLink", "https://example.net/o/{{ .Subscriber.Attribs.slug }}?x=1"),
        ("https://example.net/o?ref={{ .Subscriber.UUID }}@TrackLink", "https://example.net/o?ref={{ .Subscriber.UUID }}"),
        ("https://example.net/o?ref=%7B%7B.Subscriber.UUID%7D%7D@TrackLink", "https://example.net/o?ref=%7B%7B.Subscriber.UUID%7D%7D"),
        # &amp; as Listmonk stores tracked URLs (#844): decoded for the decision, kept as written.
        ("https://example.net/p?utm_source=a&amp;dot=77@TrackLink", "https://example.net/p?utm_source=a&amp;dot=77"),
        ("https://example.net/p?dot=77&#64;TrackLink", "https://example.net/p?dot=77"),
    ],
)
def test_marker_is_stripped_from_per_subscriber_links(before: str, after: str) -> None:
    verdict = repair_url(before, PARAMS, False)
    assert verdict.text == after
    assert verdict.marker_stripped and verdict.per_subscriber


@pytest.mark.parametrize(
    "url",
    [
        "https://example.net/guide?utm_campaign=x@TrackLink",
        "https://example.net/pricing@TrackLink",
        "https://example.net/p?dotted=1@TrackLink",  # a name that merely starts like dot
        "https://example.net/p#dot=1@TrackLink",  # a fragment is not a query
    ],
)
def test_a_static_link_loses_its_literal_marker_by_default(url: str) -> None:
    # Listmonk replaces every marker it processes with a /link/<uuid> redirect, so a
    # literal one at the MTA was never processed: it can only damage the URL.
    assert fix(url) == url.replace("@TrackLink", "")
    assert fix(url, strip_all=False) == url  # strip_all_markers = false: the old, per-subscriber-only rule


def test_the_issue_examples_lose_their_marker_by_default() -> None:
    assert fix("https://example.net/blog?utm_campaign=x@TrackLink") == "https://example.net/blog?utm_campaign=x"
    assert fix("https://example.net/order/acme-freight&utm_source=x@TrackLink") == "https://example.net/order/acme-freight?utm_source=x"


def test_configured_extra_parameter_makes_a_link_per_subscriber() -> None:
    url = "https://example.net/p?lp=abc@TrackLink"
    assert fix(url, strip_all=False) == url
    assert fix(url, strip_all=False, params=PARAMS | {"lp"}) == "https://example.net/p?lp=abc"


@pytest.mark.parametrize(
    "before, after",
    [
        ("https://example.net/order/slug&utm_source=x", "https://example.net/order/slug?utm_source=x"),
        ("https://example.net/order/slug&utm_source=x&utm_medium=email#top", "https://example.net/order/slug?utm_source=x&utm_medium=email#top"),
        ("https://example.net/order/slug&amp;utm_source=x", "https://example.net/order/slug?utm_source=x"),
        ("https://example.net/order/caf%C3%A9&utm_source=x%20y", "https://example.net/order/caf%C3%A9?utm_source=x%20y"),
        ("HTTPS://Example.NET/Order/Slug&a=1", "HTTPS://Example.NET/Order/Slug?a=1"),
        ("https://example.net/order/slug&redirect=/home", "https://example.net/order/slug?redirect=/home"),
    ],
)
def test_ampersand_first_query_gets_its_question_mark(before: str, after: str) -> None:
    verdict = repair_url(before, PARAMS, False)
    assert verdict.text == after
    assert verdict.query_repaired and not verdict.marker_stripped


@pytest.mark.parametrize(
    "url",
    [
        "https://example.net/order/slug?utm_source=x&dot=1",  # already has '?'
        "https://example.net/a&b/c",  # '&' inside a path segment
        "https://example.net/search&q",  # no name=value after '&'
        "https://example.net/page#a&b=c",  # '&' only in the fragment
        "https://example.net/p%26q=1",  # an encoded '&' is data
        "mailto:dispatch@example.org?subject=a&body=b",
    ],
)
def test_urls_that_are_not_ampersand_first_are_left_alone(url: str) -> None:
    assert fix(url) == url


def test_both_repairs_on_one_link() -> None:
    verdict = repair_url("https://example.net/order/slug&utm_source=x&dot=5@TrackLink", PARAMS, False)
    assert verdict.text == "https://example.net/order/slug?utm_source=x&dot=5"
    assert verdict.marker_stripped and verdict.query_repaired


def test_listmonk_redirects_are_never_touched() -> None:
    url = "https://lists.example.net/link/0f2c7e38-2f7b-4b26-a0b5-0c2f8b3b6c11/3b0c6a9e-5d2f-4c1a-9f3e-7a8b9c0d1e2f/7f6e5d4c-3b2a-4190-8f7e-6d5c4b3a2918"
    assert fix(url) == url
    assert fix(url, strip_all=False) == url


def test_host_and_path_never_include_the_query() -> None:
    verdict = repair_url("https://user@example.net/order/acme?dot=1234567@TrackLink", PARAMS, False)
    assert (verdict.host, verdict.path) == ("example.net", "/order/acme")
    verdict = repair_url("https://example.net/order/acme&dot=1234567", PARAMS, False)
    assert (verdict.host, verdict.path) == ("example.net", "/order/acme")


def test_other_spellings_of_marker_and_parameter_names() -> None:
    assert fix("https://example.net/p?d%6Ft=1&commat;TrackLink") == "https://example.net/p?d%6Ft=1"
    assert fix("https://example.net/p?DOT=1&#x40;TrackLink") == "https://example.net/p?DOT=1"
    assert fix("https://example.net/p?dot=1@tracklink") == "https://example.net/p?dot=1@tracklink"  # not Listmonk's marker
