"""The deterministic echo backend of the interface contract.

The reply to a message T is exactly `echo[N]: T`, N being the number of earlier messages the engine
put into the prompt. Tests use it to check the engine's history handling, and benchmarks to measure
the framework without a model.

Its "tokens" are words: a text split before each space (`echo_tokens`), each piece keeping its
leading space, streamed one per chunk. A chat reply is always the whole `echo[N]: T`, however long
(the contract's reply is exact). Only a stateless completion (`ChatEngine.complete`, the
OpenAI-compatible endpoint, which reads usage through `generate_reporting`) stops after
`max_new_tokens` pieces, so the endpoint's `max_tokens` and "length" can be tested without a model.
Usage counts the same pieces: the prompt is the input text `echo[N]: T` (the backend reads
nothing else), the completion the pieces it streamed.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

from bot.backends.base import GenerationReport, PreparedPrompt, finish_reason
from bot.ports import Conversation, SamplingSettings


def echo_tokens(text: str) -> list[str]:
    """`text` split before each space (whitespace kept): the echo backend's tokens."""
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end = text.find(" ", start + 1)
        end = len(text) if end == -1 else end
        pieces.append(text[start:end])
        start = end
    return pieces


class EchoBackend:
    """Answers `echo[N]: T`; streams the reply in a few chunks like a real model would."""

    name = "echo"

    async def start(self) -> None:
        """Nothing to load."""

    async def stop(self) -> None:
        """Nothing to release."""

    def forget(self, channel_key: str) -> None:
        """Keeps nothing per channel or member."""

    async def ping(self) -> bool:
        """Always ready: nothing remote."""
        return True

    async def prepare(self, conversation: Conversation, max_new_tokens: int) -> PreparedPrompt:
        """Keep every turn the engine chose; the input text is the reply to give. It echoes the
        message's own text, never its speaker's name (`Conversation.message`, not `message_text`)."""
        return PreparedPrompt(
            input_text=f"echo[{len(conversation.history)}]: {conversation.message}",
            history_used=len(conversation.history),
            context_key=conversation.context_key,
        )

    async def generate(self, prompt: PreparedPrompt, settings: SamplingSettings) -> AsyncGenerator[str, None]:
        """Yield the whole reply word by word (whitespace kept), so streaming paths get exercised."""
        for piece in echo_tokens(prompt.input_text):
            yield piece

    async def generate_reporting(
        self, prompt: PreparedPrompt, settings: SamplingSettings, report: GenerationReport
    ) -> AsyncGenerator[str, None]:
        """See `UsageReporting`. The chunks `generate` yields (a subclass's too), one token each;
        a stateless completion (no `context_key`) gets at most `max_new_tokens` of them, with
        "length" when the echo text had more words than that. A channel's reply is always whole
        (the contract's exact echo), and counted the same way (quotas read it)."""
        words = len(echo_tokens(prompt.input_text))
        limit = settings.max_new_tokens if prompt.context_key is None else None
        report.prompt_tokens = words
        report.completion_tokens = 0
        async with aclosing(self.generate(prompt, settings)) as stream:
            async for chunk in stream:
                if report.completion_tokens == limit:
                    break
                report.completion_tokens += 1
                yield chunk
        if limit is None:
            report.finish_reason = "stop"
        else:
            report.finish_reason = finish_reason(report.completion_tokens, limit, ended=words <= limit)
