"""A reply being produced: readable as a stream of chunks or awaited as one string."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Literal

# Why a generation ended: "length" when the token limit (`max_new_tokens`, or the room left in
# the context window) cut it, "stop" for every other end (end of turn, a stop sequence).
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one generation used, as the backend counts them (see `GenerationReport`)."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        """Prompt and completion together."""
        return self.prompt_tokens + self.completion_tokens


class ReplyStatus(Enum):
    """How the engine dealt with one event; final once the reply is done."""

    PENDING = "pending"
    ANSWERED = "answered"  # the model answered; the reply is stored in the history (see `Reply.cut`)
    COMMAND = "command"  # a command was handled
    NOTICE = "notice"  # a polite notice instead of generating (empty message, rate limit, busy)
    SUPERSEDED = "superseded"  # a /reset came after this message was queued: not answered, the text says so
    DUPLICATE = "duplicate"  # this platform message was seen already: send nothing
    DROPPED = "dropped"  # rate-limited again after the notice: send nothing
    IGNORED = "ignored"  # not for the bot (unaddressed, or refused in a group): send nothing, nothing stored
    FAILED = "failed"  # generation or storage failed; the text is an error message for the user


class CutReason(Enum):
    """Why a model reply ended before the model finished it. The text that came is kept: stored
    as the assistant's message with this reason, and followed by a short notice for the user."""

    STOPPED = "stopped"  # the user asked to stop it (the web page's Stop button)
    TIMEOUT = "timeout"  # no new text for `model.stall_timeout_s`, or `model.generation_timeout_s` in all
    SHUTDOWN = "shutdown"  # the bot was shutting down and its grace for running replies ran out


# Statuses whose text must not be posted to the platform.
SILENT_STATUSES = frozenset({ReplyStatus.DUPLICATE, ReplyStatus.DROPPED, ReplyStatus.IGNORED})


class Reply:
    """The answer to one event, filled by the engine while readers consume it.

    Any number of readers may iterate it (each sees every chunk from the start) or await `text()`.
    Readers never block the producer: chunks are kept until the reply is done.
    """

    def __init__(self, *, engaged: bool = True) -> None:
        self._chunks: list[str] = []
        self._changed = asyncio.Condition()
        self._done = False
        # False while the engine has not yet decided to answer (a group message the bot may be
        # meant to ignore): adapters show no "typing…" until then. See `engage`.
        self._engaged = engaged
        self.status = ReplyStatus.PENDING
        # Set by `ChatEngine.complete` before the reply finishes, when the backend reports them;
        # None otherwise (other replies, backends that do not count, failed generations).
        self.usage: Usage | None = None
        self.finish_reason: FinishReason | None = None
        # Set with an ANSWERED status when the model's text was cut short (and kept).
        self.cut: CutReason | None = None
        # The generation's place in the model's queue while it waits there (see `set_queue_position`).
        self._queue_position: int | None = None
        self._queued_since: float | None = None

    @property
    def done(self) -> bool:
        """True once the engine has finished this reply."""
        return self._done

    @property
    def engaged(self) -> bool:
        """True once the engine has decided to respond (typing may show); always true for
        replies to messages addressed to the bot."""
        return self._engaged

    async def engage(self) -> None:
        """Mark that the engine will respond (engine side)."""
        async with self._changed:
            self._engaged = True
            self._changed.notify_all()

    async def wait_engaged(self) -> None:
        """Wait until the engine has decided to respond, or the reply is done."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._engaged or self._done)

    @property
    def queue_position(self) -> int | None:
        """The generation's 1-based place among the requests waiting for the model (1: next),
        while it waits there; None when it is not waiting in the model's queue (not generating
        yet, running, done, or a backend without such a queue)."""
        return self._queue_position

    @property
    def queued_since(self) -> float | None:
        """The loop time the reply's current wait in the model's queue began (None: not waiting)."""
        return self._queued_since

    async def set_queue_position(self, position: int | None) -> None:
        """Record the generation's place in the model's queue, None once it left it (engine side)."""
        if position == self._queue_position:
            return
        async with self._changed:
            if position is None:
                self._queued_since = None
            elif self._queue_position is None:
                self._queued_since = asyncio.get_running_loop().time()
            self._queue_position = position
            self._changed.notify_all()

    async def places_in_line(self, after_s: float) -> AsyncGenerator[int | None, None]:
        """The reply's place in the model's queue to show its reader, until its first text or its
        end: nothing until it has waited there `after_s`, then its place at once and again each
        time it changes; None when it left the queue (and has no text yet). A reader that is slow
        to ask for the next one gets the place of that moment, never a stale one."""
        loop = asyncio.get_running_loop()
        showing = False  # the wait passed `after_s`: every change is news
        last: int | None = None
        while not self._done and not self._chunks:
            position, since = self._queue_position, self._queued_since
            within_s: float | None = None
            if not showing and position is not None and since is not None:
                within_s = since + after_s - loop.time()
                if within_s <= 0:
                    showing = True
            if showing and position != last:
                last = position
                yield position
                continue
            await self._wait_for_place(position, within_s)

    async def wait_for_text(self, within_s: float | None = None) -> bool:
        """Wait until the reply has text or is done, at most `within_s` seconds (None: no limit);
        True when it has or is."""
        await self._wait(lambda: False, within_s)
        return bool(self._chunks) or self._done

    async def _wait_for_place(self, seen: int | None, within_s: float | None) -> None:
        await self._wait(lambda: self._queue_position != seen, within_s)

    async def _wait(self, changed: Callable[[], bool], within_s: float | None) -> None:
        """Until `changed()`, the first text, the end, or `within_s` seconds (None: no limit)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s), self._changed:
                await self._changed.wait_for(lambda: changed() or bool(self._chunks) or self._done)

    @property
    def silent(self) -> bool:
        """True when nothing should be posted (a duplicate, or a dropped flood message)."""
        return self.status in SILENT_STATUSES

    async def push(self, chunk: str) -> None:
        """Append a chunk (engine side)."""
        if self._done:
            raise RuntimeError("reply already finished")
        if chunk:
            async with self._changed:
                self._chunks.append(chunk)
                self._changed.notify_all()

    def mark_cut(self, reason: CutReason) -> None:
        """Record that the model's text was cut short and kept (engine side, before `finish`)."""
        self.cut = reason

    async def finish(self, status: ReplyStatus) -> None:
        """Mark the reply complete with its final status (engine side)."""
        async with self._changed:
            self.status = status
            self._done = True
            self._changed.notify_all()

    async def __aiter__(self) -> AsyncIterator[str]:
        position = 0

        def ready() -> bool:
            return self._done or len(self._chunks) > position

        while True:
            async with self._changed:
                await self._changed.wait_for(ready)
                fresh = self._chunks[position:]
                finished = self._done
            position += len(fresh)
            for chunk in fresh:
                yield chunk
            if finished and position == len(self._chunks):
                return

    async def text(self) -> str:
        """Wait for the whole reply and return it."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._done)
        return "".join(self._chunks)

    def text_so_far(self) -> str:
        """What has been produced until now, without waiting."""
        return "".join(self._chunks)
