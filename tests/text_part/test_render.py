"""HTML to text for the added text/plain part: what a reader of the plain part sees."""

from __future__ import annotations

from sendguard_milter.text_part.render import html_to_text


def test_links_show_their_address_after_their_text():
    html = '<p>See <a href="https://send.example.net/l/1?c=2">the loads</a> or <a href="https://send.example.net/">https://send.example.net/</a>.</p>'
    assert html_to_text(html) == "See the loads (https://send.example.net/l/1?c=2) or https://send.example.net/.\n"


def test_headings_lists_and_paragraphs_stay_readable():
    html = "<h1>Loads</h1><p>This week:</p><ul><li>Dallas</li><li>Tulsa <b>hot</b></li></ul><ol><li>one</li><li>two</li></ol><h3>Note</h3>end"
    assert html_to_text(html) == "Loads\n=====\n\nThis week:\n\n- Dallas\n- Tulsa hot\n\n1. one\n2. two\n\nNote\n\nend\n"


def test_images_scripts_styles_and_head_say_nothing():
    html = (
        "<html><head><title>Campaign</title><style>p{color:red}</style></head><body>"
        '<img src="https://t.example/open.gif" width="1" height="1" alt="">'
        '<img src="logo.png" alt="Logo">Hello<script>track()</script></body></html>'
    )
    assert html_to_text(html) == "Hello\n"


def test_entities_are_decoded_and_template_remnants_left_alone():
    html = "<p>Caf&eacute; &amp; bar &#8212; {{ UnsubscribeURL }} &lt;x&gt;</p>"
    assert html_to_text(html) == "Café & bar — {{ UnsubscribeURL }} <x>\n"


def test_whitespace_collapses_but_line_breaks_and_pre_are_kept():
    html = "<div>a\n   b</div><div>c<br>d</div><pre>  x\n  y</pre>"
    assert html_to_text(html) == "a b\n\nc\nd\n\n  x\n  y\n"


def test_broken_markup_still_renders():
    assert html_to_text("<p>unclosed <b>bold <a href='https://x.example/'>link") == "unclosed bold link\n"
    assert html_to_text("") == ""
    assert html_to_text("<img src=x>") == ""


def test_table_cells_are_spaced_and_mailto_links_show_the_address():
    html = '<table><tr><td>Load</td><td>Rate</td></tr><tr><td>A</td><td><a href="mailto:ops@send.example.net">mail us</a></td></tr></table>'
    assert html_to_text(html) == "Load  Rate\n\nA  mail us (ops@send.example.net)\n"


def test_a_template_remnant_in_a_link_stays_as_written():
    html = "<a href='{{ TrackLink \"https://x.example/a\" }}'>Read</a> {{ L.T \"email.unsub\" }}"
    assert html_to_text(html) == 'Read ({{ TrackLink "https://x.example/a" }}) {{ L.T "email.unsub" }}\n'
