"""Byte counts as people read them in a sentence: "256 KB", "10 MB", "12.3 MB"."""

from __future__ import annotations

from typing import Final

# (unit, decimal size, binary size), largest first.
_UNITS: Final = (("GB", 10**9, 2**30), ("MB", 10**6, 2**20), ("KB", 10**3, 2**10))


def human_size(size: int) -> str:
    """`size` in the largest unit it reaches, to one decimal at most.

    A whole number of binary units is said as such, so the limits people set read as they were
    written: 262144 is "256 KB", 10_000_000 is "10 MB", 12_345_678 is "12.3 MB"."""
    for unit, decimal, binary in _UNITS:
        if size >= binary and size % binary == 0:
            return f"{size // binary} {unit}"
        if size >= decimal:
            return f"{_one_decimal(size / decimal)} {unit}"
    return "1 byte" if size == 1 else f"{size} bytes"


def human_sizes(size: int, limit: int) -> tuple[str, str]:
    """`size` and `limit` for "SIZE; the limit is LIMIT": in bytes when rounding would make two
    different numbers read the same ("10 MB; the limit is 10 MB")."""
    shown_size, shown_limit = human_size(size), human_size(limit)
    if shown_size == shown_limit and size != limit:
        return f"{size:,} bytes", f"{limit:,} bytes"
    return shown_size, shown_limit


def _one_decimal(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")
