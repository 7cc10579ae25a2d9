"""Waiting in tests on what happened, never for a fixed time.

`wait_until` polls a condition with a deadline, for state that offers no event to wait on (another
thread's counters, another process, a database). `ReplyLog` keeps every reply the test's engines
handed out, so a test can tell a message showing a reply's final text from one showing the text
streamed so far (a final edit may still be on its way).
"""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:  # annotations only: the fakes import nothing of the bot at run time
    from bot.engine import ChatEngine
    from bot.events import ChatEvent
    from bot.reply import Reply

# How often `wait_until` looks again: short next to any deadline, long enough not to hog the loop.
POLL_S = 0.01


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout_s: float = 10.0,
    *,
    what: str = "",
    poll_s: float = POLL_S,
) -> None:
    """Return once `predicate()` (a plain or async callable) is true; checked at once, then every
    `poll_s`. Raises `TimeoutError` naming `what` when it is still false after `timeout_s` (an
    async predicate that hangs is cancelled at the deadline too)."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                result = predicate()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                await asyncio.sleep(poll_s)  # the poll interval, not a wait for something to happen
    except TimeoutError:
        raise TimeoutError(f"still waiting after {timeout_s} s until {what or predicate}") from None


class ReplyLog:
    """Every reply that the engines given to `watch` handed out, in order.

    `ReplyLog.current` is the running test's log (set by the `reply_log` fixture of
    tests/conftest.py, which every engine of `make_engine` reports to), so module-level helpers can
    reach it without a fixture argument.
    """

    current: ClassVar[ReplyLog | None] = None

    def __init__(self) -> None:
        self.replies: list[Reply] = []

    def watch(self, engine: ChatEngine) -> ChatEngine:
        """Record every reply `engine.handle` returns (`ask` and `stream` go through it too)."""
        handle = engine.handle

        def recording_handle(event: ChatEvent) -> Reply:
            reply = handle(event)
            self.replies.append(reply)
            return reply

        engine.handle = recording_handle  # type: ignore[method-assign]
        return engine

    def final_texts(self, pieces: Callable[[str], list[str]] = lambda text: [text]) -> Counter[str]:
        """The messages every finished reply that is posted (not a silent one) ends as, counted:
        `pieces` cuts a reply's whole text into the platform's messages (one by default)."""
        return Counter(
            piece
            for reply in self.replies
            if reply.done and not reply.silent
            for piece in pieces(reply.text_so_far())
        )

    def all_final(
        self, shown: Iterable[str], pieces: Callable[[str], list[str]] = lambda text: [text]
    ) -> bool:
        """True when each of the `shown` message texts is final: a message a finished reply ends
        as (as often as such messages exist), not the text streamed so far."""
        return not Counter(shown) - self.final_texts(pieces)

    @classmethod
    def of_this_test(cls) -> ReplyLog:
        if cls.current is None:
            raise RuntimeError("no ReplyLog: the reply_log fixture (tests/conftest.py) is not active")
        return cls.current
