"""A model's Markdown as Telegram HTML messages (pure functions).

Telegram's HTML parse mode knows a handful of tags, wants every tag of a message closed in that
message, and counts its 4096-unit limit on the text a user sees, not on the markup. So Markdown is
parsed once (markdown-it-py, CommonMark plus ~~strikethrough~~ and tables) into `Run`s: stretches
of visible text, each with the tags it sits in. The visible text is split like any reply
(`split_reply`, measured in UTF-16 units) and each part is written out on its own, its tags closed
at its end and reopened at the start of the next: a code block cut in two is two well-formed
`<pre>` blocks, whatever the cut. A preview of a half-written reply is just as well-formed (an
unclosed fence is a code block to the end of the text).

What shows as what: **bold**, *italic*, ~~struck~~, `code`, fenced code with its language, links
(http, https and mailto only; other links show their text), list items as "• " or "1. " lines,
headings as bold lines, block quotes, tables as " | "-joined lines. Raw HTML in the Markdown is
text, escaped. Nesting follows Telegram's rules: code holds no other formatting and sits in none
but a block quote; a code block leaves the quote it is in (Telegram nests neither).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import NamedTuple
from urllib.parse import urlsplit

from markdown_it import MarkdownIt
from markdown_it.token import Token

from adapters.telegram_events import MESSAGE_LIMIT, telegram_parts, utf16_length

PARSE_MODE = "HTML"

# html=False: raw HTML a model writes (<script>, <3) is text, escaped on the way out.
_PARSER = MarkdownIt("commonmark", {"html": False}).enable(["strikethrough", "table"])
_LINK_SCHEMES = frozenset({"http", "https", "mailto"})
_LANGUAGE = re.compile(r"[\w+#.-]{1,32}")


class Tag(NamedTuple):
    """One HTML element: its name and its attributes as written (escaped, with a leading space)."""

    name: str
    attributes: str = ""

    @property
    def opening(self) -> str:
        return f"<{self.name}{self.attributes}>"

    @property
    def closing(self) -> str:
        return f"</{self.name}>"


@dataclass(frozen=True, slots=True)
class Run:
    """A stretch of visible text and the tags it sits in, outermost first."""

    text: str
    tags: tuple[Tag, ...]


_BOLD, _ITALIC, _STRIKE, _CODE, _PRE, _QUOTE = (
    Tag("b"),
    Tag("i"),
    Tag("s"),
    Tag("code"),
    Tag("pre"),
    Tag("blockquote"),
)
_INLINE_TAGS = {"strong_open": _BOLD, "em_open": _ITALIC, "s_open": _STRIKE}
_INLINE_CLOSERS = frozenset({"strong_close", "em_close", "s_close", "link_close"})


def render(markdown: str) -> list[Run]:
    """The runs `markdown` shows as; their texts joined are what a user reads."""
    renderer = _Renderer()
    renderer.blocks(_PARSER.parse(markdown))
    return renderer.runs


def visible_text(markdown: str) -> str:
    """What a user reads of `markdown` rendered (all parts together)."""
    return "".join(run.text for run in render(markdown))


def to_html(runs: Sequence[Run]) -> str:
    """The runs as Telegram HTML: text escaped, every tag opened where needed and closed at the end."""
    out: list[str] = []
    open_tags: tuple[Tag, ...] = ()
    for run in runs:
        if not run.text:
            continue
        keep = _common_prefix(open_tags, run.tags)
        out.extend(tag.closing for tag in reversed(open_tags[keep:]))
        out.extend(tag.opening for tag in run.tags[keep:])
        out.append(html.escape(run.text, quote=False))
        open_tags = run.tags
    out.extend(tag.closing for tag in reversed(open_tags))
    return "".join(out)


def telegram_html_pieces(markdown: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """`markdown` as Telegram HTML messages, each well-formed and showing at most `limit` UTF-16
    units; parts that would show only whitespace are dropped (the others' visible texts joined
    are `visible_text(markdown)` when none was). Text that renders to nothing visible (say, only
    a link reference definition) is sent as it was written, escaped, rather than not at all."""
    return [to_html(part) for part in _parts(markdown, limit)]


def visible_pieces(markdown: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """What each of the `telegram_html_pieces` shows: the texts a user reads, message by message."""
    return ["".join(run.text for run in part) for part in _parts(markdown, limit)]


def _parts(markdown: str, limit: int) -> list[list[Run]]:
    runs = render(markdown)
    visible = "".join(run.text for run in runs)
    if not visible.strip():
        runs = [Run(markdown, ())]
        visible = markdown
    parts: list[list[Run]] = []
    start = 0
    for part in telegram_parts(visible, limit):
        end = start + len(part)
        if part.strip():
            parts.append(_slice(runs, start, end))
        start = end
    return parts


def plain_text(telegram_html: str) -> str:
    """The text of a message written by `telegram_html_pieces`, for sending without a parse mode:
    what it shows, with each link's address after its text ("docs (https://…)") as long as that
    still fits one message."""
    parser = _PlainText()
    parser.feed(telegram_html)
    parser.close()
    with_links = "".join(parser.with_links)
    return with_links if utf16_length(with_links) <= MESSAGE_LIMIT else "".join(parser.shown)


def _slice(runs: Sequence[Run], start: int, end: int) -> list[Run]:
    """The runs cut to the visible characters `start:end`."""
    out: list[Run] = []
    position = 0
    for run in runs:
        run_end = position + len(run.text)
        if run_end > start and position < end:
            out.append(Run(run.text[max(start - position, 0) : end - position], run.tags))
        position = run_end
        if position >= end:
            break
    return out


def _common_prefix(a: tuple[Tag, ...], b: tuple[Tag, ...]) -> int:
    count = 0
    for left, right in zip(a, b, strict=False):
        if left != right:
            break
        count += 1
    return count


def _link(href: str) -> Tag | None:
    """The `<a>` for a link target Telegram may show, None for any other (javascript:, relative…)."""
    try:
        scheme = urlsplit(href.strip()).scheme.lower()
    except ValueError:
        return None
    if scheme not in _LINK_SCHEMES:
        return None
    return Tag("a", f' href="{html.escape(href.strip(), quote=True)}"')


class _Renderer:
    """Walks markdown-it's tokens once, appending runs. Blocks are kept apart by a pending
    separator ("\\n" or "\\n\\n") written only when more text follows, so nothing trails."""

    def __init__(self) -> None:
        self.runs: list[Run] = []
        self._pending = ""
        self._quotes = 0
        self._lists: list[int | None] = []  # per open list: the next number, None for bullets
        self._heading = False
        self._in_header_cell = False
        self._cell = 0  # cells written in the current table row

    # --- writing ------------------------------------------------------------------------------

    def _block_tags(self) -> tuple[Tag, ...]:
        return (_QUOTE,) if self._quotes else ()

    def _separate(self, separator: str) -> None:
        if len(separator) > len(self._pending):
            self._pending = separator

    def _emit(self, text: str, tags: tuple[Tag, ...]) -> None:
        if not text:
            return
        if self._pending and self.runs:
            # Between two blocks: inside what both share (a quote), outside what only one has.
            shared = self.runs[-1].tags[: _common_prefix(self.runs[-1].tags, tags)]
            self.runs.append(Run(self._pending, tuple(t for t in shared if t in (_QUOTE,))))
        self._pending = ""
        self.runs.append(Run(text, tags))

    # --- blocks -------------------------------------------------------------------------------

    def blocks(self, tokens: Sequence[Token]) -> None:
        for token in tokens:
            kind = token.type
            if kind == "inline":
                base = self._block_tags() + ((_BOLD,) if self._heading or self._in_header_cell else ())
                self._inline(token.children or [], base)
            elif kind == "paragraph_close":
                self._separate("\n" if token.hidden else "\n\n")
            elif kind == "heading_open":
                self._heading = True
            elif kind == "heading_close":
                self._heading = False
                self._separate("\n\n")
            elif kind in ("bullet_list_open", "ordered_list_open"):
                start = token.attrGet("start")
                self._lists.append(None if kind == "bullet_list_open" else int(start or 1))
                self._separate("\n")
            elif kind in ("bullet_list_close", "ordered_list_close"):
                self._lists.pop()
                self._separate("\n" if self._lists else "\n\n")
            elif kind == "list_item_open":
                self._list_item()
            elif kind == "list_item_close":
                self._separate("\n")
            elif kind == "blockquote_open":
                self._quotes += 1
                self._separate("\n\n")
            elif kind == "blockquote_close":
                self._quotes -= 1
                self._separate("\n\n")
            elif kind in ("fence", "code_block"):
                self._code_block(token)
            elif kind == "hr":
                self._emit("———", self._block_tags())
                self._separate("\n\n")
            else:
                self._table(token)  # table tokens; anything else (paragraph_open…) adds nothing

    def _list_item(self) -> None:
        self._separate("\n")
        number = self._lists[-1]
        if number is None:
            marker = "•"
        else:
            marker = f"{number}."
            self._lists[-1] = number + 1
        self._emit("   " * (len(self._lists) - 1) + marker + " ", self._block_tags())

    def _code_block(self, token: Token) -> None:
        code = token.content.removesuffix("\n")
        language = token.info.split()[0] if token.info.strip() else ""
        inner = Tag("code", f' class="language-{language}"') if _LANGUAGE.fullmatch(language) else None
        self._separate("\n")
        # Outside any quote: Telegram nests no other entity with a code block.
        self._emit(code, (_PRE, inner) if inner else (_PRE,))
        self._separate("\n\n")

    def _table(self, token: Token) -> None:
        """Tables as lines: cells joined by " | ", the header row bold."""
        kind = token.type
        if kind == "tr_open":
            self._separate("\n")
            self._cell = 0
        elif kind in ("th_open", "td_open"):
            if self._cell:
                self._emit(" | ", self._block_tags())
            self._cell += 1
            self._in_header_cell = kind == "th_open"
        elif kind in ("th_close", "td_close"):
            self._in_header_cell = False
        elif kind == "table_close":
            self._separate("\n\n")

    # --- inline -------------------------------------------------------------------------------

    def _inline(self, children: Sequence[Token], base: tuple[Tag, ...]) -> None:
        # A stack of what each opening token pushed (None: a link shown as plain text).
        stack: list[Tag | None] = []

        def tags() -> tuple[Tag, ...]:
            return base + tuple(tag for tag in stack if tag is not None)

        for child in children:
            kind = child.type
            if kind in ("text", "html_inline"):
                self._emit(child.content, tags())
            elif kind in ("softbreak", "hardbreak"):
                self._emit("\n", tags())
            elif kind == "code_inline":
                current = tags()
                if any(tag.name == "a" for tag in current):
                    self._emit(child.content, current)  # Telegram puts no code inside a link
                else:
                    self._emit(child.content, (*self._block_tags(), _CODE))
            elif kind in _INLINE_TAGS:
                stack.append(_INLINE_TAGS[kind])
            elif kind == "link_open":
                inside_link = any(tag.name == "a" for tag in tags())
                stack.append(None if inside_link else _link(str(child.attrGet("href") or "")))
            elif kind in _INLINE_CLOSERS:
                if stack:
                    stack.pop()
            elif kind == "image":
                link = _link(str(child.attrGet("src") or ""))
                label = child.content or str(child.attrGet("src") or "")
                self._emit(label, tags() + ((link,) if link is not None else ()))


class _PlainText(HTMLParser):
    """Reads our own HTML back: the text shown, and the same with each link's address after it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.shown: list[str] = []
        self.with_links: list[str] = []
        self._href: str | None = None
        self._label: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href") or ""
            self._label = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            label = "".join(self._label)
            if self._href and self._href not in (label, f"mailto:{label}"):
                self.with_links.append(f" ({self._href})")
            self._href = None

    def handle_data(self, data: str) -> None:
        self.shown.append(data)
        self.with_links.append(data)
        if self._href is not None:
            self._label.append(data)
