"""The engine, driven like a conversation: echo backend (or a double), real SQLite file."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import pytest

from bot.engine import RESET_SKIPPED_REPLY
from bot.events import ChatEvent
from bot.reply import ReplyStatus
from storage.repository import ChatRepository
from tests.bot.doubles import FailingBackend, RecordingBackend, SlowEchoBackend
from tests.conftest import EngineFactory
from tests.fakes.waiting import wait_until


def user(
    text: str,
    *,
    channel: str = "c1",
    author: str = "u1",
    admin: bool = False,
    mid: str | None = None,
    redelivered: bool = False,
) -> ChatEvent:
    return ChatEvent(
        platform="test",
        channel=channel,
        author_id=author,
        author_name=f"name-{author}",
        text=text,
        is_admin=admin,
        message_id=mid,
        redelivered=redelivered,
    )


async def history(repository: ChatRepository, channel: str = "c1") -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in await repository.recent_messages(f"test:{channel}", limit=1000)]


async def test_echo_contract_counts_earlier_messages(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    assert await engine.ask(user("hi")) == "echo[0]: hi"
    assert await engine.ask(user("yo")) == "echo[2]: yo"
    assert await engine.ask(user("third")) == "echo[4]: third"


async def test_channels_have_separate_histories(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    engine = await make_engine()
    assert await engine.ask(user("a1", channel="a")) == "echo[0]: a1"
    assert await engine.ask(user("b1", channel="b")) == "echo[0]: b1"
    assert await engine.ask(user("a2", channel="a")) == "echo[2]: a2"
    assert await history(repository, "b") == [("user", "b1"), ("assistant", "echo[0]: b1")]


async def test_reply_streams_in_chunks_that_join_to_the_text(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    reply = engine.handle(user("one two three"))
    chunks = [chunk async for chunk in reply]
    assert len(chunks) > 1
    assert "".join(chunks) == await reply.text() == "echo[0]: one two three"
    assert reply.status is ReplyStatus.ANSWERED


async def test_messages_of_one_channel_are_answered_in_order_under_concurrency(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    backend = SlowEchoBackend()
    engine = await make_engine(backend)
    texts = [f"m{i}" for i in range(12)]
    replies = [engine.handle(user(text)) for text in texts]
    # Readers finish in random order; the answers must still follow arrival order.
    random.shuffle(order := list(range(len(replies))))
    results = dict(zip(order, await asyncio.gather(*(replies[i].text() for i in order)), strict=True))
    assert [results[i] for i in range(len(texts))] == [f"echo[{2 * i}]: m{i}" for i in range(len(texts))]
    stored = await history(repository)
    assert [content for role, content in stored if role == "user"] == texts
    assert backend.started == texts


async def test_a_slow_channel_does_not_hold_up_another(make_engine: EngineFactory) -> None:
    backend = SlowEchoBackend()
    backend.gates["blocked"] = asyncio.Event()
    engine = await make_engine(backend)
    slow = engine.handle(user("blocked", channel="slow"))
    fast = await asyncio.wait_for(engine.ask(user("quick", channel="fast")), timeout=5)
    assert fast == "echo[0]: quick"
    assert not slow.done
    backend.gates["blocked"].set()
    assert await asyncio.wait_for(slow.text(), timeout=5) == "echo[0]: blocked"


async def test_reset_by_admin_clears_only_that_channel(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    engine = await make_engine()
    await engine.ask(user("hello"))
    await engine.ask(user("other", channel="c2"))
    reply = await engine.ask(user("/reset", admin=True))
    assert "reset" in reply.lower() and "cleared" in reply.lower()
    assert await history(repository) == []
    assert len(await history(repository, "c2")) == 2
    assert await engine.ask(user("again")) == "echo[0]: again"


async def test_the_echo_reply_is_exact_however_many_words(make_engine: EngineFactory) -> None:
    # The interface contract: `echo[N]: T` exactly, also past `model.max_new_tokens` words (only
    # the OpenAI endpoint's completions are cut at the limit; see tests/adapters/test_web_openai.py).
    engine = await make_engine(model={"max_new_tokens": 16})
    text = " ".join(f"word{i}" for i in range(600))
    assert await engine.ask(user(text)) == f"echo[0]: {text}"


async def test_a_message_queued_before_a_reset_is_not_answered_after_it(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    backend = SlowEchoBackend()
    backend.gates["held"] = asyncio.Event()
    engine = await make_engine(backend)
    held = engine.handle(user("held"))
    await wait_until(lambda: backend.started == ["held"], what="the held message generates")
    queued = engine.handle(user("queued"))
    reset = engine.handle(user("/reset", admin=True))
    backend.gates["held"].set()
    assert await queued.text() == RESET_SKIPPED_REPLY
    assert queued.status is ReplyStatus.SUPERSEDED and not queued.silent
    assert "cleared" in (await reset.text()).lower()
    assert held.done and backend.started == ["held"]  # "queued" never reached the model
    assert await history(repository) == []


@pytest.mark.parametrize(
    "command", ["/reset", "/system be a pirate", "/temperature 1.5", "/RESET@ChinwagBot"]
)
async def test_admin_commands_are_refused_for_non_admins_and_change_nothing(
    make_engine: EngineFactory, repository: ChatRepository, command: str
) -> None:
    engine = await make_engine()
    await engine.ask(user("keep me"))
    reply = await engine.ask(user(command, admin=False))
    assert "not allowed" in reply.lower() or "admin" in reply.lower()
    assert await history(repository) == [("user", "keep me"), ("assistant", "echo[0]: keep me")]
    settings = await repository.get_settings("test:c1")
    assert settings.system_prompt is None and settings.temperature is None


async def test_system_and_temperature_are_per_channel_settings(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    backend = RecordingBackend()
    engine = await make_engine(backend, model={"system_prompt": "Default prompt.", "temperature": 0.7})
    assert "Default prompt." in await engine.ask(user("/system"))
    assert "updated" in (await engine.ask(user("/system You are a pirate.", admin=True))).lower()
    assert "0.2" in await engine.ask(user("/temperature 0.2", admin=True))
    assert "0.2" in await engine.ask(user("/temperature"))
    await engine.ask(user("ahoy"))
    await engine.ask(user("hello", channel="other"))
    assert backend.conversations[0].system_prompt == "You are a pirate."
    assert backend.samplings[0].temperature == 0.2
    assert backend.conversations[1].system_prompt == "Default prompt."
    assert backend.samplings[1].temperature == 0.7
    # Commands are not part of the conversation the model sees.
    assert [turn.content for turn in backend.conversations[0].history] == []
    await engine.ask(user("/system default", admin=True))
    await engine.ask(user("/temperature default", admin=True))
    assert await repository.get_settings("test:c1") == await repository.get_settings("test:never-seen")


@pytest.mark.parametrize("value", ["hot", "-1", "2.5", "nan", "inf"])
async def test_bad_temperature_is_explained_and_not_stored(
    make_engine: EngineFactory, repository: ChatRepository, value: str
) -> None:
    engine = await make_engine()
    reply = await engine.ask(user(f"/temperature {value}", admin=True))
    assert "must be a number" in reply
    assert (await repository.get_settings("test:c1")).temperature is None


async def test_help_and_unknown_commands(make_engine: EngineFactory, repository: ChatRepository) -> None:
    engine = await make_engine()
    help_text = await engine.ask(user("/help"))
    for command in ("/reset", "/system", "/temperature", "/help"):
        assert command in help_text
    assert "/help" in await engine.ask(user("/frobnicate"))
    assert await history(repository) == []


async def test_a_duplicate_platform_message_is_answered_once(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    engine = await make_engine()
    first = engine.handle(user("hello", mid="42"))
    second = engine.handle(user("hello", mid="42"))
    assert await first.text() == "echo[0]: hello"
    assert await second.text() == ""
    assert second.silent and second.status is ReplyStatus.DUPLICATE
    # The same platform id in another channel is a different message.
    assert await engine.ask(user("hello", channel="c2", mid="42")) == "echo[0]: hello"
    assert await history(repository) == [("user", "hello"), ("assistant", "echo[0]: hello")]


async def test_a_redelivered_message_gets_its_stored_answer_again_without_generating(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    backend = RecordingBackend()
    engine = await make_engine(backend)
    assert await engine.ask(user("hello", mid="42")) == "echo[0]: hello"
    assert await engine.ask(user("next", mid="43")) == "echo[2]: next"
    # A crash after "hello" was answered and stored, before the reply reached the user.
    again = engine.handle(user("hello", mid="42", redelivered=True))
    assert await again.text() == "echo[0]: hello"
    assert again.status is ReplyStatus.ANSWERED and not again.silent
    assert len(backend.conversations) == 2
    # An ordinary repeat stays silent.
    repeat = engine.handle(user("hello", mid="42"))
    assert await repeat.text() == "" and repeat.status is ReplyStatus.DUPLICATE
    assert await history(repository) == [
        ("user", "hello"),
        ("assistant", "echo[0]: hello"),
        ("user", "next"),
        ("assistant", "echo[2]: next"),
    ]


async def test_a_redelivered_message_without_a_stored_answer_is_answered_from_the_history_before_it(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    backend = RecordingBackend()
    engine = await make_engine(backend)
    await engine.ask(user("first", mid="1"))
    # A crash after the question was stored, before its answer was.
    await repository.append_message("test:c1", "user", "second", author_id="u1", platform_message_id="2")
    reply = engine.handle(user("second", mid="2", redelivered=True))
    assert await reply.text() == "echo[2]: second"
    assert reply.status is ReplyStatus.ANSWERED
    assert [turn.content for turn in backend.conversations[-1].history] == ["first", "echo[0]: first"]
    assert await history(repository) == [
        ("user", "first"),
        ("assistant", "echo[0]: first"),
        ("user", "second"),
        ("assistant", "echo[2]: second"),
    ]
    # Now answered: a second redelivery resends that answer.
    assert await engine.ask(user("second", mid="2", redelivered=True)) == "echo[2]: second"
    assert len(backend.conversations) == 2
    assert await repository.message_count("test:c1") == 4


async def test_a_redelivered_question_whose_answer_failed_is_answered_now(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    engine = await make_engine(FailingBackend())
    failed = engine.handle(user("please explode", mid="9"))
    await failed.text()
    assert failed.status is ReplyStatus.FAILED
    await engine.ask(user("later", mid="10"))
    # The failure stored no answer; "later" follows the question, so it has none either.
    found = await repository.answer_to("test:c1", "9")
    assert found is not None and found[0].content == "please explode" and found[1] is None
    redelivered = engine.handle(user("please explode", mid="9", redelivered=True))
    assert "try again" in (await redelivered.text()).lower()
    assert redelivered.status is ReplyStatus.FAILED


async def test_a_redelivered_message_never_stored_is_answered_normally(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    engine = await make_engine()
    assert await engine.ask(user("new", mid="5", redelivered=True)) == "echo[0]: new"
    assert await history(repository) == [("user", "new"), ("assistant", "echo[0]: new")]


async def test_move_channel_carries_history_and_settings_and_keeps_order(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    backend = SlowEchoBackend()
    engine = await make_engine(backend)
    await engine.ask(user("/temperature 0.3", admin=True, channel="old"))
    await engine.ask(user("one", channel="old"))
    # Queued before the move: answered in the old channel first, then moved with it.
    pending = engine.handle(user("two", channel="old"))
    await engine.move_channel("test:old", "test:new")
    assert pending.done and await pending.text() == "echo[2]: two"
    assert await engine.ask(user("three", channel="new")) == "echo[4]: three"
    assert await history(repository, "old") == []
    assert [content for _, content in await history(repository, "new")] == [
        "one",
        "echo[0]: one",
        "two",
        "echo[2]: two",
        "three",
        "echo[4]: three",
    ]
    assert (await repository.get_settings("test:new")).temperature == 0.3
    # Messages handled after the call wait for the move, in either channel.
    gate = backend.gates["blocked"] = asyncio.Event()
    slow = engine.handle(user("blocked", channel="new"))
    move = engine.move_channel("test:new", "test:newer")
    after = engine.handle(user("after", channel="newer"))
    await wait_until(lambda: "blocked" in backend.started, what="the blocked message is generating")
    # A message of another channel answered meanwhile: "after" had the same chance to run, were
    # it not waiting for the move.
    assert await engine.ask(user("meanwhile", channel="elsewhere")) == "echo[0]: meanwhile"
    assert not move.done() and not after.done and "after" not in backend.started
    gate.set()
    await move
    assert await after.text() == "echo[8]: after"
    assert await slow.text() == "echo[6]: blocked"


@pytest.mark.parametrize("text", ["", "   ", "\n\t\n", "\x00\x01"])
async def test_empty_messages_get_a_polite_reply_and_store_nothing(
    make_engine: EngineFactory, repository: ChatRepository, text: str
) -> None:
    engine = await make_engine()
    reply = engine.handle(user(text))
    assert "empty" in (await reply.text()).lower()
    assert reply.status is ReplyStatus.NOTICE
    assert await history(repository) == []


async def test_an_oversized_message_is_cut_with_a_notice(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    engine = await make_engine(chat={"max_input_chars": 100})
    reply = await engine.ask(user("x" * 150))
    assert reply.startswith("echo[0]: " + "x" * 100)
    assert "first 100" in reply
    assert await history(repository) == [("user", "x" * 100), ("assistant", "echo[0]: " + "x" * 100)]


async def test_hostile_text_is_sanitized_not_fatal(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    engine = await make_engine()
    reply = await engine.ask(user("nul\x00 bell\x07 lone\ud800 esc\x1b[2J ok\r\nnext"))
    assert reply == "echo[0]: nul bell lone\ufffd esc[2J ok\nnext"
    assert (await history(repository))[0] == ("user", "nul bell lone\ufffd esc[2J ok\nnext")


async def test_a_failed_generation_keeps_the_question_but_not_the_half_reply(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    backend = FailingBackend()
    engine = await make_engine(backend)
    reply = engine.handle(user("please explode"))
    text = await reply.text()
    assert reply.status is ReplyStatus.FAILED
    assert "sorry" in text.lower() and "try again" in text.lower()
    assert "fell over" not in text  # internals are logged, not posted
    assert await history(repository) == [("user", "please explode")]
    # The channel keeps working and the kept question is part of the next prompt.
    assert await engine.ask(user("still there?")) == "echo[1]: still there?"


@pytest.mark.parametrize("error", [MemoryError(), ValueError("bad json"), RuntimeError("CUDA out of memory")])
async def test_any_backend_exception_becomes_an_error_reply(
    make_engine: EngineFactory, repository: ChatRepository, error: BaseException
) -> None:
    engine = await make_engine(FailingBackend(error))
    reply = engine.handle(user("explode now"))
    assert "try again" in (await reply.text()).lower()
    assert reply.status is ReplyStatus.FAILED
    assert await engine.ask(user("fine")) == "echo[1]: fine"


async def test_a_flood_gets_one_notice_and_no_generation(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    backend = RecordingBackend()
    engine = await make_engine(backend, rate_limit=3)
    replies = [engine.handle(user(f"spam {i}")) for i in range(6)]
    texts = [await reply.text() for reply in replies]
    assert texts[:3] == ["echo[0]: spam 0", "echo[2]: spam 1", "echo[4]: spam 2"]
    assert "wait" in texts[3].lower() and replies[3].status is ReplyStatus.NOTICE
    assert [reply.status for reply in replies[4:]] == [ReplyStatus.DROPPED] * 2
    assert all(reply.silent for reply in replies[4:])
    assert len(backend.conversations) == 3
    # Another user in the same channel is not affected.
    assert (await engine.ask(user("hello", author="u2"))).startswith("echo[6]")


async def test_an_event_the_adapter_marks_not_rate_limited_is_never_limited(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(rate_limit=1)
    operator = [replace(user(f"line {i}"), rate_limited=False) for i in range(3)]
    assert [await engine.ask(event) for event in operator] == [
        "echo[0]: line 0",
        "echo[2]: line 1",
        "echo[4]: line 2",
    ]
    assert await engine.ask(user("flood")) == "echo[6]: flood"  # the limit still counts others
    assert "wait" in (await engine.ask(user("flood again"))).lower()


async def test_history_budget_limits_what_the_prompt_gets(make_engine: EngineFactory) -> None:
    backend = RecordingBackend()
    engine = await make_engine(backend, chat={"history_messages": 4})
    for i in range(5):
        await engine.ask(user(f"q{i}"))
    last = backend.conversations[-1]
    assert [turn.content for turn in last.history] == ["q2", "echo[4]: q2", "q3", "echo[4]: q3"]
    assert last.message == "q4"


# Timeouts, Stop and shutdown keep a reply's text: tests/bot/test_cut_replies.py.
