"""Property: for arbitrary MIME trees, only the reported links change, exactly as the rules say.

Hypothesis builds a MIME tree (multiparts up to three deep; text/html and
text/plain leaves in 7bit, 8bit, quoted-printable and base64, UTF-8,
ISO-8859-1 and UTF-16; binary and attachment leaves) whose text mixes filler
with generated links. The model knows every link it planted and what the
rules make of it. Three checks per tree:

1. the rewritten body is byte for byte the tree serialised again with the
   model's expected link texts (so structure, headers and untouched parts are
   identical, and changed parts are re-encoded the same way);
2. decoding the output with the standard library gives the decoded input with
   exactly the reported changes applied, at the reported offsets;
3. the byte pre-scan never skips a message the full rewrite would change.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendguard_milter.links import rewrite as link_rewrite
from sendguard_milter.links.prescan import might_change
from sendguard_milter.links.rewrite import LinkPolicy, rewrite_message

PER_SUBSCRIBER = {"dot", "npi", "clia"}
# No 'h', 'r', 's', '-', '{' or '_': filler can never spell a URL, an attribute, a marker or a boundary.
FILLER = st.text(alphabet="abcdefgijklmnopqtuvwxyz ABC.,;:!&?=@<>\"'\n", max_size=40)


@dataclass(frozen=True)
class Link:
    host: str
    path: str
    query: str  # "" | "?" | "&"
    pairs: tuple[tuple[str, str], ...]
    fragment: bool
    marker: bool
    amp_entity: bool  # HTML only: '&' written as '&amp;'

    def render(self, repaired: bool = False, strip_all: bool = False) -> str:
        amp = "&amp;" if self.amp_entity else "&"
        text = f"https://{self.host}{self.path}"
        if self.query and self.pairs:
            lead = "?" if self.query == "?" or repaired else amp
            text += lead + amp.join(f"{k}={v}" for k, v in self.pairs)
        if self.fragment:
            text += "#top"
        if self.marker and not (repaired and self.strips(strip_all)):
            text += "@TrackLink"
        return text

    def strips(self, strip_all: bool) -> bool:
        per_sub = bool(self.query and any(k in PER_SUBSCRIBER for k, _ in self.pairs))
        return self.marker and (per_sub or strip_all)

    def repairs(self) -> bool:
        return self.query == "&" and bool(self.pairs)

    def kinds(self, strip_all: bool) -> list[str]:
        return (["marker_stripped"] if self.strips(strip_all) else []) + (["query_repaired"] if self.repairs() else [])


@dataclass(frozen=True)
class Leaf:
    ctype: str
    cte: str
    charset: str
    attachment: bool
    segments: tuple[object, ...]  # str filler or Link

    def text(self, strip_all: bool | None) -> str:
        """The part's text as sent (``strip_all`` None) or as the rules leave it."""
        if self.ctype == "application/octet-stream" or self.attachment:
            strip_all = None  # never rewritten
        out = []
        for seg in self.segments:
            if isinstance(seg, Link):
                link = seg.render(repaired=strip_all is not None, strip_all=bool(strip_all))
                out.append(f'<a href="{link}">go</a>' if self.ctype == "text/html" else f" ({link}) ")
            else:
                out.append(seg)
        return "".join(out).replace("\n", "\r\n")


@dataclass(frozen=True)
class Multi:
    subtype: str
    children: tuple[object, ...]


def links_strategy(charset: str, html: bool):
    hosts = ["example.net", "lists.example.org"] + (["bücher.example"] if charset != "us-ascii" else [])
    path_chars = "abcdefgxyz0123456789/.%" + ("ü" if charset != "us-ascii" else "")
    names = st.sampled_from(["dot", "npi", "clia", "utm_source", "utm_campaign", "x", "ids[]", "dotted"])
    values = st.text(alphabet="abcXYZ0123456789%@.", min_size=1, max_size=8)
    return st.builds(
        Link,
        host=st.sampled_from(hosts),
        path=st.text(alphabet=path_chars, max_size=12).map(lambda p: "/o/" + p.replace("//", "/")),
        query=st.sampled_from(["", "?", "&"]),
        pairs=st.lists(st.tuples(names, values), min_size=1, max_size=3).map(tuple),
        fragment=st.booleans(),
        marker=st.booleans(),
        amp_entity=st.booleans() if html else st.just(False),
    )


@st.composite
def leaves(draw):
    ctype = draw(st.sampled_from(["text/html", "text/plain", "text/plain", "application/octet-stream"]))
    cte = draw(st.sampled_from(["7bit", "8bit", "quoted-printable", "base64"]))
    charset = draw(st.sampled_from(["utf-8", "iso-8859-1", "utf-16"] if cte == "base64" else ["utf-8", "iso-8859-1"]))
    if cte == "7bit":
        charset = "us-ascii"
    accents = {"us-ascii": "", "iso-8859-1": "éüß", "utf-8": "éüß€→", "utf-16": "éüß€→"}[charset]
    filler = FILLER | st.text(alphabet="abc " + accents, max_size=5) if accents else FILLER
    seg = st.one_of(filler, links_strategy(charset, ctype == "text/html"))
    segments = draw(st.lists(seg, max_size=8).map(tuple))
    attachment = ctype == "text/plain" and draw(st.booleans()) and draw(st.booleans())
    return Leaf(ctype, cte, charset, attachment, segments)


trees = st.recursive(
    leaves(),
    lambda kids: st.builds(
        Multi, st.sampled_from(["mixed", "alternative", "related"]), st.lists(kids, min_size=1, max_size=3).map(tuple)
    ),
    max_leaves=6,
)


def serialise(lm, node, strip_all: bool | None, counter) -> tuple[str, str | None, bytes]:
    """(Content-Type value, Content-Transfer-Encoding or None, body) of ``node``."""
    if isinstance(node, Multi):
        boundary = f"sgB{next(counter)}x"
        parts = []
        for child in node.children:
            ctype, cte, body = serialise(lm, child, strip_all, counter)
            head = f"Content-Type: {ctype}\r\n" + (f"Content-Transfer-Encoding: {cte}\r\n" if cte else "")
            parts.append(head.encode() + b"\r\n" + body)
        return f'multipart/{node.subtype}; boundary="{boundary}"', None, lm.multipart(boundary, parts)
    text = node.text(strip_all)
    if node.cte == "quoted-printable":
        body = lm.qp(text, node.charset)
    elif node.cte == "base64":
        body = lm.b64(text, node.charset)
    else:
        body = text.encode(node.charset)
    ctype = f"{node.ctype}; charset={node.charset}"
    if node.attachment:
        # The disposition goes in as a continuation-free extra header via the type line.
        ctype += '\r\nContent-Disposition: attachment; filename="notes.txt"'
    return ctype, node.cte, body


def leaves_of(node):
    if isinstance(node, Multi):
        for child in node.children:
            yield from leaves_of(child)
    else:
        yield node


def message(lm, tree, strip_all: bool | None):
    ctype, cte, body = serialise(lm, tree, strip_all, itertools.count())
    headers = lm.top_headers("x/placeholder")
    headers = [(n, v) for n, v in headers if n != "Content-Type"]
    ctype_value, _, disposition = ctype.partition("\r\nContent-Disposition: ")
    headers.append(("Content-Type", ctype_value.encode()))
    if disposition:
        headers.append(("Content-Disposition", disposition.encode()))
    if cte:
        headers.append(("Content-Transfer-Encoding", cte.encode()))
    return lm.Msg(headers, body)


def _normal(link: str) -> str:
    return link.replace("@TrackLink", "").replace("&amp;", "&").replace("?", "&")


def view(ctype: str, charset: str, payload: bytes) -> str:
    return payload.decode("utf-16") if charset == "utf-16" else payload.decode("latin-1")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(tree=trees, setting=st.sampled_from([None, False, True]))
def test_only_reported_links_change(lm, tree, setting: bool | None) -> None:
    policy = LinkPolicy() if setting is None else LinkPolicy(strip_all_markers=setting)
    # Unset, every literal marker goes: one that reached the MTA was never processed by Listmonk.
    strip_all = True if setting is None else setting
    msg = message(lm, tree, None)
    result = rewrite_message(msg.headers, msg.body, policy)
    assert result.error is None, result.error

    all_leaves = list(leaves_of(tree))
    expected = []
    for index, leaf in enumerate(all_leaves):
        if leaf.ctype == "application/octet-stream" or leaf.attachment:
            continue
        for seg in leaf.segments:
            if isinstance(seg, Link):
                expected.extend((index, kind) for kind in seg.kinds(strip_all))
    assert [(c.part_index, c.kind) for c in result.changes] == expected

    # 1. Byte for byte: the same tree serialised with the rules applied by the model.
    wanted = message(lm, tree, strip_all)
    if expected:
        assert result.body == wanted.body
    else:
        assert result.body is None

    # 2. Decoded output = decoded input with exactly the reported changes applied.
    if expected:
        before = lm.decoded_leaves(msg)
        after = lm.decoded_leaves(msg, result.body)
        for index, ((ctype, old), (_, new), leaf) in enumerate(zip(before, after, all_leaves)):
            text = view(ctype, leaf.charset, old)
            edits = sorted({(c.offset, c.length, c.replacement) for c in result.changes if c.part_index == index}, reverse=True)
            for offset, length, replacement in edits:
                original = text[offset : offset + length]
                assert original.startswith("https://")
                # Only a marker removed and '&' (or '&amp;') turned into '?'.
                assert _normal(original) == _normal(replacement)
                text = text[:offset] + replacement + text[offset + length :]
            assert text == view(ctype, leaf.charset, new)

    # 3. The pre-scan never hides work from the full rewrite.
    if not might_change(msg.headers, msg.body):
        assert link_rewrite._rewrite(msg.headers, msg.body, policy).changes == []
