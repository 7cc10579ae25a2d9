"""What a message's attachments became (`attached`), edits and deletes of stored user messages,
on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from sqlalchemy import Connection, func, select

from bot.ports import StoredMessage, with_attached
from storage.db import Database
from storage.message_edits import MAX_IDS_PER_STATEMENT
from storage.messages import prompt_chars
from storage.models import Channel
from storage.repository import ChatRepository

T = TypeVar("T")


async def append(repo: ChatRepository, key: str, role: Any, content: str, **kwargs: Any) -> StoredMessage:
    stored = await repo.append_message(key, role, content, **kwargs)
    assert stored is not None
    return stored


async def history(repo: ChatRepository, key: str) -> list[StoredMessage]:
    return await repo.recent_messages(key, limit=1000)


async def channel_rows(database: Database) -> int:
    return await database.run_read(
        lambda connection: connection.scalar(select(func.count()).select_from(Channel)) or 0
    )


def counting_units_of_work(database: Database) -> list[str]:
    """Records each `run_read` / `run_write` call on `database` from now on."""
    calls: list[str] = []
    read, write = database.run_read, database.run_write

    async def run_read(work: Callable[[Connection], T]) -> T:
        calls.append("read")
        return await read(work)

    async def run_write(work: Callable[[Connection], T]) -> T:
        calls.append("write")
        return await write(work)

    database.run_read = run_read  # type: ignore[method-assign]
    database.run_write = run_write  # type: ignore[method-assign]
    return calls


# --- attached ---------------------------------------------------------------------------------


async def test_attached_is_stored_and_read_back_by_every_read(repo: ChatRepository) -> None:
    block = "[file: notes.txt]\nline one\n[image: cat.png]"
    question = await append(
        repo, "telegram:1", "user", "what is this?", platform_message_id="5", attached=block
    )
    answer = await append(repo, "telegram:1", "assistant", "a cat")
    plain = await append(repo, "telegram:1", "user", "thanks", platform_message_id="6")

    assert question.attached == block
    assert (answer.attached, plain.attached) == (None, None)
    assert await history(repo, "telegram:1") == [question, answer, plain]
    assert await repo.answer_to("telegram:1", "5") == (question, answer)
    # Attachments alone, without a caption: the text is empty, not the attachments.
    only_file = await append(repo, "telegram:1", "user", "", platform_message_id="7", attached=block)
    assert (await history(repo, "telegram:1"))[-1] == only_file
    assert (only_file.content, only_file.attached) == ("", block)


@pytest.mark.parametrize(
    ("content", "attached"),
    [("text", None), ("text", ""), ("", "[image: a.png]"), ("text", "[file: a.txt]\nbody"), ("", "")],
)
def test_prompt_chars_is_the_length_the_model_reads(content: str, attached: str | None) -> None:
    assert prompt_chars(content, attached) == len(with_attached(content, attached))


async def test_a_history_budget_counts_what_the_attachments_became(repo: ChatRepository) -> None:
    await append(repo, "web:b", "user", "aaaa")
    newest = await append(repo, "web:b", "user", "b", attached="x" * 10)  # 1 + 2 + 10 = 13 characters

    assert await repo.recent_messages("web:b", limit=10, max_chars=16) == [newest]
    assert len(await repo.recent_messages("web:b", limit=10, max_chars=17)) == 2


# --- edits ------------------------------------------------------------------------------------


async def test_an_edit_replaces_the_text_and_keeps_attached_id_time_and_order(repo: ChatRepository) -> None:
    first = await append(repo, "discord:9", "user", "what is 2+2?", platform_message_id="100")
    answer = await append(repo, "discord:9", "assistant", "4")
    question = await append(
        repo, "discord:9", "user", "and this?", platform_message_id="101", attached="[image: sum.png]"
    )
    after = await append(repo, "discord:9", "assistant", "5")
    other = await append(repo, "discord:10", "user", "same platform id elsewhere", platform_message_id="101")

    edited = await repo.edit_message("discord:9", "101", "and what about this one?")

    assert edited == StoredMessage(
        id=question.id,
        role="user",
        content="and what about this one?",
        author_id=None,
        author_name=None,
        platform_message_id="101",
        created_at=question.created_at,
        member_id=None,
        attached="[image: sum.png]",
    )
    assert await history(repo, "discord:9") == [first, answer, edited, after]
    assert await history(repo, "discord:10") == [other]
    assert await repo.answer_to("discord:9", "101") == (edited, after)
    # Edited twice: the newest text wins.
    again = await repo.edit_message("discord:9", "101", "")
    assert again is not None and (again.content, again.attached) == ("", "[image: sum.png]")


async def test_an_edit_keeps_the_authors_and_member(repo: ChatRepository) -> None:
    question = await append(
        repo, "telegram:-5", "user", "hi", author_id="7", author_name="Ann", platform_message_id="1"
    )
    edited = await repo.edit_message("telegram:-5", "1", "hello")
    assert edited is not None
    assert (edited.author_id, edited.author_name, edited.member_id) == ("7", "Ann", "7")
    assert edited == StoredMessage(**{**_fields(question), "content": "hello"})


def _fields(message: StoredMessage) -> dict[str, Any]:
    return {name: getattr(message, name) for name in StoredMessage.__slots__}


async def test_an_assistant_message_is_never_edited(repo: ChatRepository) -> None:
    # Only user messages get platform ids from the engine; one stored with an id all the same is
    # still not the user's to edit.
    reply = await append(repo, "web:a", "assistant", "the bot's words", platform_message_id="m1")
    assert await repo.edit_message("web:a", "m1", "someone else's words") is None
    assert await history(repo, "web:a") == [reply]


async def test_an_edit_of_a_message_never_stored_changes_nothing_and_creates_nothing(
    repo: ChatRepository, database: Database
) -> None:
    stored = await append(repo, "web:a", "user", "hi", platform_message_id="1")
    assert await repo.edit_message("web:a", "2", "new") is None
    assert await repo.edit_message("web:never", "1", "new") is None
    assert await channel_rows(database) == 1
    assert await history(repo, "web:a") == [stored]
    with pytest.raises(ValueError, match="channel key"):
        await repo.edit_message("no-colon", "1", "new")


async def test_an_edit_of_a_deleted_or_forgotten_message_is_none(repo: ChatRepository) -> None:
    await append(repo, "telegram:1", "user", "deleted", platform_message_id="1", author_id="7")
    await append(repo, "telegram:1", "user", "forgotten", platform_message_id="2", author_id="8")
    await repo.delete_messages("telegram:1", ["1"])
    await repo.forget_member("telegram", "8")

    assert await repo.edit_message("telegram:1", "1", "new") is None
    assert await repo.edit_message("telegram:1", "2", "new") is None
    assert await history(repo, "telegram:1") == []


# --- deletes ----------------------------------------------------------------------------------


async def test_a_delete_takes_the_question_and_its_answer_and_nothing_else(repo: ChatRepository) -> None:
    u1 = await append(repo, "discord:1", "user", "u1", platform_message_id="1")
    a1 = await append(repo, "discord:1", "assistant", "a1")
    await append(repo, "discord:1", "user", "u2", platform_message_id="2")  # unanswered: u3 follows
    await append(repo, "discord:1", "user", "u3", platform_message_id="3", attached="[image: x.png]")
    await append(repo, "discord:1", "assistant", "a3")
    u4 = await append(repo, "discord:1", "user", "u4", platform_message_id="4")
    a4 = await append(repo, "discord:1", "assistant", "a4")
    u5 = await append(repo, "discord:1", "user", "u5", platform_message_id="5")
    elsewhere = [
        await append(repo, "discord:2", "user", "same ids elsewhere", platform_message_id="3"),
        await append(repo, "discord:2", "assistant", "its answer"),
    ]

    assert await repo.delete_messages("discord:1", ["3", "2", "no such id"]) == 3

    assert await history(repo, "discord:1") == [u1, a1, u4, a4, u5]
    assert await history(repo, "discord:2") == elsewhere
    assert await repo.answer_to("discord:1", "2") is None
    # The last message, with nothing after it: alone.
    assert await repo.delete_messages("discord:1", ["5"]) == 1
    assert await history(repo, "discord:1") == [u1, a1, u4, a4]
    # Again: nothing is left to delete.
    assert await repo.delete_messages("discord:1", ["3", "2", "5"]) == 0
    assert await history(repo, "discord:1") == [u1, a1, u4, a4]


async def test_a_bot_reply_is_deleted_only_as_an_answer(repo: ChatRepository) -> None:
    question = await append(repo, "web:a", "user", "q", platform_message_id="q")
    reply = await append(repo, "web:a", "assistant", "a", platform_message_id="a")
    assert await repo.delete_messages("web:a", ["a"]) == 0
    assert await history(repo, "web:a") == [question, reply]


async def test_answers_are_judged_on_the_history_before_the_delete(repo: ChatRepository) -> None:
    """u2's next message is u3, a user message: deleting u3 and its answer in the same call must
    not make the assistant message after them u2's answer, however the ids are ordered or cut
    into statements."""
    u2 = "u2"
    await append(repo, "telegram:1", "user", "u2", platform_message_id=u2)
    await append(repo, "telegram:1", "user", "u3", platform_message_id="u3")
    await append(repo, "telegram:1", "assistant", "a3")
    more = await append(repo, "telegram:1", "assistant", "a3, continued")
    unknown = [f"unknown {i}" for i in range(MAX_IDS_PER_STATEMENT - 1)]

    # u3 in the first statement's ids, u2 in the second's.
    assert await repo.delete_messages("telegram:1", ["u3", *unknown, u2]) == 3
    assert await history(repo, "telegram:1") == [more]


async def test_a_bulk_of_100_in_one_transaction(repo: ChatRepository, database: Database) -> None:
    kept = [await append(repo, "discord:7", "user", "before", platform_message_id="0")]
    for i in range(1, 81):
        await append(repo, "discord:7", "user", f"q{i}", platform_message_id=str(i))
        if i % 2 == 0:  # half of them answered
            await append(repo, "discord:7", "assistant", f"a{i}")
    kept.append(await append(repo, "discord:7", "user", "after", platform_message_id="81"))
    ids = [str(i) for i in range(80, 0, -1)] + [f"gone {i}" for i in range(20)]
    calls = counting_units_of_work(database)

    assert await repo.delete_messages("discord:7", ids) == 80 + 40

    assert calls == ["write"]
    assert await history(repo, "discord:7") == kept


async def test_more_ids_than_one_statement_takes_are_still_one_transaction(
    repo: ChatRepository, database: Database
) -> None:
    for i in range(150):
        await append(repo, "discord:8", "user", f"q{i}", platform_message_id=str(i))
    calls = counting_units_of_work(database)

    assert await repo.delete_messages("discord:8", [str(i) for i in range(250)]) == 150
    assert calls == ["write"]
    assert await history(repo, "discord:8") == []


async def test_a_repeated_id_counts_once(repo: ChatRepository) -> None:
    await append(repo, "web:a", "user", "q", platform_message_id="1")
    await append(repo, "web:a", "assistant", "a")
    assert await repo.delete_messages("web:a", ["1", "1", "1"]) == 2


async def test_nothing_to_delete_touches_nothing(repo: ChatRepository, database: Database) -> None:
    stored = await append(repo, "web:a", "user", "q", platform_message_id="1")
    calls = counting_units_of_work(database)

    assert await repo.delete_messages("web:a", []) == 0
    assert calls == []
    assert await repo.delete_messages("web:never", ["1"]) == 0
    assert await channel_rows(database) == 1
    assert await history(repo, "web:a") == [stored]


async def test_a_malformed_delete_is_refused_before_the_database(
    repo: ChatRepository, database: Database
) -> None:
    await append(repo, "web:a", "user", "q", platform_message_id="1")
    calls = counting_units_of_work(database)
    with pytest.raises(ValueError, match="channel key"):
        await repo.delete_messages("no-colon", ["1"])
    with pytest.raises(ValueError, match="channel key"):
        await repo.delete_messages("no-colon", [])
    with pytest.raises(TypeError, match="not one string"):
        await repo.delete_messages("web:a", "1")
    assert calls == []
