"""`LocalBackend.queue_position`: where a generation waits for the model, one generation at a time
(the worker thread) and through the batch scheduler (a place in the batch), on the tiny random
GPT-2. The model thread is held inside the forward pass that reads a chosen prompt, so the line
stands still while the test looks at it."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from transformers import GPT2LMHeadModel

from bot.backends.base import PreparedPrompt, QueuePositions
from bot.backends.batching_settings import BatchingSettings
from bot.backends.local import LocalBackend
from bot.ports import Conversation, SamplingSettings
from tests.fakes.waiting import wait_until

WAIT = 60.0
QUESTIONS = (
    "Hello there, how are you today?",
    "Do you like cats or dogs better?",
    "What is the capital of France?",
    "The weather is lovely",
)


class HeldForward:
    """Holds the model thread in the forward pass that reads a held prompt's tokens (its first
    one: the whole prompt) until the test releases that prompt."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._entered: dict[tuple[int, ...], threading.Event] = {}
        self._released: dict[tuple[int, ...], threading.Event] = {}
        forward = GPT2LMHeadModel.forward

        @functools.wraps(forward)
        def held(model: Any, *args: Any, **kwargs: Any) -> Any:
            ids = kwargs.get("input_ids")
            if ids is not None and ids.shape[0] == 1:
                tokens = tuple(ids[0].tolist())
                if tokens in self._released:
                    self._entered[tokens].set()
                    self._released[tokens].wait(WAIT)
            return forward(model, *args, **kwargs)

        monkeypatch.setattr(GPT2LMHeadModel, "forward", held)

    def hold(self, *prompts: PreparedPrompt) -> None:
        for prompt in prompts:
            self._entered[prompt.token_ids] = threading.Event()
            self._released[prompt.token_ids] = threading.Event()

    async def entered(self, prompt: PreparedPrompt) -> None:
        assert await asyncio.to_thread(self._entered[prompt.token_ids].wait, WAIT)

    def release(self, prompt: PreparedPrompt) -> None:
        self._released[prompt.token_ids].set()

    def release_all(self) -> None:
        for released in self._released.values():
            released.set()


async def text_of(stream: AsyncIterator[str]) -> str:
    return "".join([chunk async for chunk in stream])


@pytest.mark.parametrize("batching", [None, BatchingSettings(max_batch=1)], ids=["one-at-a-time", "batched"])
async def test_waiting_generations_know_their_place_in_line(
    tiny_gpt2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batching: BatchingSettings | None
) -> None:
    backend = LocalBackend(
        str(tiny_gpt2_dir), cache_dir=tmp_path, prompt_format="dialogpt", batching=batching
    )
    assert isinstance(backend, QueuePositions)
    held = HeldForward(monkeypatch)
    await backend.start()
    assert (backend.scheduler is not None) == (batching is not None)
    try:
        prompts = [await backend.prepare(Conversation("You are terse.", (), q), 5) for q in QUESTIONS]
        assert len({prompt.token_ids for prompt in prompts}) == len(prompts)

        def places() -> list[int | None]:
            return [backend.queue_position(prompt) for prompt in prompts]

        assert places() == [None] * 4  # nothing submitted yet
        settings = SamplingSettings(temperature=0, max_new_tokens=5)
        held.hold(prompts[0], prompts[1])
        tasks = [asyncio.create_task(text_of(backend.generate(prompts[0], settings)))]
        await held.entered(prompts[0])  # the model is busy with the first one
        tasks += [asyncio.create_task(text_of(backend.generate(p, settings))) for p in prompts[1:]]
        await wait_until(lambda: places() == [None, 1, 2, 3], WAIT, what="three wait in line")

        tasks[2].cancel()  # a consumer gives up while waiting: the ones behind it move up
        await wait_until(lambda: places() == [None, 1, None, 2], WAIT, what="the line closes up")

        held.release(prompts[0])
        await held.entered(prompts[1])  # the first ended; the second runs
        await wait_until(lambda: places() == [None, None, None, 1], WAIT, what="the last is next")
        held.release(prompts[1])
        texts = await asyncio.wait_for(asyncio.gather(tasks[0], tasks[1], tasks[3]), WAIT)
        assert all(texts)
        assert places() == [None] * 4
        with pytest.raises(asyncio.CancelledError):
            await tasks[2]
    finally:
        held.release_all()
        await backend.stop()
    assert backend.queue_position(prompts[0]) is None  # stopped: no line, not an error
