"""One model generation for the engine: prepare the prompt, stream the backend's text into the
reply under the stall timeout and the total cap, and cut it short on the user's Stop or at
shutdown. A cut keeps the text that came (the engine stores it, marked with the reason); a
failure leaves its notice in the reply (see bot.failures) and keeps nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass

from bot.backends.base import Backend, GenerationReport, PreparedPrompt, reporting_stream
from bot.errors import GenerationTimeout
from bot.failures import GENERATION_ERRORS, report_error
from bot.metrics import EngineMetrics
from bot.ports import Conversation, SamplingSettings
from bot.reply import CutReason, Reply, ReplyStatus

SHUTDOWN_CUT = (CutReason.SHUTDOWN, "the shutdown grace ran out")


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
        self, backend: Backend, metrics: EngineMetrics, *, stall_timeout_s: float, total_timeout_s: float
    ) -> None:
        self._backend = backend
        self._metrics = metrics
        self._stall_s = stall_timeout_s
        self._total_s = total_timeout_s
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
            parts = await self._stream(stream, reply, cutter)
        except GENERATION_ERRORS as error:
            return await report_error(error, reply, self._metrics, where, saved=saved)
        finally:
            if self._running.get(where) is cutter:
                del self._running[where]
        return Generated("".join(parts), prompt, len(parts), cutter.reason, cutter.detail)

    async def _stream(
        self, prompt_stream: AsyncGenerator[str, None], reply: Reply, cutter: _Cutter
    ) -> list[str]:
        """Copy the backend's stream into `reply` until it ends or is cut; return its chunks.

        Cut (`cutter.reason` set) by `cutter.cut`, after `stall_timeout_s` without a new chunk
        (counted from the first one: waiting for a free place in the model's batch and reading
        the prompt are bounded by the total cap alone), or after `generation_timeout_s` in all.
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
        return parts
