"""Is a downloaded file text, and in which encoding? Judged by its bytes, never by its name.

The order of the checks (see `text_of_file`): a byte-order mark decides at once; then a NUL byte or
a sample made mostly of control characters means binary (a zip renamed `.txt`, a PDF, an
executable); then strict UTF-8, by far the most common encoding and one that almost never decodes
anything else by accident; then `charset_normalizer` for the rest (Latin-1/cp1252, Shift-JIS, ...).
When it finds no encoding the file is binary.

A download cut at the limit may end in the middle of a multi-byte character: an incremental
decoder that is not told the input is final keeps such a partial character back, so it is dropped
instead of turning into U+FFFD or making the whole file look like binary.
"""

from __future__ import annotations

import codecs
from typing import Final

import charset_normalizer

from bot.sanitize import sanitize_text

# UTF-32 LE's mark starts with UTF-16 LE's: it is checked first. The codecs read the mark themselves.
_BYTE_ORDER_MARKS: Final = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)

_SAMPLE_BYTES: Final = 8192
# Control bytes a text file may well hold: tab, newlines, form feed, backspace, and ESC (logs with
# ANSI colours). Any other one is rare in text; in a sample where they pass this share, it is binary.
_TEXT_CONTROL_BYTES: Final = frozenset(b"\t\n\r\x0c\x08\x1b")
_MAX_CONTROL_SHARE: Final = 0.3

# On short Western European text charset_normalizer rates the Latin code pages nearly alike and
# often ranks cp1250 or cp1257 first: "naïve" became "naďve", "crème brûlée" "crčme brūlée". cp1252
# is by far the commonest of them (WHATWG decodes even "latin1" as cp1252), so it wins when the
# detector finds it as coherent and at most this much messier than its first choice.
_PREFERRED: Final = "cp1252"
_PREFERENCE_MARGIN: Final = 0.1

# A UTF-8 file with real multi-byte characters stays UTF-8 with at most one broken byte per this
# many characters (a log line cut by a crash, a file concatenated from two sources).
_MAX_REPLACED_PER: Final = 200

# A cut multi-byte character is at most 3 bytes long in the encodings charset_normalizer knows.
_MAX_PARTIAL_CHARACTER: Final = 3


def text_of_file(data: bytes, complete: bool) -> str | None:
    """The text in `data` (the start of a file; `complete` False when the file went on past it),
    cleaned of control characters as every message is (`bot.sanitize`); None when it is binary.

    CPU-bound on a large file (the detector reads it): call it in a worker thread."""
    text = _decoded(data, complete)
    return None if text is None else sanitize_text(text)


def _decoded(data: bytes, complete: bool) -> str | None:
    for mark, encoding in _BYTE_ORDER_MARKS:
        if data.startswith(mark):
            # The mark is a clear declaration: a stray invalid sequence becomes U+FFFD.
            return _decode(data, encoding, complete, errors="replace")
    if b"\x00" in data or _mostly_control(data[:_SAMPLE_BYTES]):
        return None
    try:
        return _decode(data, "utf-8", complete, errors="strict")
    except UnicodeDecodeError:
        pass
    mostly_utf8 = _mostly_utf8(_decode(data, "utf-8", complete, errors="replace"))
    if mostly_utf8 is not None:
        return mostly_utf8
    detected = _detected_encoding(data, complete)
    if detected is None:
        return None
    return _decode(data, detected, complete, errors="replace")


def _mostly_utf8(text: str) -> str | None:
    """`text` (decoded as UTF-8, invalid bytes replaced) when the file is UTF-8 with a few broken
    bytes: it holds real multi-byte characters and the replacements are rare. A detector would read
    such a file as a single-byte code page and garble every accented letter ("GrÃ¼ÃŸe")."""
    replaced = text.count("\ufffd")
    multibyte = sum(1 for char in text if ord(char) > 0x7F) - replaced
    if multibyte > 0 and replaced <= max(1, len(text) // _MAX_REPLACED_PER):
        return text
    return None


def _decode(data: bytes, encoding: str, complete: bool, *, errors: str) -> str:
    decoder = codecs.getincrementaldecoder(encoding)(errors=errors)
    return decoder.decode(data, final=complete)


def _mostly_control(sample: bytes) -> bool:
    if not sample:
        return False
    controls = sum(1 for byte in sample if (byte < 0x20 or byte == 0x7F) and byte not in _TEXT_CONTROL_BYTES)
    return controls > _MAX_CONTROL_SHARE * len(sample)


def _detected_encoding(data: bytes, complete: bool) -> str | None:
    # The detector decodes strictly: a partial character at the cut would make it reject the right
    # encoding, so a cut file is tried again without its last byte, then its last two, three.
    drops = range(1) if complete else range(_MAX_PARTIAL_CHARACTER + 1)
    for drop in drops:
        candidate = data[: len(data) - drop]
        if not candidate and data:
            break
        matches = charset_normalizer.from_bytes(candidate)
        best = matches.best()
        if best is None:
            continue
        for match in matches:
            if (
                match.encoding == _PREFERRED
                and match.chaos <= best.chaos + _PREFERENCE_MARGIN
                and match.coherence >= best.coherence
            ):
                return _PREFERRED
        return best.encoding
    return None
