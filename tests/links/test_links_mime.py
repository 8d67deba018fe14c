"""Whole messages: Listmonk-shaped MIME in, repaired and still signable MIME out."""

from __future__ import annotations

import binascii
import re

import pytest

from sendguard_milter.links import rewrite as link_rewrite
from sendguard_milter.links.rewrite import LinkPolicy, rewrite_message

CTA = "https://example.net/order/acme-freight?dot=1234567&utm_source=listmonk&utm_campaign=lanes"
STRIP = LinkPolicy()


def expect_decoded(lm, msg, body, replacements):
    """Decoding the output gives the input with exactly ``replacements`` applied, part by part."""
    before = lm.decoded_leaves(msg)
    after = lm.decoded_leaves(msg, body)
    assert len(before) == len(after)
    for (ctype, old), (ctype2, new), reps in zip(before, after, replacements):
        assert ctype == ctype2
        for a, b in reps:
            assert a.encode() in old
            old = old.replace(a.encode(), b.encode())
        assert new == old


def test_listmonk_alternative_with_marker_on_per_subscriber_cta(lm, signer) -> None:
    msg = lm.listmonk_alternative(CTA + "@TrackLink")
    result = rewrite_message(msg.headers, msg.body, STRIP)
    assert result.error is None and result.body is not None
    assert [(c.kind, c.host, c.path, c.part_index) for c in result.changes] == [
        ("marker_stripped", "example.net", "/order/acme-freight", 0),
        ("marker_stripped", "example.net", "/order/acme-freight", 1),
    ]
    assert result.parts_changed == 2
    expect_decoded(lm, msg, result.body, [[(CTA + "@TrackLink", CTA)]] * 2)
    # Listmonk's own redirect is still there, untouched, in both parts.
    assert all(lm.REDIRECT.encode() in p for _, p in lm.decoded_leaves(msg, result.body))
    assert signer.sign_and_verify(msg.raw(result.body))


def test_rewritten_quoted_printable_stays_crlf_and_76_columns(lm) -> None:
    msg = lm.listmonk_alternative(CTA + "@TrackLink")
    result = rewrite_message(msg.headers, msg.body, STRIP)
    assert b"\n" not in result.body.replace(b"\r\n", b"")
    assert max(len(line) for line in result.body.split(b"\r\n")) <= 76
    # The boundary lines and part headers are where they were.
    assert re.findall(rb"(?m)^--6a2f.*$|^Content-.*$", result.body) == re.findall(rb"(?m)^--6a2f.*$|^Content-.*$", msg.body)


def test_soft_line_break_inside_the_marker_does_not_hide_it(lm, signer) -> None:
    html = lm.listmonk_html(CTA + "@TrackLink")
    encoded = lm.qp(html)
    # Re-wrap so a soft break falls inside the marker: "@Track=\r\nLink".
    flat = binascii.a2b_qp(encoded).decode()
    cut = flat.index("@TrackLink") + len("@Track")
    payload = lm.qp(flat[:cut]).rstrip(b"\r\n") + b"=\r\n" + lm.qp(flat[cut:])
    assert b"@Track=\r\nLink" in payload and b"@TrackLink" not in payload
    body = lm.part('text/html; charset="UTF-8"', "quoted-printable", payload)
    msg = lm.Msg(lm.top_headers("multipart/alternative; boundary=b1"), lm.multipart("b1", [body]))
    result = rewrite_message(msg.headers, msg.body, STRIP)
    assert [c.kind for c in result.changes] == ["marker_stripped"]
    expect_decoded(lm, msg, result.body, [[(CTA + "@TrackLink", CTA)]])
    assert signer.sign_and_verify(msg.raw(result.body))


def test_base64_text_part_is_rewritten_and_the_8bit_html_beside_it_kept_byte_identical(lm, signer) -> None:
    text = lm.part('text/plain; charset="utf-8"', "base64", lm.b64(lm.listmonk_text(CTA + "@TrackLink"), width=72))
    html_payload = lm.listmonk_html("https://example.net/guide").encode() + b"\r\n"
    html = lm.part('text/html; charset="utf-8"', "8bit", html_payload)
    msg = lm.Msg(lm.top_headers("multipart/alternative; boundary=zz"), lm.multipart("zz", [text, html]))
    result = rewrite_message(msg.headers, msg.body, STRIP)
    assert [(c.kind, c.part_index, c.form) for c in result.changes] == [("marker_stripped", 0, "bare")]
    tail = msg.body[msg.body.index(b"--zz\r\nContent-Type: text/html") :]
    assert result.body.endswith(tail)
    b64_lines = result.body.split(b"\r\n\r\n", 1)[1].split(b"--zz")[0].split(b"\r\n")
    assert {len(x) for x in b64_lines[:-2]} == {72}  # same line length as the original
    expect_decoded(lm, msg, result.body, [[(CTA + "@TrackLink", CTA)], []])
    assert signer.sign_and_verify(msg.raw(result.body))


def test_mixed_message_with_attachment_only_the_changed_part_differs(lm) -> None:
    pdf = lm.part("application/pdf", "base64", lm.b64("%PDF-1.4 fake rate sheet " * 200), 'Content-Disposition: attachment; filename="rates.pdf"\r\n')
    inner = lm.listmonk_alternative("https://example.net/order/slug&utm_source=listmonk&utm_medium=email", boundary="alt42")
    body = lm.multipart(
        "mix42",
        [b'Content-Type: multipart/alternative; boundary="alt42"\r\n\r\n' + inner.body, pdf],
        preamble=b"This is a multi-part message in MIME format.\r\n",
        epilogue=b"trailing epilogue\r\n",
    )
    msg = lm.Msg(lm.top_headers('multipart/mixed; boundary="mix42"'), body)
    result = rewrite_message(msg.headers, msg.body, STRIP)
    assert [(c.kind, c.part_index) for c in result.changes] == [("query_repaired", 0), ("query_repaired", 1)]
    start = body.index(b"--alt42\r\n")
    end = body.index(b"--alt42--")
    assert result.body[:start] == body[:start]
    assert result.body[result.body.index(b"--alt42--") :] == body[end:]
    expect_decoded(
        lm,
        msg,
        result.body,
        [[("/order/slug&utm_source", "/order/slug?utm_source")]] * 2 + [[]],
    )


def test_message_with_nothing_to_change_is_not_replaced(lm) -> None:
    msg = lm.listmonk_alternative(lm.REDIRECT)
    result = rewrite_message(msg.headers, msg.body, STRIP)
    assert result.body is None and result.changes == [] and result.error is None
    assert not result.parsed  # the byte pre-scan answered


def test_static_tracked_link_loses_its_marker_by_default_and_keeps_it_with_strip_all_false(lm) -> None:
    static = "https://example.net/guide?utm_campaign=x@TrackLink"
    msg = lm.listmonk_alternative(static)
    result = rewrite_message(msg.headers, msg.body, STRIP)
    assert [c.kind for c in result.changes] == ["marker_stripped"] * 2
    expect_decoded(lm, msg, result.body, [[(static, static[: -len("@TrackLink")])]] * 2)
    result = rewrite_message(msg.headers, msg.body, LinkPolicy(strip_all_markers=False))
    assert result.body is None and result.changes == [] and result.parsed


def test_report_only_reports_and_changes_nothing(lm) -> None:
    msg = lm.listmonk_alternative(CTA + "@TrackLink")
    result = rewrite_message(msg.headers, msg.body, LinkPolicy(mode="report-only"))
    assert result.body is None
    assert [c.kind for c in result.changes] == ["marker_stripped"] * 2


def test_off_does_no_work(lm, monkeypatch) -> None:
    msg = lm.listmonk_alternative(CTA + "@TrackLink")
    monkeypatch.setattr(link_rewrite, "might_change", lambda *a: pytest.fail("off must not scan"))
    result = rewrite_message(msg.headers, msg.body, LinkPolicy(mode="off"))
    assert result == link_rewrite.RewriteResult()


def test_html_ampersand_entities_and_template_form(lm, signer) -> None:
    html = (
        '<p><a href="https://example.net/p?utm_source=a&amp;dot=77@TrackLink">one</a>'
        '<a href="https://example.net/order/slug&amp;utm_source=x">two</a>'
        '<a href="{{ TrackLink &quot;https://example.net/q?npi=1093817465&amp;x=1&quot; . }}">three</a>'
        '<a href="{{ TrackLink &quot;https://example.net/static&quot; . }}">four</a></p>'
    )
    payload = html.encode() + b"\r\n"
    msg = lm.Msg(lm.top_headers('text/html; charset="utf-8"', "7bit"), payload)
    result = rewrite_message(msg.headers, msg.body, STRIP)
    assert [c.kind for c in result.changes] == ["marker_stripped", "query_repaired", "marker_stripped", "marker_stripped"]
    assert result.body == (
        b'<p><a href="https://example.net/p?utm_source=a&amp;dot=77">one</a>'
        b'<a href="https://example.net/order/slug?utm_source=x">two</a>'
        b'<a href="https://example.net/q?npi=1093817465&amp;x=1">three</a>'
        b'<a href="https://example.net/static">four</a></p>\r\n'
    )
    assert signer.sign_and_verify(msg.raw(result.body))


def test_non_ascii_iri_in_latin1_8bit_part(lm, signer) -> None:
    html = '<a href="https://händler.example/straße?dot=42@TrackLink">Größe</a>\r\n'.encode("iso-8859-1")
    msg = lm.Msg(lm.top_headers("text/html; charset=iso-8859-1", "8bit"), html)
    result = rewrite_message(msg.headers, msg.body, STRIP)
    assert result.body == html.replace(b"@TrackLink", b"")
    assert (result.changes[0].host, result.changes[0].path) == ("händler.example", "/straße")
    assert signer.sign_and_verify(msg.raw(result.body))


def test_utf16_base64_part_is_decoded_for_real(lm) -> None:
    text = "Book: https://example.net/o?npi=7@TrackLink\r\n"
    msg = lm.Msg(lm.top_headers("text/plain; charset=utf-16", "base64"), lm.b64(text, "utf-16"))
    result = rewrite_message(msg.headers, msg.body, STRIP)
    assert [c.kind for c in result.changes] == ["marker_stripped"]
    assert lm.decoded_leaves(msg, result.body)[0][1].decode("utf-16") == text.replace("@TrackLink", "")


def test_utf8_in_a_part_header_does_not_cut_the_field(lm) -> None:
    # "Å" is C3 85 in UTF-8, and 0x85 read as Latin-1 is a line break to str.splitlines()
    # (not to mail): the charset after the file name must still be read.
    text = "Book: https://example.net/o?npi=7@TrackLink\r\n"
    head = 'Content-Type: text/plain; name="Årsrapport.txt"; charset=utf-16\r\nContent-Transfer-Encoding: base64\r\n'
    msg = lm.Msg(lm.top_headers("multipart/mixed; boundary=q"), lm.multipart("q", [head.encode() + lm.CRLF + lm.b64(text, "utf-16")]))
    result = rewrite_message(msg.headers, msg.body, STRIP)
    assert [c.kind for c in result.changes] == ["marker_stripped"]
    assert lm.decoded_leaves(msg, result.body)[0][1].decode("utf-16") == text.replace("@TrackLink", "")


def test_lf_only_message_keeps_lf(lm) -> None:
    msg = lm.listmonk_alternative(CTA + "@TrackLink")
    msg = lm.Msg(msg.headers, msg.body.replace(b"\r\n", b"\n"))
    result = rewrite_message(msg.headers, msg.body, STRIP)
    assert len(result.changes) == 2 and b"\r" not in result.body


def test_text_attachment_is_not_rewritten(lm) -> None:
    csv = lm.part("text/csv", "7bit", b"https://example.net/o?dot=1@TrackLink\r\n", "Content-Disposition: attachment\r\n")
    txt = lm.part("text/plain", "7bit", b"https://example.net/o?dot=1@TrackLink\r\n", 'Content-Disposition: attachment; filename="a.txt"\r\n')
    msg = lm.Msg(lm.top_headers("multipart/mixed; boundary=q"), lm.multipart("q", [csv, txt]))
    result = rewrite_message(msg.headers, msg.body, STRIP)
    assert result.body is None and result.changes == [] and result.error is None


# -- broken MIME: body unchanged, a reason, never an exception ----------------------------


def _broken_cases(lm):
    marker = lm.part("text/plain", "7bit", b"https://example.net/o?dot=1@TrackLink\r\n")
    yield "no_boundary", lm.top_headers("multipart/alternative"), lm.multipart("x", [marker])
    yield "boundary_not_found", lm.top_headers("multipart/alternative; boundary=nothere"), lm.multipart("x", [marker])
    yield "unterminated_multipart", lm.top_headers("multipart/alternative; boundary=x"), b"--x\r\n" + marker
    yield "bad_base64", lm.top_headers("text/plain; charset=utf-8", "base64"), b"aHR0cHM6Ly9leGFtcGxlLm5ldC9v?P2RvdD0xQFRyYWNrTGluaw==\r\n"
    yield "bad_quoted_printable", lm.top_headers("text/html; charset=utf-8", "quoted-printable"), b'<a href=3D"https://example.net/o?dot=3D1@TrackLink" x=3Z>\r\n'
    yield "unknown_charset", lm.top_headers("text/plain; charset=x-klingon", "7bit"), b"https://example.net/o?dot=1@TrackLink\r\n"
    yield "bad_charset_data", lm.top_headers("text/plain; charset=utf-16", "base64"), b"/w==\r\n"
    yield "bad_part_headers", lm.top_headers("multipart/mixed; boundary=x"), b"--x\r\nContent-Type: text/plain\r\nhttps://example.net/o?dot=1@TrackLink\r\n--x--\r\n"
    deep = marker
    for i in range(50):
        deep = f"Content-Type: multipart/mixed; boundary=d{i}\r\n\r\n".encode() + lm.multipart(f"d{i}", [deep])
    head, _, rest = deep.partition(b"\r\n\r\n")
    yield "too_deep", lm.top_headers(head.decode().split(": ", 1)[1]), rest
    many = lm.multipart("m", [marker] * 600)
    yield "too_many_parts", lm.top_headers("multipart/mixed; boundary=m"), many


@pytest.mark.parametrize("reason", [
    "no_boundary", "boundary_not_found", "unterminated_multipart", "bad_base64", "bad_quoted_printable", "unknown_charset",
    "bad_charset_data", "bad_part_headers", "too_deep", "too_many_parts",
])
def test_broken_mime_passes_unchanged_with_its_reason(lm, reason: str) -> None:
    headers, body = next((h, b) for r, h, b in _broken_cases(lm) if r == reason)
    for mode in ("strip", "report-only"):
        result = rewrite_message(headers, body, LinkPolicy(mode=mode))
        assert (result.body, result.reason) == (None, reason), result.error
        assert result.error and result.changes == []


def test_fifty_megabyte_part_is_never_decoded(lm) -> None:
    big = b"https://example.net/o?dot=1@TrackLink " + b"x" * (50 * 1024 * 1024) + b"\r\n"
    headers = lm.top_headers("text/plain; charset=utf-8", "8bit")
    result = rewrite_message(headers, big, STRIP)
    assert (result.body, result.reason) == (None, "message_too_large")
    result = rewrite_message(headers, big, LinkPolicy(max_message_bytes=64 * 1024 * 1024))
    assert (result.body, result.reason) == (None, "part_too_large")


def test_internal_failure_never_reaches_the_caller(lm, monkeypatch) -> None:
    msg = lm.listmonk_alternative(CTA + "@TrackLink")

    def explode(*args, **kwargs):
        raise RuntimeError("scanner bug")

    monkeypatch.setattr(link_rewrite, "find_links", explode)
    result = rewrite_message(msg.headers, msg.body, STRIP)
    assert (result.body, result.reason) == (None, "internal_error")
    assert "scanner bug" in result.error


def test_a_static_template_form_is_unwrapped_by_default_and_repaired_inside_when_kept(lm) -> None:
    html = (
        '<a href="{{ TrackLink &quot;https://example.net/static&quot; . }}">a</a>'
        '<a href="{{ TrackLink &quot;https://example.net/order/slug&amp;utm_source=x&quot; }}">b</a>\r\n'
    ).encode()
    headers = lm.top_headers('text/html; charset="utf-8"', "7bit")
    kept = rewrite_message(headers, html, LinkPolicy(strip_all_markers=False))
    assert [c.kind for c in kept.changes] == ["query_repaired"]
    assert kept.body == html.replace(b"slug&amp;utm", b"slug?utm")
    unwrapped = rewrite_message(headers, html, STRIP)
    assert [c.kind for c in unwrapped.changes] == ["marker_stripped", "marker_stripped", "query_repaired"]
    assert unwrapped.body == b'<a href="https://example.net/static">a</a><a href="https://example.net/order/slug?utm_source=x">b</a>\r\n'


def test_charset_name_with_a_nul_is_an_unknown_charset(lm) -> None:
    headers = lm.top_headers('text/plain; charset="ut\x00f-8"', "7bit")
    result = rewrite_message(headers, b"https://example.net/o?dot=1@TrackLink\r\n", STRIP)
    assert (result.body, result.reason) == (None, "unknown_charset")


@pytest.mark.parametrize(
    "cta_html, cta_text, fixed",
    [
        # listmonk #2493: a query with [] defeats the marker detector.
        ("https://example.net/q?ids[]=1&amp;ids[]=2&amp;dot=9@TrackLink", "https://example.net/q?ids[]=1&ids[]=2&dot=9@TrackLink",
         ("https://example.net/q?ids[]=1&amp;ids[]=2&amp;dot=9", "https://example.net/q?ids[]=1&ids[]=2&dot=9")),
        # listmonk #2499: a non-ASCII IRI, UTF-8 in quoted-printable.
        ("https://bücher.example/straße?npi=1093817465@TrackLink", None,
         ("https://bücher.example/straße?npi=1093817465",) * 2),
        # listmonk #3076: the marker after a template expression that did not render.
        ("https://example.net/o/{{ .Subscriber.Attribs.slug }}@TrackLink", None,
         ("https://example.net/o/{{ .Subscriber.Attribs.slug }}",) * 2),
        # incident 5: the literal marker at the end of a per-subscriber query.
        ("https://example.net/order/acme?dot=55&amp;utm_campaign=x@TrackLink", "https://example.net/order/acme?dot=55&utm_campaign=x@TrackLink",
         ("https://example.net/order/acme?dot=55&amp;utm_campaign=x", "https://example.net/order/acme?dot=55&utm_campaign=x")),
        # incident 5: the captured '&'-first URL.
        ("https://example.net/order/slug&amp;utm_source=listmonk", "https://example.net/order/slug&utm_source=listmonk",
         ("https://example.net/order/slug?utm_source=listmonk",) * 2),
    ],
)
def test_listmonk_bug_shapes_in_a_real_campaign(lm, signer, cta_html, cta_text, fixed) -> None:
    msg = lm.listmonk_alternative(cta_html, cta_text)
    result = rewrite_message(msg.headers, msg.body, STRIP)
    assert result.error is None and {c.part_index for c in result.changes} == {0, 1}
    text_before = cta_text or cta_html
    expect_decoded(lm, msg, result.body, [[(text_before, fixed[1])], [(cta_html, fixed[0])]])
    assert lm.REDIRECT.encode() in lm.decoded_leaves(msg, result.body)[1][1]
    assert signer.sign_and_verify(msg.raw(result.body))


def test_a_charset_that_names_a_bytes_codec_is_an_unknown_charset(lm) -> None:
    # charset=base64 (found by the fuzzer) names a Python codec that is no text charset: it must
    # pass unchanged with its reason, not end as an internal error.
    for charset in ("base64", "zlib", "hex"):
        headers = lm.top_headers(f"text/plain; charset={charset}", "7bit")
        result = rewrite_message(headers, b"https://example.net/o?dot=1@TrackLink\r\n", STRIP)
        assert (result.body, result.reason) == (None, "unknown_charset"), charset
