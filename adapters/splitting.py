"""Splitting a long reply into platform-sized messages (shared by every adapter)."""

from __future__ import annotations

# Break points in order of preference; each stays at the end of the piece before it, so joining the
# pieces gives back the text exactly.
_BREAKS = ("\n\n", "\n", " ")


def split_reply(text: str, limit: int) -> list[str]:
    """Cut `text` into pieces of at most `limit` characters whose concatenation is exactly `text`.

    Each cut is made at the last paragraph break (blank line) of the window, else the last line
    break, else the last space; a break is only taken when it keeps the piece at least half full
    (otherwise a better-filled cut at a lesser break wins). Text without any break is cut hard at
    `limit`. An empty text gives no pieces. Raises `ValueError` when `limit < 1`.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    pieces: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = _cut_point(rest, limit)
        pieces.append(rest[:cut])
        rest = rest[cut:]
    if rest:
        pieces.append(rest)
    return pieces


def _cut_point(text: str, limit: int) -> int:
    """Where to end the next piece of `text` (which is longer than `limit`): 1..limit."""
    fallback = 0
    for separator in _BREAKS:
        # The separator must end inside the window: the piece keeps it.
        found = text.rfind(separator, 0, limit - len(separator) + 1)
        if found <= 0:
            continue
        cut = found + len(separator)
        if cut * 2 >= limit:
            return cut
        fallback = max(fallback, cut)
    return fallback or limit
