"""Replies cut short keep their text: the stall timeout, the total cap, `ChatEngine.stop`, shutdown."""

from __future__ import annotations

import asyncio
import re

import pytest

from bot.errors import ChinwagError
from bot.failures import (
    GENERATION_TIMEOUT_REPLY,
    SHUTDOWN_CUT_NOTICE,
    SHUTDOWN_NOTICE,
    STOPPED_CUT_NOTICE,
    STOPPED_EMPTY_REPLY,
    TIMEOUT_CUT_NOTICE,
)
from bot.ports import Conversation, SamplingOverrides
from bot.reply import CutReason, ReplyStatus
from storage.repository import ChatRepository
from tests.bot.doubles import EndlessBackend, FailingBackend
from tests.bot.test_engine import history, user
from tests.conftest import EngineFactory
from tests.fakes.waiting import wait_until

WORDS = re.compile(r"(w\d+ )+")  # what EndlessBackend writes


async def stored_cuts(repository: ChatRepository, channel: str = "c1") -> list[CutReason | None]:
    return [m.cut for m in await repository.recent_messages(f"test:{channel}", limit=1000)]


async def test_a_stalled_reply_keeps_its_text_marked_as_cut_by_a_timeout(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    backend = FailingBackend()  # "hang": writes "thinking", then nothing for an hour
    engine = await make_engine(backend, model={"stall_timeout_s": 0.2, "generation_timeout_s": 60})
    reply = engine.handle(user("hang on"))
    text = await asyncio.wait_for(reply.text(), timeout=10)
    assert text == "thinking" + TIMEOUT_CUT_NOTICE
    assert reply.status is ReplyStatus.ANSWERED and reply.cut is CutReason.TIMEOUT
    assert backend.closed_streams == 1  # the stream was closed: the model stops
    # Stored without the notice, marked; the next prompt has it as the assistant's turn.
    assert await history(repository) == [("user", "hang on"), ("assistant", "thinking")]
    assert await stored_cuts(repository) == [None, CutReason.TIMEOUT]
    assert await engine.ask(user("still there?")) == "echo[2]: still there?"
    assert (await stored_cuts(repository))[-1] is None


async def test_the_total_cap_cuts_a_reply_that_keeps_streaming_and_keeps_its_text(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    backend = EndlessBackend(delay_s=0.01)  # never stalls
    engine = await make_engine(backend, model={"stall_timeout_s": 30, "generation_timeout_s": 0.3})
    reply = engine.handle(user("go on forever"))
    text = await asyncio.wait_for(reply.text(), timeout=10)
    assert reply.status is ReplyStatus.ANSWERED and reply.cut is CutReason.TIMEOUT
    kept = text.removesuffix(TIMEOUT_CUT_NOTICE)
    assert kept != text and WORDS.fullmatch(kept), text
    assert await history(repository) == [("user", "go on forever"), ("assistant", kept)]
    assert await stored_cuts(repository) == [None, CutReason.TIMEOUT]
    assert backend.closed_streams == 1


async def test_a_timeout_before_any_text_stays_a_failure_and_stores_no_answer(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    # The stall timer starts at the first piece: before it, only the total cap applies.
    backend = EndlessBackend(hang_first=True)
    engine = await make_engine(backend, model={"stall_timeout_s": 0.05, "generation_timeout_s": 0.3})
    reply = engine.handle(user("hang"))
    text = await asyncio.wait_for(reply.text(), timeout=10)
    assert text == GENERATION_TIMEOUT_REPLY.lstrip()
    assert reply.status is ReplyStatus.FAILED and reply.cut is None
    assert await history(repository) == [("user", "hang")]
    assert backend.closed_streams == 1


async def test_stop_ends_the_running_reply_keeping_its_text(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    backend = EndlessBackend()
    engine = await make_engine(backend)
    assert engine.stop("test:c1") is False  # nothing running
    reply = engine.handle(user("tell me everything"))
    await wait_until(lambda: "w2 " in reply.text_so_far(), what="a few words streamed")
    assert engine.stop("test:other") is False  # another channel's reply is not touched
    assert engine.stop("test:c1") is True
    text = await asyncio.wait_for(reply.text(), timeout=10)
    assert reply.status is ReplyStatus.ANSWERED and reply.cut is CutReason.STOPPED
    kept = text.removesuffix(STOPPED_CUT_NOTICE)
    assert kept != text and WORDS.fullmatch(kept), text
    assert await history(repository) == [("user", "tell me everything"), ("assistant", kept)]
    assert await stored_cuts(repository) == [None, CutReason.STOPPED]
    assert backend.closed_streams == 1
    assert engine.stop("test:c1") is False  # done: nothing left to stop


async def test_stop_before_any_text_gives_a_notice_and_stores_no_answer(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    backend = EndlessBackend(hang_first=True)
    engine = await make_engine(backend)
    reply = engine.handle(user("slow start"))
    await asyncio.wait_for(backend.started.wait(), timeout=10)
    assert engine.stop("test:c1") is True
    assert await asyncio.wait_for(reply.text(), timeout=10) == STOPPED_EMPTY_REPLY.lstrip()
    assert reply.status is ReplyStatus.NOTICE and reply.cut is None
    assert await history(repository) == [("user", "slow start")]


async def test_a_redelivered_message_whose_answer_was_cut_gets_it_again_marked(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    engine = await make_engine(FailingBackend(), model={"stall_timeout_s": 0.1})
    assert (await engine.ask(user("hang on", mid="m1"))).startswith("thinking")
    again = engine.handle(user("hang on", mid="m1", redelivered=True))
    assert await again.text() == "thinking" + TIMEOUT_CUT_NOTICE
    assert again.status is ReplyStatus.ANSWERED and again.cut is CutReason.TIMEOUT
    assert len(await history(repository)) == 2  # nothing generated or stored again


async def test_a_stateless_completion_cut_by_a_timeout_is_still_a_failure(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    engine = await make_engine(FailingBackend(), model={"stall_timeout_s": 0.1})
    reply = engine.complete(Conversation("system", [], "hang on"), SamplingOverrides(), "api:u1")
    assert await asyncio.wait_for(reply.text(), timeout=10) == "thinking" + GENERATION_TIMEOUT_REPLY
    assert reply.status is ReplyStatus.FAILED and reply.cut is None


async def test_close_cuts_running_replies_after_the_grace_keeping_their_text(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    backend = EndlessBackend()
    engine = await make_engine(backend)
    running = engine.handle(user("talk"))
    queued = engine.handle(user("and then"))  # waits behind "talk" in the same channel
    other = engine.handle(user("elsewhere", channel="c2"))
    await wait_until(lambda: "w1 " in running.text_so_far() and "w1 " in other.text_so_far())
    await engine.close(grace_s=0.1)
    for reply in (running, other):
        assert reply.done and reply.status is ReplyStatus.ANSWERED and reply.cut is CutReason.SHUTDOWN
        assert reply.text_so_far().endswith(SHUTDOWN_CUT_NOTICE)
    # Its turn came after the cut: it is not even started, and says why.
    assert queued.done and queued.status is ReplyStatus.FAILED
    assert queued.text_so_far() == SHUTDOWN_NOTICE.lstrip()
    kept = running.text_so_far().removesuffix(SHUTDOWN_CUT_NOTICE)
    assert await history(repository) == [("user", "talk"), ("assistant", kept), ("user", "and then")]
    assert await stored_cuts(repository) == [None, CutReason.SHUTDOWN, None]
    assert backend.closed_streams == 2
    with pytest.raises(ChinwagError):
        engine.handle(user("too late"))
