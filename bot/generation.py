"""One model generation for the engine: prepare the prompt, stream the backend's text into the
reply under the stall timeout and the total cap, and cut it short on the user's Stop or at
shutdown. A cut keeps the text that came (the engine stores it, marked with the reason); a
failure leaves its notice in the reply (see bot.failures) and keeps nothing. Until the first text
comes, the generation's place in the model's queue (`QueuePositions`) is kept on the reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass

from bot.backends.base import Backend, GenerationReport, PreparedPrompt, QueuePositions, reporting_stream
from bot.errors import GenerationTimeout
from bot.failures import GENERATION_ERRORS, report_error
from bot.metrics import EngineMetrics
from bot.ports import Conversation, SamplingSettings
from bot.reply import CutReason, Reply, ReplyStatus

logger = logging.getLogger(__name__)

SHUTDOWN_CUT = (CutReason.SHUTDOWN, "the shutdown grace ran out")
# How often a generation that has no text yet asks the backend for its place in the model's queue.
QUEUE_POLL_S = 0.5


@dataclass(frozen=True, slots=True)
class Generated:
    """A generation that ended without an error: the text (perhaps empty), its prompt, how many
    chunks; `cut` when it was cut short (the text is what came until then), `detail` says how."""

    text: str
    prompt: PreparedPrompt
    chunks: int
    cut: CutReason | None = None
    detail: str = ""


class _Cutter:
    """Ends one generation early, keeping its text: for the user's Stop, shutdown and timeouts.

    The stream is read under one `asyncio.timeout` (`arm`); each chunk moves its deadline to
    `stall_timeout_s` later (never past the total cap), and `cut` moves it to now. One timer serves
    every reason, and `reason` tells them apart once it fired (None: a timeout). Leaving the
    timeout closes the backend's stream, which stops the model (the local one within a token).
    """

    def __init__(self) -> None:
        self.reason: CutReason | None = None
        self.detail = ""
        self._timeout: asyncio.Timeout | None = None
        self._ended = False

    def cut(self, reason: CutReason, detail: str) -> bool:
        """Cut the generation now (or, before it streams, keep it from starting). False when it
        ended, was cut already, or a timeout fired just before (that is then its reason)."""
        if self.reason is not None or self._ended:
            return False
        timeout = self._timeout
        if timeout is not None and timeout.expired():
            return False
        self.reason, self.detail = reason, detail
        if timeout is not None:
            timeout.reschedule(asyncio.get_running_loop().time())  # fires at the next loop turn
        return True

    def arm(self, timeout: asyncio.Timeout) -> bool:
        """The stream is about to be read under `timeout`; False when it was cut before that."""
        self._timeout = timeout
        return self.reason is None

    def end(self) -> None:
        """The stream ended (by itself, by an error, or cut): a later `cut` changes nothing."""
        self._ended = True


class Generations:
    """Runs the engine's generations and knows which one each channel is running, so that
    `stop` can cut it and `cut_all` can cut every one at shutdown."""

    def __init__(
        self,
        backend: Backend,
        metrics: EngineMetrics,
        *,
        stall_timeout_s: float,
        total_timeout_s: float,
        queue_poll_s: float = QUEUE_POLL_S,
    ) -> None:
        self._backend = backend
        self._metrics = metrics
        self._stall_s = stall_timeout_s
        self._total_s = total_timeout_s
        self._queue_poll_s = queue_poll_s
        # channel key -> the cutter of its running generation (one at a time: the channel's order).
        self._running: dict[str, _Cutter] = {}
        self._cutting_all = False  # shutdown's grace is over: every generation is cut at once

    def stop(self, channel_key: str, reason: CutReason, detail: str) -> bool:
        """Cut the channel's running generation now; False when none is running (or it ended)."""
        cutter = self._running.get(channel_key)
        return cutter is not None and cutter.cut(reason, detail)

    def cut_all(self) -> int:
        """Cut every running generation, and every later one as it starts; how many were cut."""
        self._cutting_all = True
        return sum(1 for cutter in list(self._running.values()) if cutter.cut(*SHUTDOWN_CUT))

    async def run(
        self,
        conversation: Conversation,
        sampling: SamplingSettings,
        reply: Reply,
        where: str,
        *,
        saved: bool,
        report: GenerationReport | None = None,
    ) -> Generated | ReplyStatus:
        """Prepare and stream one generation into `reply`. A failure leaves its notice in the
        reply (see bot.failures) and returns the status to finish with; its half-written text is
        never returned for storing. A cut (see `_Cutter`) returns the text that came, with the
        reason. `saved`: the user's message is in the history, and `where` is its channel, whose
        running generation `stop` can cut. `report`, when given, gets the backend's token counts
        and finish reason (see `UsageReporting`)."""
        cutter = _Cutter()
        if saved:
            self._running[where] = cutter
        if self._cutting_all:
            cutter.cut(*SHUTDOWN_CUT)
        try:
            prompt = await self._backend.prepare(conversation, sampling.max_new_tokens)
            stream = (
                self._backend.generate(prompt, sampling)
                if report is None
                else reporting_stream(self._backend, prompt, sampling, report)
            )
            parts = await self._stream(stream, reply, cutter, self._follow_line(prompt, reply))
        except GENERATION_ERRORS as error:
            return await report_error(error, reply, self._metrics, where, saved=saved)
        finally:
            if self._running.get(where) is cutter:
                del self._running[where]
        return Generated("".join(parts), prompt, len(parts), cutter.reason, cutter.detail)

    def _follow_line(self, prompt: PreparedPrompt, reply: Reply) -> asyncio.Task[None] | None:
        """For a backend with a queue: a task that keeps `reply.queue_position` up to date, asking
        every `queue_poll_s` (from now: the stream submits on its first read, just after), until
        `_leave_line` ends it at the first text or the end."""
        backend = self._backend
        if not isinstance(backend, QueuePositions):
            return None

        async def follow() -> None:
            while True:
                try:
                    position = backend.queue_position(prompt)
                except Exception:  # cosmetic: never fail a generation over its place in line
                    logger.exception("the backend could not tell a generation's place in its queue")
                    return
                await reply.set_queue_position(position)
                await asyncio.sleep(self._queue_poll_s)

        return asyncio.create_task(follow(), name="chinwag:queue-position")

    @staticmethod
    async def _leave_line(follower: asyncio.Task[None] | None, reply: Reply) -> None:
        """The generation has text, or ended: it waits in no queue any more."""
        if follower is None:
            return
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await reply.set_queue_position(None)

    async def _stream(
        self,
        prompt_stream: AsyncGenerator[str, None],
        reply: Reply,
        cutter: _Cutter,
        follower: asyncio.Task[None] | None = None,
    ) -> list[str]:
        """Copy the backend's stream into `reply` until it ends or is cut; return its chunks.

        Cut (`cutter.reason` set) by `cutter.cut`, after `stall_timeout_s` without a new chunk
        (counted from the first one: waiting for a free place in the model's batch and reading
        the prompt are bounded by the total cap alone), or after `generation_timeout_s` in all.
        `follower` (see `_follow_line`) is ended at the first chunk, or when the stream ends.
        """
        loop = asyncio.get_running_loop()
        stall_s, total_s = self._stall_s, self._total_s
        cap = loop.time() + total_s
        parts: list[str] = []
        timeout = asyncio.timeout_at(cap)
        try:
            async with timeout, aclosing(prompt_stream) as stream:
                if not cutter.arm(timeout):
                    return parts
                async for chunk in stream:
                    if follower is not None:
                        await self._leave_line(follower, reply)
                        follower = None
                    await reply.push(chunk)
                    parts.append(chunk)
                    if cutter.reason is None:  # else a cut's deadline of "now" is pending
                        timeout.reschedule(min(cap, loop.time() + stall_s))
                cutter.end()  # before closing the stream: a cut now would call a whole reply cut
        except TimeoutError:
            if not timeout.expired():
                raise  # not this timer's: an error of the backend's own
            if cutter.reason is None:
                stalled = (timeout.when() or cap) < cap
                detail = f"no new text for {stall_s:g} s" if stalled else f"still writing after {total_s:g} s"
                cutter.reason, cutter.detail = CutReason.TIMEOUT, detail
        except GenerationTimeout as error:  # the backend's own deadline (the local model has one)
            if not parts:
                raise
            cutter.reason, cutter.detail = CutReason.TIMEOUT, str(error)
        finally:
            cutter.end()  # the timer is gone: `cut` must not touch it
            await self._leave_line(follower, reply)
        return parts
