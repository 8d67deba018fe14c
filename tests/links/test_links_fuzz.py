"""Damaged Listmonk messages: every outcome is a result or a named reason, never an internal error."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendguard_milter.links.rewrite import LinkPolicy, rewrite_message

CTA = "https://example.net/order/slug&utm_source=x&dot=5@TrackLink"
NASTY = [b"\r\n", b"\n", b"=", b"=\r\n", b"--", b"&amp;", b"&", b"@TrackLink", b"{{", b"}}", b'"', b"\x00", b"\xff\xfe", b"base64", b"http://", b"?"]


@st.composite
def damaged(draw, lm_module):
    msg = lm_module.listmonk_alternative(CTA)
    body = bytearray(msg.body)
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(body)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.sampled_from(NASTY) | st.binary(max_size=4))
        if action == "insert":
            body[pos:pos] = piece
        elif action == "delete":
            del body[pos : pos + draw(st.integers(1, 40))]
        else:
            body[pos : pos + len(piece)] = piece
    return msg.headers, bytes(body)


def test_damaged_messages_never_cause_an_internal_error(lm) -> None:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(case=damaged(lm), strip_all=st.booleans())
    def check(case, strip_all: bool) -> None:
        headers, body = case
        result = rewrite_message(headers, body, LinkPolicy(strip_all_markers=strip_all))
        assert result.reason != "internal_error", result.error
        if result.body is not None:
            assert result.changes and result.error is None and result.body != body

    check()


def test_any_content_type_or_encoding_header_is_handled(lm) -> None:
    body = lm.listmonk_alternative(CTA).body

    @settings(max_examples=300, deadline=None)
    @given(ctype=st.text(max_size=80) | st.sampled_from(['multipart/alternative; boundary="6a2f0c9d1e8b7a4c3d5e"; charset*=x', "multipart/alternative; boundary*0=6a2f; boundary*1=0c9d1e8b7a4c3d5e"]),
           cte=st.text(max_size=20))
    def check(ctype: str, cte: str) -> None:
        headers = [("Content-Type", ctype.encode("utf-8", "surrogatepass")), ("Content-Transfer-Encoding", cte.encode("utf-8", "surrogatepass"))]
        result = rewrite_message(headers, body, LinkPolicy())
        assert result.reason != "internal_error", result.error

    check()
