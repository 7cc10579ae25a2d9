"""Stateless completions (the OpenAI-compatible API) and the notices about a shortened message."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from bot.backends.base import GenerationReport, PreparedPrompt
from bot.failures import report_cut, report_unexpected
from bot.generation import Generations
from bot.metrics import EngineMetrics
from bot.ordering import ChannelOrder
from bot.ports import Conversation, SamplingOverrides, SamplingSettings
from bot.reply import Reply, ReplyStatus
from bot.sanitize import clip, sanitize_text

INPUT_CUT_NOTICE = "\n\n(Your message was longer than {limit} characters; I only read the first {limit}.)"
WINDOW_CUT_NOTICE = (
    "\n\n(Your message was too long for my context window; I read only its beginning and its end.)"
)


async def push_input_notices(
    reply: Reply, input_cut: bool, prompt: PreparedPrompt | None, max_input_chars: int
) -> None:
    """Tell the user when their message was cut to `max_input_chars`, or to the context window."""
    if input_cut:
        await reply.push(INPUT_CUT_NOTICE.format(limit=max_input_chars))
    elif prompt is not None and prompt.message_cut:
        await reply.push(WINDOW_CUT_NOTICE)


class Completions:
    """Answers stateless conversations for the engine (see `ChatEngine.complete`)."""

    def __init__(
        self,
        order: ChannelOrder,
        generations: Generations,
        metrics: EngineMetrics,
        sampling: SamplingSettings,
        max_input_chars: int,
    ) -> None:
        self._order = order
        self._generations = generations
        self._metrics = metrics
        self._sampling = sampling
        self._max_input_chars = max_input_chars

    def complete(self, conversation: Conversation, overrides: SamplingOverrides, user_key: str) -> Reply:
        """Answer `conversation`; nothing is read from or written to a channel's history.

        The new message is sanitized and clipped like any other; sampling limits and timeouts
        apply (the caller checked the rate limit). An answered reply carries the backend's `usage`
        and `finish_reason` (None where the backend does not report them).
        """
        message, input_cut = clip(sanitize_text(conversation.message), self._max_input_chars)
        conversation = replace(conversation, message=message)
        sampling = overrides.apply(self._sampling)
        reply = Reply()

        async def run() -> None:
            try:
                report = GenerationReport()
                generated = await self._generations.run(
                    conversation, sampling, reply, user_key, saved=False, report=report
                )
                if isinstance(generated, ReplyStatus):
                    await reply.finish(generated)
                    return
                if generated.cut is not None:
                    # A timeout or shutdown (nobody can stop a completion): nothing is stored, so
                    # the API client gets the failure it always got rather than a whole-looking reply.
                    cut, detail = generated.cut, generated.detail
                    await reply.finish(
                        await report_cut(cut, reply, self._metrics, user_key, detail, kept=False)
                    )
                    return
                await push_input_notices(reply, input_cut, generated.prompt, self._max_input_chars)
                reply.usage, reply.finish_reason = report.usage(), report.finish_reason
                await reply.finish(ReplyStatus.ANSWERED)
            except asyncio.CancelledError:
                await reply.finish(ReplyStatus.FAILED)
                raise
            except Exception:
                await reply.finish(await report_unexpected(reply, "in a stateless completion"))

        self._order.start(run(), name="chinwag:completion")
        return reply
