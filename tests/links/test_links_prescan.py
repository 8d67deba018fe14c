"""The byte pre-scan: skips clean mail, never skips mail the full rewrite would change."""

from __future__ import annotations

import pytest

from sendguard_milter.links.prescan import might_change
from sendguard_milter.links.rewrite import LinkPolicy, rewrite_message


def test_clean_listmonk_message_is_skipped(lm) -> None:
    msg = lm.listmonk_alternative("https://example.net/order/acme?dot=1&utm_source=listmonk")
    assert not might_change(msg.headers, msg.body)


@pytest.mark.parametrize(
    "ctype, cte, payload",
    [
        ("text/html; charset=utf-8", "quoted-printable", b'<a href=3D"https://example.net/o?dot=3D1@Track=\r\nLink">x</a>\r\n'),
        ("text/html; charset=utf-8", "quoted-printable", b'<a href=3D"https://example.net/o?dot=3D1=40TrackLink">x</a>\r\n'),
        ("text/html; charset=utf-8", "quoted-printable", b'<a href=3D"https://example.net/order/slug=\r\n&utm_source=3Dx">x</a>\r\n'),
        ("text/html; charset=utf-8", "quoted-printable", b'<a href=3D"https://example.net/order/slug=26utm_source=3Dx">x</a>\r\n'),
        ("text/html; charset=utf-8", "7bit", b'<a href="https://example.net/order/slug&amp;utm_source=x">x</a>\r\n'),
        ("text/plain; charset=utf-8", "base64", b"aHR0cHM6Ly9leGFtcGxlLm5ldC9vP2RvdD0xQFRyYWNrTGluaw==\r\n"),
        ("text/plain; charset=utf-16", "8bit", "https://example.net/o?dot=1@TrackLink".encode("utf-16")),
    ],
)
def test_hidden_candidates_are_looked_at_and_repaired(lm, ctype: str, cte: str, payload: bytes) -> None:
    headers = lm.top_headers(ctype, cte)
    assert might_change(headers, payload)
    result = rewrite_message(headers, payload, LinkPolicy())
    assert result.changes and result.body is not None


def test_unknown_charset_alone_does_not_force_a_parse(lm) -> None:
    headers = lm.top_headers("text/plain; charset=x-unheard-of", "7bit")
    assert not might_change(headers, b"Hello, nothing here https://example.net/p?a=1\r\n")
