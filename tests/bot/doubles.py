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


class EndlessBackend(EchoBackend):
    """Writes "w0 w1 w2 …" one word every `delay_s` and never ends by itself; with `hang_first`
    it waits forever before its first word. Counts the streams it was asked for and how many
    were closed (a cut must close the stream, which is what stops a real model)."""

    def __init__(self, delay_s: float = 0.01, *, hang_first: bool = False) -> None:
        self.delay_s = delay_s
        self.hang_first = hang_first
        self.started = asyncio.Event()  # set once the first word is out (or the hang began)
        self.closed_streams = 0

    async def generate(self, prompt: PreparedPrompt, settings: SamplingSettings) -> AsyncGenerator[str, None]:
        try:
            if self.hang_first:
                self.started.set()
                await asyncio.sleep(3600)
            index = 0
            while True:
                yield f"w{index} "
                self.started.set()
                index += 1
                await asyncio.sleep(self.delay_s)
        finally:
            self.closed_streams += 1


class LineBackend(EchoBackend):
    """Echo behind a one-at-a-time queue, like the local model without batching, that reports
    each waiting generation's place in line (`QueuePositions`): a generation gets the model once
    the ones before it ended. A message given to `hold` keeps the model, writing nothing, until
    `release(message)`."""

    def __init__(self) -> None:
        self.line: list[PreparedPrompt] = []  # the running generation's prompt, then the waiting ones
        self.running: list[str] = []  # the messages that got the model, in order
        self._held: dict[str, asyncio.Event] = {}
        self._moved = asyncio.Event()  # set (and replaced) whenever the line moves

    def hold(self, *messages: str) -> None:
        for message in messages:
            self._held[message] = asyncio.Event()

    def release(self, message: str) -> None:
        self._held[message].set()

    def queue_position(self, prompt: PreparedPrompt) -> int | None:
        for index, queued in enumerate(self.line):
            if queued is prompt:
                return index or None  # index 0 runs
        return None

    def places(self) -> list[int | None]:
        """Every generation in the line's place, the running one's (None) first."""
        return [self.queue_position(prompt) for prompt in self.line]

    async def generate(self, prompt: PreparedPrompt, settings: SamplingSettings) -> AsyncGenerator[str, None]:
        message = prompt.input_text.split(": ", 1)[1]
        self.line.append(prompt)
        try:
            while self.line[0] is not prompt:
                await self._moved.wait()
            self.running.append(message)
            gate = self._held.get(message)
            if gate is not None:
                await gate.wait()
            async for chunk in super().generate(prompt, settings):
                yield chunk
        finally:
            self.line = [queued for queued in self.line if queued is not prompt]
            moved, self._moved = self._moved, asyncio.Event()
            moved.set()
