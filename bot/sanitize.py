"""Make untrusted text safe to store and to feed a model."""

from __future__ import annotations

import re
import unicodedata

# C0/C1 control characters except tab and newline; they have no meaning in a chat message and some
# (NUL) break databases and terminals.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def decode_text(data: bytes) -> str:
    """Decode bytes as UTF-8, replacing invalid sequences with U+FFFD instead of failing."""
    return data.decode("utf-8", errors="replace")


def sanitize_text(text: str) -> str:
    """Return `text` with line endings normalised, control characters and lone surrogates removed.

    Lone surrogates (from a broken UTF-16 source or `surrogateescape`) cannot be encoded as UTF-8
    and would make the database driver raise; they become U+FFFD.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if _has_surrogates(text):
        # A round trip through UTF-16 joins surrogate pairs that arrived split and turns the lone
        # ones into U+FFFD.
        text = text.encode("utf-16", errors="surrogatepass").decode("utf-16", errors="replace")
    text = _CONTROL.sub("", text)
    return unicodedata.normalize("NFC", text)


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def clip(text: str, max_chars: int) -> tuple[str, bool]:
    """Cut `text` to at most `max_chars` characters; say whether anything was cut."""
    if len(text) <= max_chars:
        return text, False
    return text[:max_chars], True
