"""A reply's place in the model's queue: kept on the `Reply` by the engine's generations while no
text has come (`QueuePositions` backends), and read by the adapters through `places_in_line`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator

import pytest

from bot.backends.base import PreparedPrompt, QueuePositions
from bot.backends.echo import EchoBackend
from bot.events import ChatEvent
from bot.ports import SamplingSettings
from bot.reply import Reply, ReplyStatus
from tests.bot.doubles import LineBackend
from tests.conftest import EngineFactory
from tests.fakes.waiting import wait_until


def user(text: str, channel: str) -> ChatEvent:
    return ChatEvent(platform="test", channel=channel, author_id="u1", author_name="u1", text=text)


async def places(reply: Reply, after_s: float) -> list[int | None]:
    return [place async for place in reply.places_in_line(after_s)]


async def test_no_place_is_given_before_the_reply_has_waited_long_enough() -> None:
    reply = Reply()
    read = asyncio.create_task(places(reply, after_s=3600))
    await reply.set_queue_position(2)
    await reply.set_queue_position(1)
    assert reply.queued_since is not None
    await reply.set_queue_position(None)
    assert reply.queued_since is None
    await reply.push("the text")  # ends the wait: nothing was worth showing
    assert await asyncio.wait_for(read, 10) == []


async def test_after_the_wait_every_change_is_given_until_the_first_text() -> None:
    reply = Reply()
    seen: list[int | None] = []
    given = asyncio.Event()

    async def read() -> None:
        async for place in reply.places_in_line(after_s=0):
            seen.append(place)
            given.set()

    reader = asyncio.create_task(read())
    await reply.set_queue_position(3)
    await asyncio.wait_for(given.wait(), 10)
    assert seen == [3]
    given.clear()
    await reply.set_queue_position(2)
    await asyncio.wait_for(given.wait(), 10)
    given.clear()
    await reply.set_queue_position(None)  # it left the queue
    await asyncio.wait_for(given.wait(), 10)
    await reply.push("hello")
    await asyncio.wait_for(reader, 10)
    assert seen == [3, 2, None]


async def test_a_slow_reader_gets_the_place_of_the_moment_and_the_end_ends_it() -> None:
    reply = Reply()
    await reply.set_queue_position(3)
    places_now = reply.places_in_line(after_s=0)
    assert await anext(places_now) == 3
    await reply.set_queue_position(2)
    await reply.set_queue_position(1)  # before the reader asks again: 2 is never news
    assert await anext(places_now) == 1
    await reply.finish(ReplyStatus.FAILED)
    with pytest.raises(StopAsyncIteration):
        await anext(places_now)


async def test_wait_for_text_times_out_without_text_and_returns_at_the_end() -> None:
    reply = Reply()
    assert await reply.wait_for_text(0) is False
    waiting = asyncio.create_task(reply.wait_for_text())
    await reply.finish(ReplyStatus.NOTICE)
    assert await asyncio.wait_for(waiting, 10) is True


async def test_the_engine_keeps_each_replys_place_in_line_until_its_text(make_engine: EngineFactory) -> None:
    backend = LineBackend()
    assert isinstance(backend, QueuePositions)
    backend.hold("first", "second")
    engine = await make_engine(backend)
    replies = [engine.handle(user(text, channel=text)) for text in ("first", "second", "third")]
    await wait_until(lambda: backend.running == ["first"], what="the first generation runs")
    # Polled every 0.5 s from the moment each generation was handed to the backend.
    await wait_until(
        lambda: [reply.queue_position for reply in replies] == [None, 1, 2], what="the places are known"
    )
    assert replies[1].queued_since is not None and replies[0].queued_since is None

    backend.release("first")
    await wait_until(
        lambda: [reply.queue_position for reply in replies] == [None, None, 1], what="one moved up"
    )
    assert await asyncio.wait_for(replies[0].text(), 10) == "echo[0]: first"
    assert backend.running == ["first", "second"]

    backend.release("second")
    texts = await asyncio.wait_for(asyncio.gather(*(reply.text() for reply in replies[1:])), 10)
    assert texts == ["echo[0]: second", "echo[0]: third"]
    assert [reply.queue_position for reply in replies] == [None, None, None]
    assert [reply.queued_since for reply in replies] == [None, None, None]
    assert backend.line == []


class BrokenPlaces(EchoBackend):
    """Echo whose queue cannot tell places (a bug): the replies must not suffer. It writes once
    it was asked."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()

    def queue_position(self, prompt: PreparedPrompt) -> int | None:
        self.asked.set()
        raise RuntimeError("no idea")

    async def generate(self, prompt: PreparedPrompt, settings: SamplingSettings) -> AsyncGenerator[str, None]:
        await self.asked.wait()
        async for chunk in super().generate(prompt, settings):
            yield chunk


async def test_a_backend_that_cannot_tell_places_still_answers(
    make_engine: EngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    engine = await make_engine(BrokenPlaces())
    with caplog.at_level(logging.ERROR, logger="bot.generation"):
        reply = engine.handle(user("hi", channel="c"))
        assert await asyncio.wait_for(reply.text(), 10) == "echo[0]: hi"
    assert reply.status is ReplyStatus.ANSWERED and reply.queue_position is None
    assert "could not tell a generation's place" in caplog.text
