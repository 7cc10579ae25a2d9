"""The deterministic echo backend of the interface contract.

The reply to a message T is exactly `echo[N]: T`, N being the number of earlier messages the engine
put into the prompt. Tests use it to check the engine's history handling, and benchmarks to measure
the framework without a model.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from bot.backends.base import PreparedPrompt
from bot.ports import Conversation, SamplingSettings


class EchoBackend:
    """Answers `echo[N]: T`; streams the reply in a few chunks like a real model would."""

    name = "echo"

    async def start(self) -> None:
        """Nothing to load."""

    async def stop(self) -> None:
        """Nothing to release."""

    def forget(self, context_key: str) -> None:
        """Keeps nothing per channel."""

    async def ping(self) -> bool:
        """Always ready: nothing remote."""
        return True

    async def prepare(self, conversation: Conversation, max_new_tokens: int) -> PreparedPrompt:
        """Keep every turn the engine chose; the input text is the reply to give."""
        return PreparedPrompt(
            input_text=f"echo[{len(conversation.history)}]: {conversation.message}",
            history_used=len(conversation.history),
        )

    async def generate(self, prompt: PreparedPrompt, settings: SamplingSettings) -> AsyncGenerator[str, None]:
        """Yield the reply word by word (whitespace kept), so streaming paths get exercised."""
        start = 0
        text = prompt.input_text
        while start < len(text):
            end = text.find(" ", start + 1)
            end = len(text) if end == -1 else end
            yield text[start:end]
            start = end
