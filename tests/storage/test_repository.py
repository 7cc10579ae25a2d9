"""ChatRepository on SQLite and PostgreSQL: history, limits, isolation, reset, settings, duplicates."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, func, select, text

from bot.errors import StorageError
from bot.ports import UNSET, ChannelSettings, CutReason, Repository
from storage.db import Database
from storage.messages import split_channel_key
from storage.models import Channel
from storage.repository import ChatRepository

from .conftest import Target


async def channel_rows(database: Database) -> int:
    return await database.run_read(
        lambda connection: connection.scalar(select(func.count()).select_from(Channel)) or 0
    )


async def contents(repo: ChatRepository, key: str, limit: int = 100) -> list[str]:
    return [m.content for m in await repo.recent_messages(key, limit=limit)]


async def test_a_conversation_comes_back_oldest_first(repo: ChatRepository) -> None:
    before = datetime.now(UTC)
    first = await repo.append_message(
        "telegram:42", "user", "hi", author_id="7", author_name="Ann", platform_message_id="1001"
    )
    second = await repo.append_message("telegram:42", "assistant", "hello Ann")
    third = await repo.append_message("telegram:42", "user", "how are you?", author_id="7")

    history = await repo.recent_messages("telegram:42", limit=10)

    assert history == [first, second, third]
    assert [m.id for m in history] == sorted({m.id for m in history})
    assert [(m.role, m.content) for m in history] == [
        ("user", "hi"),
        ("assistant", "hello Ann"),
        ("user", "how are you?"),
    ]
    assert (history[0].author_id, history[0].author_name, history[0].platform_message_id) == (
        "7",
        "Ann",
        "1001",
    )
    assert (history[1].author_id, history[1].author_name, history[1].platform_message_id) == (None,) * 3
    for message in history:
        assert message.created_at.tzinfo is not None
        assert message.created_at.utcoffset() == timedelta(0)
        assert before - timedelta(seconds=5) <= message.created_at <= datetime.now(UTC) + timedelta(seconds=5)
    assert await repo.message_count("telegram:42") == 3


async def test_limit_keeps_the_newest(repo: ChatRepository) -> None:
    for i in range(10):
        await repo.append_message("web:s", "user", f"m{i}")

    assert await contents(repo, "web:s", limit=3) == ["m7", "m8", "m9"]
    assert await contents(repo, "web:s", limit=10) == [f"m{i}" for i in range(10)]
    assert await contents(repo, "web:s", limit=50) == [f"m{i}" for i in range(10)]
    assert await repo.recent_messages("web:s", limit=0) == []
    with pytest.raises(ValueError):
        await repo.recent_messages("web:s", limit=-1)


async def test_max_chars_drops_the_oldest_but_keeps_the_newest(repo: ChatRepository) -> None:
    for text_ in ["aaaaa", "bbb", "cccc"]:  # 5, 3, 4 characters
        await repo.append_message("web:s", "user", text_)

    async def fit(max_chars: int, limit: int = 10) -> list[str]:
        return [m.content for m in await repo.recent_messages("web:s", limit=limit, max_chars=max_chars)]

    assert await fit(12) == ["aaaaa", "bbb", "cccc"]  # exactly fits
    assert await fit(11) == ["bbb", "cccc"]
    assert await fit(7) == ["bbb", "cccc"]
    assert await fit(6) == ["cccc"]
    assert await fit(1) == ["cccc"]  # the newest is kept even when it alone is too long
    assert await fit(0) == ["cccc"]
    assert await fit(100, limit=2) == ["bbb", "cccc"]  # limit applies first


async def test_max_chars_keeps_a_contiguous_tail(repo: ChatRepository) -> None:
    for text_ in ["a", "a much longer message", "bb"]:
        await repo.append_message("web:s", "user", text_)

    # "a" would fit on its own, but skipping a message in the middle would garble the conversation.
    assert [m.content for m in await repo.recent_messages("web:s", limit=10, max_chars=5)] == ["bb"]


async def test_unknown_channel_reads_as_empty_without_creating_it(
    repo: ChatRepository, database: Database
) -> None:
    assert await repo.recent_messages("discord:404", limit=10) == []
    assert await repo.message_count("discord:404") == 0
    assert await repo.get_settings("discord:404") == ChannelSettings(None, None)
    assert await repo.reset_channel("discord:404") == 0
    assert await channel_rows(database) == 0


async def test_channels_are_isolated_even_with_colons_in_ids(repo: ChatRepository) -> None:
    keys = ["web:abc", "web:abc:def", "web:abc:def:ghi", "telegram:abc:def", "discord:abc", "web:ABC"]
    for key in keys:
        await repo.append_message(key, "user", f"to {key}")
        await repo.append_message(key, "assistant", f"from {key}")

    for key in keys:
        assert await contents(repo, key) == [f"to {key}", f"from {key}"]
        assert await repo.message_count(key) == 2


def test_channel_key_splits_at_the_first_colon() -> None:
    assert split_channel_key("web:abc:def") == ("web", "abc:def")
    assert split_channel_key("console:local") == ("console", "local")
    for bad in ["nocolon", ":x", "web:", ""]:
        with pytest.raises(ValueError):
            split_channel_key(bad)


async def test_malformed_channel_key_is_refused(repo: ChatRepository) -> None:
    with pytest.raises(ValueError):
        await repo.append_message("nocolon", "user", "x")
    with pytest.raises(ValueError):
        await repo.recent_messages(":x", limit=1)


async def test_reset_clears_only_that_channel_and_keeps_its_settings(repo: ChatRepository) -> None:
    await repo.set_settings("telegram:1", system_prompt="Be brief.", temperature=0.2)
    for i in range(3):
        await repo.append_message("telegram:1", "user", f"one {i}")
        await repo.append_message("telegram:2", "user", f"two {i}")
    last_before_reset = (await repo.recent_messages("telegram:1", limit=1))[0]

    assert await repo.reset_channel("telegram:1") == 3

    assert await repo.recent_messages("telegram:1", limit=10) == []
    assert await repo.message_count("telegram:1") == 0
    assert await contents(repo, "telegram:2") == ["two 0", "two 1", "two 2"]
    assert await repo.get_settings("telegram:1") == ChannelSettings("Be brief.", 0.2)
    assert await repo.reset_channel("telegram:1") == 0

    # The conversation starts over; ids keep growing, so order stays right.
    after = await repo.append_message("telegram:1", "user", "again")
    assert after is not None
    assert after.id > last_before_reset.id
    assert await contents(repo, "telegram:1") == ["again"]


async def test_settings_set_change_and_clear(repo: ChatRepository) -> None:
    key = "discord:99"
    assert await repo.get_settings(key) == ChannelSettings()

    assert await repo.set_settings(key, temperature=0.0) == ChannelSettings(None, 0.0)
    assert await repo.set_settings(key, system_prompt="You are a pirate.") == ChannelSettings(
        "You are a pirate.", 0.0
    )
    assert await repo.get_settings(key) == ChannelSettings("You are a pirate.", 0.0)
    # UNSET leaves a value alone; None clears it back to the default.
    assert await repo.set_settings(key, system_prompt=UNSET, temperature=None) == ChannelSettings(
        "You are a pirate.", None
    )
    assert await repo.set_settings(key) == ChannelSettings("You are a pirate.", None)
    assert await repo.set_settings(key, system_prompt=None) == ChannelSettings()
    assert await repo.get_settings(key) == ChannelSettings()
    assert await repo.get_settings("discord:100") == ChannelSettings()


async def test_temperature_must_be_finite(repo: ChatRepository) -> None:
    for bad in [float("nan"), float("inf")]:
        with pytest.raises(ValueError):
            await repo.set_settings("web:t", temperature=bad)
    assert await repo.get_settings("web:t") == ChannelSettings()


async def test_settings_before_any_message_create_the_channel_once(
    repo: ChatRepository, database: Database
) -> None:
    await repo.set_settings("web:x", temperature=1.5)
    await repo.append_message("web:x", "user", "hi")

    assert await channel_rows(database) == 1
    assert await repo.get_settings("web:x") == ChannelSettings(None, 1.5)
    assert await repo.message_count("web:x") == 1


async def test_duplicate_delivery_is_ignored(repo: ChatRepository) -> None:
    original = await repo.append_message("telegram:5", "user", "first", platform_message_id="77")
    assert original is not None

    assert await repo.append_message("telegram:5", "user", "first again", platform_message_id="77") is None

    assert await repo.recent_messages("telegram:5", limit=10) == [original]
    # The same platform id in another channel is another message.
    assert await repo.append_message("telegram:6", "user", "elsewhere", platform_message_id="77") is not None
    # Messages without a platform id never collide.
    assert await repo.append_message("telegram:5", "assistant", "reply") is not None
    assert await repo.append_message("telegram:5", "assistant", "reply") is not None
    assert await repo.message_count("telegram:5") == 3


async def test_concurrent_appends_to_a_new_channel(repo: ChatRepository, database: Database) -> None:
    results = await asyncio.gather(
        *(repo.append_message("web:crowd", "user", f"m{i}", author_id=str(i)) for i in range(50))
    )

    stored = [r for r in results if r is not None]
    assert len(stored) == 50
    assert len({m.id for m in stored}) == 50
    assert await repo.message_count("web:crowd") == 50
    assert await channel_rows(database) == 1
    assert sorted(await contents(repo, "web:crowd")) == sorted(f"m{i}" for i in range(50))


async def test_concurrent_duplicates_store_exactly_one(repo: ChatRepository) -> None:
    results = await asyncio.gather(
        *(repo.append_message("web:dup", "user", f"copy {i}", platform_message_id="same") for i in range(20))
    )

    assert sum(r is not None for r in results) == 1
    assert await repo.message_count("web:dup") == 1


async def test_two_clients_of_one_database_append_at_once(target: Target, database: Database) -> None:
    # A second Database object has its own pool, like a second process on the same database.
    other = target.new_database()
    await other.start()
    try:
        repos = [ChatRepository(database), ChatRepository(other)]
        results = await asyncio.gather(
            *(repos[i % 2].append_message("web:both", "user", f"m{i}") for i in range(40)),
            *(
                repos[i % 2].append_message("web:both", "user", "dup", platform_message_id="d")
                for i in range(10)
            ),
        )
        assert sum(r is not None for r in results) == 41
        assert await repos[1].message_count("web:both") == 41
        assert await channel_rows(database) == 1
    finally:
        await other.stop()


async def test_any_unicode_is_stored_as_is(repo: ChatRepository) -> None:
    samples = [
        "emoji 👩‍💻🇫🇷 and \U0001f600",
        "עברית mixed with English",
        "e\u0301 combining, zero\u200bwidth, line\u2028separator",
        "quotes ' \" ` and backslash \\ and percent %s %(x)s",
        "x" * 100_000,
        "",
    ]
    for sample in samples:
        await repo.append_message("web:u", "user", sample, author_name="Zoë 🐱")

    history = await repo.recent_messages("web:u", limit=10)
    assert [m.content for m in history] == samples
    assert {m.author_name for m in history} == {"Zoë 🐱"}


async def test_the_repository_satisfies_the_protocol(repo: ChatRepository) -> None:
    as_protocol: Repository = repo
    assert await as_protocol.message_count("web:none") == 0


async def test_run_write_rolls_back_on_error_and_keeps_the_error(database: Database) -> None:
    def insert_then_fail(connection: Connection) -> None:
        connection.execute(text("INSERT INTO channels (platform, external_id) VALUES ('web', 'gone')"))
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await database.run_write(insert_then_fail)
    assert await channel_rows(database) == 0
    # The unit-of-work path stays usable after the failure.
    await database.run_write(
        lambda connection: connection.execute(
            text("INSERT INTO channels (platform, external_id) VALUES ('web', 'kept')")
        )
    )
    assert await channel_rows(database) == 1


async def test_run_read_and_run_write_turn_database_errors_into_storage_errors(database: Database) -> None:
    for run in (database.run_read, database.run_write):
        with pytest.raises(StorageError) as caught:
            await run(lambda connection: connection.execute(text("SELECT * FROM no_such_table")))
        assert "no_such_table" in str(caught.value)
        assert "\n" not in str(caught.value)
        assert isinstance(caught.value.__cause__, Exception)  # the original stays for the log


async def test_a_remembered_channel_id_survives_a_move_and_a_reset(repo: ChatRepository) -> None:
    await repo.append_message("telegram:-1", "user", "before the move")
    await repo.move_channel("telegram:-1", "telegram:-100")
    await repo.append_message("telegram:-1", "user", "old id again")
    await repo.append_message("telegram:-100", "user", "new id")
    assert [m.content for m in await repo.recent_messages("telegram:-1", limit=10)] == ["old id again"]
    assert [m.content for m in await repo.recent_messages("telegram:-100", limit=10)] == [
        "before the move",
        "new id",
    ]
    await repo.reset_channel("telegram:-100")
    await repo.append_message("telegram:-100", "user", "after the reset")
    assert [m.content for m in await repo.recent_messages("telegram:-100", limit=10)] == ["after the reset"]


async def test_recent_messages_up_to_an_id(repo: ChatRepository) -> None:
    stored = [await repo.append_message("web:m", "user", f"m{i}") for i in range(5)]
    assert stored[2] is not None
    history = await repo.recent_messages("web:m", limit=2, max_id=stored[2].id)
    assert [m.content for m in history] == ["m1", "m2"]


async def test_answer_to_finds_the_question_and_the_assistant_message_after_it(repo: ChatRepository) -> None:
    question = await repo.append_message("telegram:5", "user", "q1", platform_message_id="10")
    await repo.append_message("telegram:6", "assistant", "another channel's answer")
    answer = await repo.append_message("telegram:5", "assistant", "a1")
    unanswered = await repo.append_message("telegram:5", "user", "q2", platform_message_id="11")
    await repo.append_message("telegram:5", "user", "q3", platform_message_id="12")
    last = await repo.append_message("telegram:5", "user", "q4", platform_message_id="13")

    assert await repo.answer_to("telegram:5", "10") == (question, answer)
    # Followed by another user message, or by nothing at all: no stored answer.
    assert await repo.answer_to("telegram:5", "11") == (unanswered, None)
    assert await repo.answer_to("telegram:5", "13") == (last, None)
    assert await repo.answer_to("telegram:5", "99") is None
    assert await repo.answer_to("telegram:never", "10") is None


async def test_move_channel_to_a_new_key_carries_messages_and_settings(repo: ChatRepository) -> None:
    await repo.set_settings("telegram:-1", system_prompt="Be brief.", temperature=0.4)
    first = await repo.append_message("telegram:-1", "user", "one", platform_message_id="1")
    second = await repo.append_message("telegram:-1", "assistant", "echo one")

    await repo.move_channel("telegram:-1", "telegram:-100")

    assert await repo.recent_messages("telegram:-100", limit=10) == [first, second]
    assert await repo.get_settings("telegram:-100") == ChannelSettings("Be brief.", 0.4)
    assert await repo.recent_messages("telegram:-1", limit=10) == []
    assert await repo.get_settings("telegram:-1") == ChannelSettings()
    # The platform id moved along: a redelivery in the new channel is a duplicate.
    assert await repo.append_message("telegram:-100", "user", "one", platform_message_id="1") is None
    assert await repo.append_message("telegram:-1", "user", "one", platform_message_id="1") is not None


async def test_move_channel_merges_into_an_existing_channel(repo: ChatRepository) -> None:
    await repo.set_settings("web:old", system_prompt="old prompt", temperature=0.1)
    await repo.set_settings("web:new", temperature=1.2)
    await repo.append_message("web:old", "user", "o1", platform_message_id="1")
    await repo.append_message("web:new", "user", "n1", platform_message_id="1")  # the same platform id
    await repo.append_message("web:old", "user", "o2", platform_message_id="2")
    await repo.append_message("web:new", "user", "n2")
    await repo.append_message("web:old", "assistant", "o3")

    await repo.move_channel("web:old", "web:new")

    merged = await repo.recent_messages("web:new", limit=10)
    assert [m.content for m in merged] == ["o1", "n1", "o2", "n2", "o3"]  # write order kept
    assert [m.platform_message_id for m in merged] == [None, "1", "2", None, None]
    assert await repo.message_count("web:old") == 0
    # The new channel's own settings win; the old ones fill the gaps.
    assert await repo.get_settings("web:new") == ChannelSettings("old prompt", 1.2)
    assert await repo.get_settings("web:old") == ChannelSettings()
    assert await repo.answer_to("web:new", "2") is not None


async def test_move_channel_of_an_unknown_or_the_same_channel_changes_nothing(
    repo: ChatRepository, database: Database
) -> None:
    await repo.move_channel("web:never", "web:target")
    assert await channel_rows(database) == 0
    await repo.append_message("web:same", "user", "stay")
    await repo.move_channel("web:same", "web:same")
    assert await contents(repo, "web:same") == ["stay"]
    with pytest.raises(ValueError):
        await repo.move_channel("no-colon", "web:same")


async def test_last_platform_message_ids_name_where_each_channel_stopped(repo: ChatRepository) -> None:
    """The newest user message (with a platform id) directly followed by an answer, per channel."""
    await repo.append_message("discord:1", "user", "a", platform_message_id="900")
    await repo.append_message("discord:1", "assistant", "reply")
    await repo.append_message("discord:1", "user", "b", platform_message_id="1000")  # stored, unanswered
    await repo.append_message("discord:1", "user", "no platform id")
    await repo.append_message("discord:2", "user", "c", platform_message_id="5")
    await repo.append_message("discord:2", "assistant", "reply to c")
    await repo.append_message("discord:2", "user", "d", platform_message_id="6")
    await repo.append_message("discord:2", "assistant", "reply to d")
    await repo.append_message("discord:2", "user", "e", platform_message_id="7")  # killed before answering
    await repo.append_message("discord:4", "user", "never answered", platform_message_id="40")
    await repo.append_message("discord:5", "user", "no answer stored", platform_message_id="50")
    await repo.append_message("discord:5", "user", "its answer failed", platform_message_id="51")
    await repo.append_message("discord:5", "user", "answered later", platform_message_id="52")
    await repo.append_message("discord:5", "assistant", "reply to 52")
    await repo.append_message("discord:5", "user", "no id, answered")
    await repo.append_message("discord:5", "assistant", "reply")
    await repo.append_message("telegram:1", "user", "t", platform_message_id="77")
    await repo.append_message("telegram:1", "assistant", "reply to t")
    await repo.append_message("discord:3", "assistant", "only the bot spoke here")

    assert await repo.last_platform_message_ids("discord") == {"1": "900", "2": "6", "5": "52"}
    assert await repo.last_platform_message_ids("telegram") == {"1": "77"}
    assert await repo.last_platform_message_ids("web") == {}


async def test_a_reply_cut_short_is_stored_with_its_reason(repo: ChatRepository) -> None:
    question = await repo.append_message("web:a", "user", "tell me", platform_message_id="q1")
    cut = await repo.append_message("web:a", "assistant", "I was say", cut=CutReason.STOPPED)
    whole = await repo.append_message("web:a", "assistant", "whole")
    assert question is not None and cut is not None and whole is not None
    assert (question.cut, cut.cut, whole.cut) == (None, CutReason.STOPPED, None)
    assert await repo.recent_messages("web:a", limit=10) == [question, cut, whole]
    assert await repo.answer_to("web:a", "q1") == (question, cut)
    for reason in CutReason:
        stored = await repo.append_message("web:b", "assistant", reason.value, cut=reason)
        assert stored is not None
        assert (await repo.recent_messages("web:b", limit=1))[0].cut is reason
