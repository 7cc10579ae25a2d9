"""Markdown to Telegram HTML: what each construct shows as, escaping, nesting, and splitting into
parts that are each valid on their own (checked by the fake server's copy of Telegram's parser)."""

from __future__ import annotations

import pytest

from adapters.telegram_events import utf16_length
from adapters.telegram_format import plain_text, telegram_html_pieces, visible_text
from tests.fakes.telegram_server import telegram_html_text


def html(markdown: str) -> str:
    """The one message `markdown` renders to, checked valid."""
    (piece,) = telegram_html_pieces(markdown)
    telegram_html_text(piece)
    return piece


def assert_valid_parts(pieces: list[str], limit: int) -> list[str]:
    """Each piece parses as Telegram HTML within `limit` units; returns what each shows."""
    shown = [telegram_html_text(piece) for piece in pieces]
    assert all(0 < utf16_length(text) <= limit for text in shown), [utf16_length(t) for t in shown]
    return shown


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("**bold** and __bold__", "<b>bold</b> and <b>bold</b>"),
        ("*italic* and _italic_", "<i>italic</i> and <i>italic</i>"),
        ("~~gone~~", "<s>gone</s>"),
        ("***both***", "<i><b>both</b></i>"),
        ("use `x < y && z`", "use <code>x &lt; y &amp;&amp; z</code>"),
        ("a\nb", "a\nb"),  # the model's line breaks stay line breaks
    ],
)
def test_inline_formatting(markdown: str, expected: str) -> None:
    assert html(markdown) == expected


def test_a_fenced_code_block_keeps_its_language_and_its_text_verbatim() -> None:
    markdown = "Look:\n\n```python\nif a < b and c & d:\n    print('**not bold**')\n```\nDone."
    assert html(markdown) == (
        'Look:\n\n<pre><code class="language-python">if a &lt; b and c &amp; d:\n'
        "    print('**not bold**')</code></pre>\n\nDone."
    )
    # No language, or one that is no language name: a plain <pre>.
    assert html("```\nx\n```") == "<pre>x</pre>"
    assert html('```"><script>\nx\n```') == "<pre>x</pre>"


def test_links_only_for_http_https_and_mailto() -> None:
    assert html("[docs](https://example.com/a?b=1&c=2)") == (
        '<a href="https://example.com/a?b=1&amp;c=2">docs</a>'
    )
    assert html("<http://example.com>") == '<a href="http://example.com">http://example.com</a>'
    assert html("[mail me](mailto:me@example.com)") == '<a href="mailto:me@example.com">mail me</a>'
    # A javascript: link is no link at all: its Markdown shows as written, as text.
    assert html("[click](javascript:alert(1))") == "[click](javascript:alert(1))"
    # Other schemes and relative targets show their text only.
    assert html("[file](ftp://example.com/f) and [here](/relative)") == "file and here"
    # Telegram puts no code inside a link: the code span's text stays, in the link.
    assert html("[`run()`](https://example.com)") == '<a href="https://example.com">run()</a>'


def test_raw_html_and_special_characters_are_escaped_text() -> None:
    assert html("<script>alert('x')</script>") == "&lt;script&gt;alert('x')&lt;/script&gt;"
    assert html("Tom & Jerry <3") == "Tom &amp; Jerry &lt;3"
    assert html('5 > 3 and "quotes"') == '5 &gt; 3 and "quotes"'


def test_lists_headings_quotes_and_tables_as_lines() -> None:
    markdown = (
        "# Plan\n\n"
        "- milk\n- **eggs**\n  - brown\n\n"
        "3. third\n4. fourth\n\n"
        "> said *someone*\n> > nested\n\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n\n"
        "---\n"
        "end"
    )
    assert html(markdown) == (
        "<b>Plan</b>\n\n"
        "• milk\n• <b>eggs</b>\n   • brown\n\n"
        "3. third\n4. fourth\n\n"
        "<blockquote>said <i>someone</i>\n\nnested</blockquote>\n\n"  # Telegram nests no quotes
        "<b>a</b> | <b>b</b>\n1 | 2\n\n"
        "———\n\n"
        "end"
    )


def test_code_never_sits_in_other_formatting() -> None:
    # Telegram allows no entity around code but a quote: bold stops where the code span starts,
    # and a code block leaves the quote it is written in.
    assert html("## The `main` function") == "<b>The </b><code>main</code><b> function</b>"
    assert html("> quote\n>\n> ```\n> code\n> ```") == "<blockquote>quote</blockquote>\n\n<pre>code</pre>"
    assert html("> `inline` stays") == "<blockquote><code>inline</code> stays</blockquote>"


def test_a_long_code_block_is_split_into_parts_each_a_whole_code_block() -> None:
    lines = [f"    value_{i} = compute({i}) < limit  # & more" for i in range(400)]
    markdown = "Here:\n\n```python\n" + "\n".join(lines) + "\n```\n\nThat is all."
    pieces = telegram_html_pieces(markdown)
    assert len(pieces) >= 4
    shown = assert_valid_parts(pieces, 4096)
    assert "".join(shown) == visible_text(markdown)
    opening = '<pre><code class="language-python">'
    assert pieces[0].startswith("Here:\n\n" + opening)
    assert all(piece.startswith(opening) for piece in pieces[1:])
    assert all(piece.endswith("</code></pre>") for piece in pieces[:-1])
    assert pieces[-1].endswith("</code></pre>\n\nThat is all.")
    # Cut at line ends: every part but the last ends its code with a whole line.
    assert all(text.endswith("# & more\n") for text in shown[:-1])


def test_the_limit_is_counted_in_shown_utf16_units_not_markup() -> None:
    # Every character escaped: the markup is 4-5 times the shown text, which still fills parts.
    markdown = "<&>" * 3000
    pieces = telegram_html_pieces(markdown)
    shown = assert_valid_parts(pieces, 4096)
    assert len(pieces) == 3 and "".join(shown) == markdown
    # Emoji count two units each; bold reopens in each part.
    emoji = "**" + "🙂" * 5000 + "**"
    pieces = telegram_html_pieces(emoji)
    shown = assert_valid_parts(pieces, 4096)
    assert "".join(shown) == "🙂" * 5000
    assert all(piece.startswith("<b>") and piece.endswith("</b>") for piece in pieces)


@pytest.mark.parametrize("limit", [40, 97, 4096])
def test_every_prefix_of_a_reply_renders_to_valid_parts(limit: int) -> None:
    """What a streamed preview is: any prefix of the reply, cut anywhere (mid-fence, mid-link,
    mid-emphasis), still gives valid parts that show the whole rendered prefix."""
    markdown = (
        "# Title\n\nSome **bold *nested* text** and `code`, a [link](https://example.com/x?a=1&b=2).\n\n"
        "1. one\n2. two & three\n\n> quoted **bold**\n\n```js\nconst a = b < c && d > e;\n"
        "console.log(`<${a}>`);\n```\n\n| x | y |\n|---|---|\n| <1> | &2 |\n\nBye 🙂."
    )
    for end in range(1, len(markdown) + 1):
        prefix = markdown[:end]
        shown = assert_valid_parts(telegram_html_pieces(prefix, limit), limit)
        assert "".join(shown) == (visible_text(prefix) if visible_text(prefix).strip() else prefix)


def test_text_that_renders_to_nothing_is_sent_as_written() -> None:
    assert telegram_html_pieces("[ref]: https://example.com") == ["[ref]: https://example.com"]
    assert telegram_html_pieces("<b>") == ["&lt;b&gt;"]  # raw HTML is text
    assert telegram_html_pieces("   \n\n ") == []


def test_plain_text_of_a_message_keeps_link_addresses_while_they_fit() -> None:
    piece = html("See **[docs](https://example.com/d)**, <https://x.org> & `a<b`")
    assert plain_text(piece) == "See docs (https://example.com/d), https://x.org & a<b"
    long = telegram_html_pieces("[a](https://example.com/" + "p" * 30 + ") " + "word " * 810)
    assert len(long) == 1
    assert plain_text(long[0]) == telegram_html_text(long[0])  # with the address it would not fit


@pytest.mark.parametrize(
    "bad",
    [
        "<p>paragraph</p>",
        "<b>open",
        "<b><i>crossed</b></i>",
        "1 < 2",
        "a & b",
        "&nbsp;",
        "<b><code>code in bold</code></b>",
        "<code><b>bold in code</b></code>",
        '<a href="https://a"><a href="https://b">x</a></a>',
        "<a>no href</a>",
        '<code class="language-py">outside pre</code>',
        "<br/>",
    ],
)
def test_the_fake_refuses_what_telegram_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        telegram_html_text(bad)


def test_the_fake_reads_what_telegram_reads() -> None:
    markup = (
        '<b>a</b> &lt;&amp;&gt;&quot; &#33;<pre><code class="language-py">x</code></pre>'
        "<tg-spoiler>s</tg-spoiler>"
    )
    assert telegram_html_text(markup) == 'a <&>" !xs'
