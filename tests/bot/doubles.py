"""Backends for engine tests: they record what the engine asked and misbehave on demand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from bot.backends.base import PreparedPrompt
from bot.backends.echo import EchoBackend
from bot.errors import BackendError
from bot.ports import Conversation, SamplingSettings


class RecordingBackend(EchoBackend):
    """The echo backend that remembers every conversation and sampling setting it was given."""

    def __init__(self) -> None:
        self.conversations: list[Conversation] = []
        self.samplings: list[SamplingSettings] = []

    async def prepare(self, conversation: Conversation, max_new_tokens: int) -> PreparedPrompt:
        self.conversations.append(conversation)
        return await super().prepare(conversation, max_new_tokens)

    async def generate(self, prompt: PreparedPrompt, settings: SamplingSettings) -> AsyncGenerator[str, None]:
        self.samplings.append(settings)
        async for chunk in super().generate(prompt, settings):
            yield chunk


class SlowEchoBackend(EchoBackend):
    """Echo with a pause before every chunk; `gates` can hold a given message until released."""

    def __init__(self, delay_s: float = 0.005) -> None:
        self.delay_s = delay_s
        self.gates: dict[str, asyncio.Event] = {}
        self.started: list[str] = []

    async def generate(self, prompt: PreparedPrompt, settings: SamplingSettings) -> AsyncGenerator[str, None]:
        message = prompt.input_text.split(": ", 1)[1]
        self.started.append(message)
        gate = self.gates.get(message)
        if gate is not None:
            await gate.wait()
        async for chunk in super().generate(prompt, settings):
            await asyncio.sleep(self.delay_s)
            yield chunk


class FailingBackend(EchoBackend):
    """Echo that fails on messages containing a trigger word, after streaming a little."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error if error is not None else BackendError("the model fell over")
        self.closed_streams = 0

    async def generate(self, prompt: PreparedPrompt, settings: SamplingSettings) -> AsyncGenerator[str, None]:
        try:
            if "explode" in prompt.input_text:
                yield "half a rep"
                raise self.error
            if "hang" in prompt.input_text:
                yield "thinking"
                await asyncio.sleep(3600)
            async for chunk in super().generate(prompt, settings):
                yield chunk
        finally:
            self.closed_streams += 1
