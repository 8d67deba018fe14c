"""The attribute=value protocol: what is a request, what is a bad one, how a reply looks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sendguard_policyd.protocol import (
    MAX_ATTRIBUTES,
    MAX_LINE_BYTES,
    BadRequest,
    format_reply,
    format_request,
    parse_request,
)
from sendguard_testing.policy_client import postfix_request


def block(attrs) -> bytes:
    """A request without its terminating empty line, as the server hands it to parse_request."""
    return format_request(attrs)[:-2]


def test_full_postfix_request_parses_and_unknown_attributes_are_kept_but_harmless():
    attrs = postfix_request(protocol_state="END-OF-MESSAGE", recipient_count="2", policy_context="bulk")
    attrs.append(("some_future_attribute", "whatever=with=equals"))
    parsed = parse_request(block(attrs))
    assert parsed["protocol_state"] == "END-OF-MESSAGE"
    assert parsed["recipient_count"] == "2"
    assert parsed["policy_context"] == "bulk"
    assert parsed["some_future_attribute"] == "whatever=with=equals"
    assert parsed["queue_id"] == ""


def test_utf8_values_survive():
    parsed = parse_request(block(postfix_request(sender="jörg@bücher.example")))
    assert parsed["sender"] == "jörg@bücher.example"


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"protocol_state=RCPT", "missing_request"),
        (b"request=junk\nprotocol_state=RCPT", "wrong_request"),
        (b"request=smtpd_access_policy", "missing_protocol_state"),
        (b"request=smtpd_access_policy\nprotocol_state=", "missing_protocol_state"),
        (b"request=smtpd_access_policy\nprotocol_state=RCPT\nno equals sign here", "garbage"),
        (b"\xff\xfe\x00\x01binary", "garbage"),
        (b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=a\x00b", "garbage"),
        (b"=value\nrequest=smtpd_access_policy", "garbage"),
        (b"", "garbage"),
    ],
)
def test_bad_requests_name_their_cause(raw, reason):
    with pytest.raises(BadRequest) as info:
        parse_request(raw)
    assert info.value.reason == reason
    assert info.value.detail


def test_limits():
    long_line = b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=" + b"a" * MAX_LINE_BYTES
    with pytest.raises(BadRequest) as info:
        parse_request(long_line)
    assert info.value.reason == "line_too_long"
    many = b"\n".join(b"x%d=1" % i for i in range(MAX_ATTRIBUTES + 1))
    with pytest.raises(BadRequest) as info:
        parse_request(many)
    assert info.value.reason == "too_many_attributes"


def test_reply_format_and_line_breaks_cannot_end_it_early():
    assert format_reply("DUNNO") == b"action=DUNNO\n\n"
    assert format_reply("HOLD a\nb") == b"action=HOLD a b\n\n"


def test_postfix_request_refuses_attributes_postfix_does_not_send():
    with pytest.raises(ValueError):
        postfix_request(not_an_attribute="x")


def _outcome(parse, arg):
    try:
        return ("ok", dict(parse(arg)))
    except BadRequest as exc:
        return ("bad", exc.reason)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(
        st.one_of(
            st.builds(
                "{}={}".format,
                st.sampled_from(["request", "protocol_state", "recipient", "x", ""]),
                st.text("ab=é\r\t ", max_size=6),
            ),
            st.text("az_=\r \t.é-", max_size=8),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_the_fast_path_reads_every_request_as_the_careful_path_does(lines):
    """parse_request takes a one-scan shortcut for clean requests: same attributes, same refusals."""
    from sendguard_policyd.protocol import _parse_careful

    # Half the examples are otherwise valid requests, so the shortcut's successes are compared too.
    for head in ([], ["request=smtpd_access_policy", "protocol_state=RCPT"]):
        text = "\n".join(head + lines)
        if not text or "\n\n" in text or text.startswith("\n") or text.endswith("\n"):
            continue  # the server never hands such a block to the parser
        assert _outcome(parse_request, text.encode()) == _outcome(_parse_careful, text)
