"""The shared delivery path (`adapters.delivery`), its channel workers and its retry loop, with an
in-memory sink: no platform, no clock (pacing is checked with intervals too long to ever elapse)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from adapters.channel_workers import ChannelWorkers
from adapters.delivery import Pacing, deliver, queue_notice
from adapters.retrying import call_with_retries
from adapters.splitting import split_reply
from bot.reply import Reply, ReplyStatus
from tests.fakes.waiting import wait_until

LIMIT = 10
FAST = Pacing(edit_interval_s=0.0, typing_interval_s=60.0)


@dataclass
class Posted:
    """A message on the fake platform."""

    text: str
    quoted: bool


@dataclass
class MemorySink:
    """Keeps what was posted; `editable` False makes every edit fail (the message was deleted)."""

    editable: bool = True
    limit: int = LIMIT
    messages: list[Posted] = field(default_factory=list)
    edits: int = 0
    refused: int = 0  # edits refused (not `editable`)
    typings: int = 0
    posted: asyncio.Event = field(default_factory=asyncio.Event)

    def pieces(self, text: str) -> list[str]:
        return [piece for piece in split_reply(text, self.limit) if piece.strip()]

    async def send(self, text: str, *, quote: bool) -> Posted:
        message = Posted(text, quote)
        self.messages.append(message)
        self.posted.set()
        return message

    async def edit(self, message: Posted, text: str) -> bool:
        if not self.editable:
            self.refused += 1
            return False
        self.edits += 1
        message.text = text
        return True

    async def typing(self) -> None:
        self.typings += 1


async def finished(text: str, status: ReplyStatus = ReplyStatus.ANSWERED) -> Reply:
    reply = Reply()
    await reply.push(text)
    await reply.finish(status)
    return reply


async def settle() -> None:
    """Let the delivery's tasks run until they wait for something."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_finished_reply_is_split_and_only_its_first_part_quotes() -> None:
    sink = MemorySink()
    await deliver(await finished("one two three four five six"), sink, FAST)
    assert [m.text for m in sink.messages] == ["one two ", "three ", "four five ", "six"]
    assert [m.quoted for m in sink.messages] == [True, False, False, False]
    assert sink.edits == 0


async def test_a_streamed_reply_ends_as_its_final_text_with_the_first_message_edited() -> None:
    sink = MemorySink()
    reply = Reply()
    delivery = asyncio.create_task(deliver(reply, sink, FAST))
    await reply.push("abc")
    await sink.posted.wait()
    await reply.push(" defgh ijklmn")
    await reply.finish(ReplyStatus.ANSWERED)
    await delivery
    assert [m.text for m in sink.messages] == ["abc defgh ", "ijklmn"]
    assert [m.quoted for m in sink.messages] == [True, False]
    assert sink.edits >= 1
    assert sink.typings >= 1


async def test_a_message_that_cannot_be_edited_gets_the_reply_posted_anew() -> None:
    sink = MemorySink(editable=False)
    reply = Reply()
    delivery = asyncio.create_task(deliver(reply, sink, FAST))
    await reply.push("abc")
    await sink.posted.wait()
    await reply.push(" defgh ijklmn")
    await reply.finish(ReplyStatus.ANSWERED)
    await delivery
    streamed, *anew = sink.messages
    assert streamed == Posted("abc", True)
    assert [m.text for m in anew] == ["abc defgh ", "ijklmn"]
    assert [m.quoted for m in anew] == [True, False]  # the reposted reply quotes the user again


async def test_a_silent_reply_posts_nothing() -> None:
    sink = MemorySink()
    await deliver(await finished("already answered", ReplyStatus.DUPLICATE), sink, FAST)
    assert sink.messages == []


async def test_edits_keep_the_pace() -> None:
    sink = MemorySink()
    reply = Reply()
    delivery = asyncio.create_task(deliver(reply, sink, Pacing(edit_interval_s=3600, typing_interval_s=60)))
    await reply.push("abc")
    await sink.posted.wait()
    for word in (" d", " e", " f"):
        await reply.push(word)
        await settle()
    assert (sink.messages, sink.edits) == ([Posted("abc", True)], 0)  # no edit within the interval
    await reply.finish(ReplyStatus.ANSWERED)
    await settle()
    assert sink.edits == 0  # the final edit waits for the interval too
    delivery.cancel()
    with pytest.raises(asyncio.CancelledError):
        await delivery


async def test_a_quick_reply_is_posted_once_after_the_first_post_delay() -> None:
    sink = MemorySink()
    reply = Reply()
    pacing = Pacing(edit_interval_s=0.0, typing_interval_s=60.0, first_post_delay_s=3600)
    delivery = asyncio.create_task(deliver(reply, sink, pacing))
    await reply.push("Done.")
    await settle()
    assert sink.messages == []
    await reply.push(" ok")
    await reply.finish(ReplyStatus.COMMAND)
    await delivery
    assert [m.text for m in sink.messages] == ["Done. ok"]
    assert sink.edits == 0


# --- waiting in the model's queue --------------------------------------------------------------

QUEUED = Pacing(edit_interval_s=0.0, typing_interval_s=60.0, queue_notice_after_s=0.0)


async def test_a_queued_reply_shows_its_place_and_that_message_becomes_the_reply() -> None:
    sink = MemorySink(limit=20)
    reply = Reply()
    delivery = asyncio.create_task(deliver(reply, sink, QUEUED))
    await reply.set_queue_position(2)
    await sink.posted.wait()
    assert sink.messages == [Posted(queue_notice(2), True)]  # quoting, as the reply would
    assert queue_notice(2) == "⏳ #2 in line"
    await reply.set_queue_position(1)
    await wait_until(lambda: sink.messages[0].text == "⏳ #1 in line", what="the place is edited")
    await reply.set_queue_position(None)  # it runs now: the placeholder stays until text comes
    await reply.push("the first words")
    await wait_until(lambda: sink.messages[0].text == "the first words", what="the text replaces the place")
    await reply.push(" and then the rest of it")
    await reply.finish(ReplyStatus.ANSWERED)
    await delivery
    assert [m.text for m in sink.messages] == ["the first words and ", "then the rest of it"]
    assert [m.quoted for m in sink.messages] == [True, False]
    assert sink.edits == 3 and sink.typings >= 1


async def test_a_short_wait_in_the_queue_shows_no_place() -> None:
    sink = MemorySink(limit=20)
    reply = Reply()
    waited = Pacing(edit_interval_s=0.0, typing_interval_s=60.0, queue_notice_after_s=3600)
    delivery = asyncio.create_task(deliver(reply, sink, waited))
    await reply.set_queue_position(2)
    await reply.set_queue_position(1)
    await reply.set_queue_position(None)
    await reply.push("answered")
    await reply.finish(ReplyStatus.ANSWERED)
    await delivery
    assert sink.messages == [Posted("answered", True)]


async def test_the_place_is_edited_at_the_edit_pace() -> None:
    sink = MemorySink(limit=20)
    reply = Reply()
    slow_edits = Pacing(edit_interval_s=3600, typing_interval_s=60.0, queue_notice_after_s=0.0)
    delivery = asyncio.create_task(deliver(reply, sink, slow_edits))
    await reply.set_queue_position(3)
    await sink.posted.wait()
    await reply.set_queue_position(2)
    await reply.set_queue_position(1)
    await reply.push("text")
    await settle()
    assert (sink.messages, sink.edits) == ([Posted("⏳ #3 in line", True)], 0)  # the text waits too
    delivery.cancel()
    with pytest.raises(asyncio.CancelledError):
        await delivery


async def test_a_notice_instead_of_a_reply_replaces_the_place() -> None:
    sink = MemorySink(limit=40)
    reply = Reply()
    delivery = asyncio.create_task(deliver(reply, sink, QUEUED))
    await reply.set_queue_position(4)
    await sink.posted.wait()
    await reply.set_queue_position(None)
    await reply.push("The model failed, sorry.")
    await reply.finish(ReplyStatus.FAILED)
    await delivery
    assert sink.messages == [Posted("The model failed, sorry.", True)]
    assert sink.edits == 1


async def test_a_deleted_place_gets_the_reply_posted_as_a_new_message() -> None:
    sink = MemorySink(editable=False, limit=20)
    reply = Reply()
    delivery = asyncio.create_task(deliver(reply, sink, QUEUED))
    await reply.set_queue_position(2)
    await sink.posted.wait()
    await reply.set_queue_position(1)  # this edit fails: the placeholder is given up
    await wait_until(lambda: sink.refused == 1, what="the place's edit is refused")
    await reply.push("answered")
    await reply.finish(ReplyStatus.ANSWERED)
    await delivery
    assert sink.messages == [Posted("⏳ #2 in line", True), Posted("answered", True)]


# --- channel workers ---------------------------------------------------------------------------


async def test_each_channel_runs_its_jobs_in_order_and_a_failing_job_does_not_block_it() -> None:
    done: list[tuple[str, int]] = []
    gate = asyncio.Event()

    async def handle(channel: str, job: int) -> bool:
        if channel == "a":
            await gate.wait()  # channel b must not wait for channel a
        if job == 2:
            raise RuntimeError("this job cannot be handled")
        done.append((channel, job))
        return True

    workers: ChannelWorkers[str, int] = ChannelWorkers(handle, name="test")
    for job in (1, 2, 3):
        workers.put("a", job)
        workers.put("b", job)
    await settle()
    assert done == [("b", 1), ("b", 3)]
    gate.set()
    await workers.drain(60)
    assert done == [("b", 1), ("b", 3), ("a", 1), ("a", 3)]


async def test_drain_cancels_what_outlasts_it_and_false_leaves_the_job() -> None:
    started: list[int] = []

    async def handle(channel: str, job: int) -> bool:
        started.append(job)
        if job == 1:
            return False  # shutting down: stays queued, the worker ends
        await asyncio.Event().wait()  # never finishes by itself
        return True

    workers: ChannelWorkers[str, int] = ChannelWorkers(handle, name="test")
    workers.put("a", 1)
    workers.put("a", 2)
    workers.put("b", 2)
    await settle()
    assert sorted(started) == [1, 2]  # a's second job never started behind the first
    await workers.drain(0)
    workers.put("a", 3)  # a fresh worker after the drain
    await settle()
    assert started[-1] == 3
    await workers.drain(0)


# --- retries -----------------------------------------------------------------------------------


async def test_retries_follow_the_platforms_decision_and_raise_the_last_error() -> None:
    attempts: list[int] = []

    async def flaky() -> str:
        attempts.append(len(attempts) + 1)
        if len(attempts) < 3:
            raise ConnectionError("reset")
        return "ok"

    async def retry_now(error: Exception, attempt: int) -> float | None:
        return 0.0 if isinstance(error, ConnectionError) else None

    assert await call_with_retries(flaky, retry_now, attempts=5) == "ok"
    assert attempts == [1, 2, 3]

    async def refused() -> str:
        attempts.append(0)
        raise ValueError("refused")

    attempts.clear()
    with pytest.raises(ValueError):
        await call_with_retries(refused, retry_now, attempts=5)
    assert attempts == [0]  # not retried

    async def always_down() -> str:
        attempts.append(0)
        raise ConnectionError("down")

    attempts.clear()
    with pytest.raises(ConnectionError):
        await call_with_retries(always_down, retry_now, attempts=4)
    assert len(attempts) == 4
