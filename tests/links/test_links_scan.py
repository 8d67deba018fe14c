"""Where links are found in a part's text."""

from __future__ import annotations

from sendguard_milter.links.scan import find_links


def links(text: str, html: bool) -> list[tuple[str, str]]:
    return [(f.form, text[f.start : f.end]) for f in find_links(text, html)]


def test_html_href_and_src_in_every_quoting_style() -> None:
    text = (
        '<a href="https://a.example/x?dot=1@TrackLink">A</a>'
        "<a HREF='https://b.example/y'>B</a>"
        "<a href=https://c.example/z>C</a>"
        '<img src="https://d.example/i.png">'
        '<a data-href="https://e.example/no">E</a>'
        '<a href="mailto:x@example.org">M</a>'
        '<a href="  https://f.example/padded  ">F</a>'
    )
    assert links(text, html=True) == [
        ("attribute", "https://a.example/x?dot=1@TrackLink"),
        ("attribute", "https://b.example/y"),
        ("attribute", "https://c.example/z"),
        ("attribute", "https://d.example/i.png"),
        ("attribute", "https://f.example/padded"),
    ]


def test_html_text_outside_attributes_is_not_a_link() -> None:
    assert links("<p>Visit https://example.net/p?dot=1@TrackLink today</p>", html=True) == []


def test_unrendered_token_href_is_a_link() -> None:
    assert links('<a href="{{ .Subscriber.Attribs.lp_link }}@TrackLink">Go</a>', html=True) == [
        ("attribute", "{{ .Subscriber.Attribs.lp_link }}@TrackLink")
    ]


def test_plain_text_bare_urls_and_listmonk_text_url_form() -> None:
    text = (
        "Book this load (https://example.net/order/acme?dot=55@TrackLink)\n"
        "See https://example.net/guide.\n"
        "Wiki: https://en.example.org/wiki/Truck_(vehicle), more.\n"
        "Token: https://example.net/o?ref={{ .Subscriber.UUID }}@TrackLink end\n"
    )
    assert links(text, html=False) == [
        ("bare", "https://example.net/order/acme?dot=55@TrackLink"),
        ("bare", "https://example.net/guide"),
        ("bare", "https://en.example.org/wiki/Truck_(vehicle)"),
        ("bare", "https://example.net/o?ref={{ .Subscriber.UUID }}@TrackLink"),
    ]


def test_template_form_is_one_link_in_html_and_plain() -> None:
    html = '<a href="{{ TrackLink &quot;https://example.net/p?dot=1&quot; . }}">Go</a> {{ TrackLink "https://example.net/q" }}'
    found = list(find_links(html, html=True))
    assert [(f.form, html[f.url_start : f.url_end]) for f in found] == [
        ("template", "https://example.net/p?dot=1"),
        ("template", "https://example.net/q"),
    ]
    plain = "Go: {{ TrackLink `https://example.net/p?npi=3` . }}\n"
    found = list(find_links(plain, html=False))
    assert [(f.form, plain[f.start : f.end]) for f in found] == [
        ("template", "{{ TrackLink `https://example.net/p?npi=3` . }}")
    ]


def test_unquoted_value_keeps_its_query() -> None:
    assert links("<a href=https://c.example/z?dot=1&x=2@TrackLink>C</a>", html=True) == [
        ("attribute", "https://c.example/z?dot=1&x=2@TrackLink")
    ]
