"""The chat API's open replies, so that shutdown ends each one with a final word.

Every reply a chat client waits for (an SSE stream or a JSON answer) is read through
`OpenReplies.read`. At shutdown `drain` lets them finish for the grace, then stops the model
replies still running (`ChatService.stop`: their text is kept and stored), and finally abandons
whatever still waits (a reply queued behind another in its channel): its reader ends at once, so
every stream gets its `done` event and no response is left for uvicorn to cancel, which would log
"Exception in ASGI application" and send the client nothing final.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from bot.reply import CutReason, Reply

logger = logging.getLogger(__name__)

_GONE = object()  # the end of an iterator, for `anext`

# After the grace, how long stopped replies get to store their text and end.
STOP_SETTLE_S = 2.0
# After that, how long abandoned readers get to write their last event.
ABANDON_SETTLE_S = 1.0


class Abandoned(Exception):
    """The reply was not done when shutdown's time for it ran out."""


@dataclass(frozen=True, slots=True)
class InLine:
    """The reply's place in the model's queue (1: next), None once it left it (see `updates`)."""

    position: int | None


class _Reader:
    """One client's wait for one reply: `abandon` ends it at its current (or next) wait."""

    def __init__(self, channel_key: str) -> None:
        self.channel_key = channel_key
        self.abandoned = False
        self._scope: asyncio.Timeout | None = None

    @contextlib.asynccontextmanager
    async def waiting(self) -> AsyncIterator[None]:
        """One wait for the reply; raises `Abandoned` when `abandon` comes before or during it."""
        if self.abandoned:
            raise Abandoned
        try:
            async with asyncio.timeout(None) as scope:
                self._scope = scope
                yield
        except TimeoutError:
            if self.abandoned:
                raise Abandoned from None
            raise
        finally:
            self._scope = None

    def abandon(self) -> None:
        self.abandoned = True
        scope = self._scope
        if scope is not None and not scope.expired():
            # A timeout of "now": cancels the waiting task at the next loop turn, which the
            # scope turns into TimeoutError in that task only.
            scope.reschedule(asyncio.get_running_loop().time())


class OpenReplies:
    """Keeps the replies clients wait for; see the module's docstring."""

    def __init__(self) -> None:
        self._readers: set[_Reader] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def count(self) -> int:
        """Replies clients are waiting for now."""
        return len(self._readers)

    @contextlib.contextmanager
    def _tracked(self, channel_key: str) -> Iterator[_Reader]:
        reader = _Reader(channel_key)
        self._readers.add(reader)
        self._idle.clear()
        try:
            yield reader
        finally:
            self._readers.discard(reader)
            if not self._readers:
                self._idle.set()

    async def chunks(self, reply: Reply, channel_key: str) -> AsyncIterator[str]:
        """`reply`'s chunks as they come. Raises `Abandoned` when shutdown gave up on it; the
        caller then writes its own last word. Nothing is awaited between two reads but the
        caller's own work, so a reply is never abandoned while its chunk is being written."""
        with self._tracked(channel_key) as reader:
            async for chunk in self._chunks(reply, reader):
                yield chunk

    @staticmethod
    async def _chunks(reply: Reply, reader: _Reader) -> AsyncIterator[str]:
        chunks = aiter(reply)
        while True:
            async with reader.waiting():
                chunk = await anext(chunks, None)
            if chunk is None:
                return
            yield chunk

    async def updates(
        self, reply: Reply, channel_key: str, queue_notice_after_s: float
    ) -> AsyncIterator[str | InLine]:
        """`chunks`, preceded by the reply's place in the model's queue as it changes, once it
        has waited there `queue_notice_after_s` (`Reply.places_in_line`), and by `InLine(None)`
        before the first chunk (or the end) when a place was given. Raises `Abandoned` as
        `chunks` does."""
        with self._tracked(channel_key) as reader:
            last: int | None = None
            async with contextlib.aclosing(reply.places_in_line(queue_notice_after_s)) as places:
                while True:
                    async with reader.waiting():
                        place = await anext(places, _GONE)
                    if place is _GONE:
                        break
                    last = place if isinstance(place, int) else None
                    yield InLine(last)
            if last is not None:
                yield InLine(None)
            async for chunk in self._chunks(reply, reader):
                yield chunk

    async def text(self, reply: Reply, channel_key: str) -> str:
        """`reply`'s whole text once it is done. Raises `Abandoned` as `chunks` does."""
        with self._tracked(channel_key) as reader:
            async with reader.waiting():
                return await reply.text()

    async def drain(self, grace_s: float, stop: Callable[[str, CutReason], bool]) -> None:
        """Let the open replies finish for `grace_s`; then `stop` their channels' running model
        replies (with `CutReason.SHUTDOWN`) and give them `STOP_SETTLE_S` to end; then abandon the
        rest. Returns once no reply is open, or `ABANDON_SETTLE_S` after abandoning."""
        if await self._idle_within(grace_s):
            return
        channels = {reader.channel_key for reader in self._readers}
        stopped = sum(stop(key, CutReason.SHUTDOWN) for key in channels)
        logger.info(
            "web: %d replies still open after %g s; %d stopped, keeping their text",
            self.count,
            grace_s,
            stopped,
        )
        if await self._idle_within(STOP_SETTLE_S):
            return
        logger.warning("web: %d replies not done at shutdown; their clients get a final event", self.count)
        for reader in list(self._readers):
            reader.abandon()
        await self._idle_within(ABANDON_SETTLE_S)

    async def _idle_within(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True
