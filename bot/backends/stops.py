"""Stop sequences applied to streamed text, shared by the local and the remote backends."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable
from contextlib import aclosing


class StopFilter:
    """Cuts a stream of text chunks at the first stop string.

    `feed` returns the text that can be shown now: everything except a tail that could still
    turn out to be the start of a stop string. Once a stop string is complete, the text before
    it is returned, the stop string itself never is, and `stopped` becomes true; later chunks
    are ignored. At the end of the stream `flush` returns the held-back tail (an unfinished
    prefix of a stop string is ordinary text after all). Empty stop strings are ignored.
    """

    __slots__ = ("_held", "_longest", "_stopped", "_stops")

    def __init__(self, stops: Iterable[str] = ()) -> None:
        self._stops: tuple[str, ...] = tuple(dict.fromkeys(s for s in stops if s))
        self._longest = max((len(s) for s in self._stops), default=0)
        self._held = ""
        self._stopped = False

    @property
    def stopped(self) -> bool:
        """True once a stop string has been seen; the stream is over."""
        return self._stopped

    def feed(self, chunk: str) -> str:
        """Take the next chunk; return the text that is safe to emit now (may be "")."""
        if self._stopped:
            return ""
        if not self._stops:
            return chunk
        text = self._held + chunk
        cut = self._first_stop(text)
        if cut is not None:
            self._stopped = True
            self._held = ""
            return text[:cut]
        keep = self._partial_tail(text)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        """End of stream: return whatever was held back (nothing after a stop)."""
        held, self._held = self._held, ""
        return "" if self._stopped else held

    def _first_stop(self, text: str) -> int | None:
        # The earliest occurrence wins, whichever stop string it is: text after it must not leak.
        found = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        return min(found) if found else None

    def _partial_tail(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        for size in range(min(len(text), self._longest - 1), 0, -1):
            tail = text[-size:]
            if any(s.startswith(tail) for s in self._stops):
                return size
        return 0


async def cut_at_stops(chunks: AsyncGenerator[str, None], stops: Iterable[str]) -> AsyncGenerator[str, None]:
    """`chunks` cut at the first stop string (see `StopFilter`). `chunks` is closed as soon as a
    stop string completes (or when this generator is closed), so a remote stream's connection is
    released at once rather than when the garbage collector gets to it."""
    stop_filter = StopFilter(stops)
    async with aclosing(chunks) as source:
        async for chunk in source:
            shown = stop_filter.feed(chunk)
            if shown:
                yield shown
            if stop_filter.stopped:
                return
    tail = stop_filter.flush()
    if tail:
        yield tail
