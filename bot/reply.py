"""A reply being produced: readable as a stream of chunks or awaited as one string."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
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
