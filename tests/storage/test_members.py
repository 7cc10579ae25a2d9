"""Member conversations and the channel settings of issue 12, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from bot.errors import StorageError
from bot.ports import UNSET, ChannelSettings, StoredMessage
from storage.db import Database
from storage.repository import ChatRepository


async def append(repo: ChatRepository, key: str, role: Any, content: str, **kwargs: Any) -> StoredMessage:
    stored = await repo.append_message(key, role, content, **kwargs)
    assert stored is not None
    return stored


async def test_a_member_reads_only_their_own_conversation_oldest_first(repo: ChatRepository) -> None:
    key = "discord:1"
    a1 = await append(repo, key, "user", "ann 1", author_id="A")
    to_a1 = await append(repo, key, "assistant", "to ann 1", member_id="A")
    b1 = await append(repo, key, "user", "bob 1", author_id="B")
    # Member ids next to A's in the index: neither a prefix nor a neighbour may leak in.
    await append(repo, key, "user", "ab 1", author_id="AB")
    await append(repo, key, "user", "empty-named", author_id="")
    await append(repo, "discord:2", "user", "ann elsewhere", author_id="A")
    await append(repo, "discord:0", "user", "ann before", author_id="A")
    to_b1 = await append(repo, key, "assistant", "to bob 1", member_id="B")
    a2 = await append(repo, key, "user", "ann 2", author_id="A")
    everyone = await append(repo, key, "assistant", "to everyone")
    to_a2 = await append(repo, key, "assistant", "to ann 2", member_id="A")

    assert await repo.recent_messages(key, limit=10, member_id="A") == [a1, to_a1, a2, to_a2]
    assert await repo.recent_messages(key, limit=2, member_id="A") == [a2, to_a2]
    assert await repo.recent_messages(key, limit=10, member_id="B") == [b1, to_b1]
    assert await repo.recent_messages(key, limit=10, member_id="nobody") == []
    assert await repo.recent_messages("discord:404", limit=10, member_id="A") == []
    # max_id: the member's history as it stood when that message was stored.
    assert await repo.recent_messages(key, limit=10, member_id="A", max_id=a2.id) == [a1, to_a1, a2]
    assert await repo.recent_messages(key, limit=1, member_id="A", max_id=to_a2.id - 1) == [a2]
    # max_chars keeps a contiguous tail of the member's messages.
    tail = await repo.recent_messages(key, limit=10, member_id="A", max_chars=len("ann 2to ann 2"))
    assert tail == [a2, to_a2]
    # The shared history still has everything, in order.
    shared = await repo.recent_messages(key, limit=20)
    assert [m.content for m in shared] == [
        "ann 1",
        "to ann 1",
        "bob 1",
        "ab 1",
        "empty-named",
        "to bob 1",
        "ann 2",
        "to everyone",
        "to ann 2",
    ]
    assert everyone.member_id is None


async def test_member_id_defaults_and_is_returned_by_every_read(repo: ChatRepository) -> None:
    key = "telegram:5"
    asked = await append(repo, key, "user", "q", author_id="7", platform_message_id="1")
    answer = await append(repo, key, "assistant", "a", member_id="7")
    on_behalf = await append(repo, key, "user", "relayed", author_id="7", member_id="9")
    anonymous = await append(repo, key, "user", "no author")
    unowned = await append(repo, key, "assistant", "no asker")

    stored = [asked, answer, on_behalf, anonymous, unowned]
    assert [m.member_id for m in stored] == ["7", "7", "9", None, None]
    # Read back as written, by every read.
    assert await repo.recent_messages(key, limit=10) == stored
    assert await repo.answer_to(key, "1") == (asked, answer)
    assert [item.message for item in await repo.member_messages("telegram", "7")] == [asked, answer]


async def test_new_settings_round_trip_and_clear(repo: ChatRepository) -> None:
    key = "discord:9"
    assert await repo.get_settings(key) == ChannelSettings()

    changed = await repo.set_settings(
        key, system_prompt="Arr.", temperature=0.9, persona="pirate", context="member", listen="mention"
    )
    assert changed == ChannelSettings("Arr.", 0.9, "pirate", "member", "mention")
    assert await repo.get_settings(key) == changed
    # UNSET leaves each alone; None clears one.
    assert await repo.set_settings(key, persona=None, listen=UNSET) == ChannelSettings(
        "Arr.", 0.9, None, "member", "mention"
    )
    assert await repo.set_settings(key, context="shared", listen="all") == ChannelSettings(
        "Arr.", 0.9, None, "shared", "all"
    )
    assert await repo.set_settings(key, context=None, listen=None) == ChannelSettings("Arr.", 0.9)
    assert await repo.set_settings(key, system_prompt=None, temperature=None) == ChannelSettings()
    assert await repo.get_settings(key) == ChannelSettings()


async def test_context_and_listen_outside_their_literals_are_value_errors(
    repo: ChatRepository, database: Database
) -> None:
    key = "web:s"
    await repo.set_settings(key, context="member")
    for bad in ("everyone", "Member", ""):
        with pytest.raises(ValueError, match="context"):
            await repo.set_settings(key, context=bad, persona="x")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="listen"):
            await repo.set_settings(key, listen=bad, persona="x")  # type: ignore[arg-type]
    assert await repo.get_settings(key) == ChannelSettings(context="member")  # nothing was changed
    # The database refuses them too, whoever writes.
    for column in ("context", "listen"):
        with pytest.raises(StorageError):
            await database.run_write(
                lambda connection, column=column: connection.execute(
                    text(f"UPDATE channels SET {column} = 'everyone'")
                )
            )


async def test_move_channel_carries_the_new_settings_and_the_member_ids(repo: ChatRepository) -> None:
    await repo.set_settings("telegram:-1", persona="pirate", context="member", listen="mention")
    asked = await append(repo, "telegram:-1", "user", "q", author_id="7")
    answer = await append(repo, "telegram:-1", "assistant", "a", member_id="7")

    await repo.move_channel("telegram:-1", "telegram:-100")

    assert await repo.get_settings("telegram:-100") == ChannelSettings(
        persona="pirate", context="member", listen="mention"
    )
    assert await repo.get_settings("telegram:-1") == ChannelSettings()
    assert await repo.recent_messages("telegram:-100", limit=10, member_id="7") == [asked, answer]
    assert await repo.recent_messages("telegram:-1", limit=10, member_id="7") == []


async def test_move_channel_merge_keeps_the_new_channels_settings_and_fills_the_rest(
    repo: ChatRepository,
) -> None:
    await repo.set_settings("web:old", system_prompt="old", persona="old", context="member", listen="all")
    await repo.set_settings("web:new", temperature=0.3, context="shared")

    await repo.move_channel("web:old", "web:new")

    assert await repo.get_settings("web:new") == ChannelSettings("old", 0.3, "old", "shared", "all")
    assert await repo.get_settings("web:old") == ChannelSettings()
