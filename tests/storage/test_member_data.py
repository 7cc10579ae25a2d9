"""A member's data across channels (/forget, the export) and the retention purge."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any, TypeVar

import pytest
from sqlalchemy import Connection, insert, select

from bot.ports import Forgotten, MemberMessage, StoredMessage, TokenCharge, UsageEntry
from storage.db import Database
from storage.models import Channel, Message
from storage.repository import ChatRepository
from storage.usage import Usage

T = TypeVar("T")
DAY = date(2026, 12, 8)


async def append(repo: ChatRepository, key: str, role: Any, content: str, **kwargs: Any) -> StoredMessage:
    stored = await repo.append_message(key, role, content, **kwargs)
    assert stored is not None
    return stored


async def contents(repo: ChatRepository, key: str) -> list[str]:
    return [m.content for m in await repo.recent_messages(key, limit=100)]


async def test_forget_member_deletes_their_conversation_in_every_channel_of_the_platform(
    repo: ChatRepository,
) -> None:
    charge = TokenCharge("telegram:7", "Ann", 10, DAY)
    for key in ("telegram:1", "telegram:2"):
        await append(repo, key, "user", f"ann in {key}", author_id="7")
        await append(repo, key, "assistant", f"to ann in {key}", member_id="7", charge=charge)
        await append(repo, key, "user", f"bob in {key}", author_id="8")
        await append(repo, key, "assistant", f"to bob in {key}", member_id="8")
    await append(repo, "telegram:3", "user", "only bob here", author_id="8")
    # The same id on another platform is another person.
    await append(repo, "discord:1", "user", "discord 7", author_id="7")
    await append(
        repo,
        "discord:1",
        "assistant",
        "to discord 7",
        member_id="7",
        charge=TokenCharge("discord:7", "D", 4, DAY),
    )

    assert await repo.forget_member("telegram", "7") == Forgotten(4, ("telegram:1", "telegram:2"))

    assert await contents(repo, "telegram:1") == ["bob in telegram:1", "to bob in telegram:1"]
    assert await contents(repo, "telegram:2") == ["bob in telegram:2", "to bob in telegram:2"]
    assert await contents(repo, "telegram:3") == ["only bob here"]
    assert await contents(repo, "discord:1") == ["discord 7", "to discord 7"]
    # The name goes from the usage records; the counts stay (no quota reset by forgetting).
    assert await repo.top_usage("telegram:1", DAY, 5) == [UsageEntry("telegram:7", None, 10)]
    assert await repo.tokens_used("telegram:7", DAY) == 20
    assert await repo.top_usage("discord:1", DAY, 5) == [UsageEntry("discord:7", "D", 4)]

    assert await repo.forget_member("telegram", "7") == Forgotten(0, ())
    assert await repo.forget_member("web", "7") == Forgotten(0, ())


async def test_member_messages_are_the_members_export_by_channel_then_id(repo: ChatRepository) -> None:
    ann: dict[str, list[StoredMessage]] = {"telegram:2": [], "telegram:10": []}
    for i in range(3):
        for key in ("telegram:2", "telegram:10"):  # "telegram:10" sorts first as a string
            # What attachments became is part of the export.
            attached = f"[image: {i}.png]" if i == 1 else None
            ann[key].append(await append(repo, key, "user", f"{key} {i}", author_id="7", attached=attached))
            await append(repo, key, "user", "bob", author_id="8")
            ann[key].append(await append(repo, key, "assistant", f"to {key} {i}", member_id="7"))
    await append(repo, "discord:2", "user", "not telegram", author_id="7")

    exported = await repo.member_messages("telegram", "7")

    assert exported == [
        MemberMessage(key, message) for key in ("telegram:10", "telegram:2") for message in ann[key]
    ]
    assert [item.message.attached for item in exported if item.message.role == "user"][:3] == [
        None,
        "[image: 1.png]",
        None,
    ]
    assert await repo.member_messages("telegram", "404") == []
    assert [item.message.content for item in await repo.member_messages("discord", "7")] == ["not telegram"]


async def insert_messages(database: Database, key: str, created: list[datetime]) -> None:
    """Messages with the given creation times (the repository always stamps "now")."""
    platform, external_id = key.split(":", 1)

    def write(connection: Connection) -> None:
        channel_id = connection.scalar(
            select(Channel.id).where(Channel.platform == platform, Channel.external_id == external_id)
        )
        if channel_id is None:
            channel_id = connection.scalar(
                insert(Channel).values(platform=platform, external_id=external_id).returning(Channel.id)
            )
        rows = [
            {"channel_id": channel_id, "role": "user", "content": f"at {at.isoformat()}", "created_at": at}
            for at in created
        ]
        connection.execute(insert(Message), rows)

    await database.run_write(write)


def counting(database: Database) -> list[int]:
    """Counts `run_write` calls on `database` (one per write transaction) from now on."""
    calls: list[int] = []
    original = database.run_write

    async def run_write(work: Callable[[Connection], T]) -> T:
        calls.append(1)
        return await original(work)

    database.run_write = run_write  # type: ignore[method-assign]
    return calls


@pytest.mark.parametrize("batch_size", [1, 4, 500])
async def test_purge_deletes_exactly_the_old_messages_in_short_batches(
    repo: ChatRepository, database: Database, batch_size: int
) -> None:
    now = datetime.now(UTC)
    cutoff = now - timedelta(days=30)
    old = [cutoff - timedelta(days=400), *(cutoff - timedelta(minutes=i) for i in range(1, 12))]
    kept = [cutoff, cutoff + timedelta(seconds=1), now]
    await insert_messages(database, "web:a", old[::2] + kept[:2])
    await insert_messages(database, "web:b", old[1::2] + kept[2:])
    await append(repo, "web:a", "user", "just now")
    writes = counting(database)

    assert await repo.purge_older_than(cutoff, batch_size=batch_size) == len(old)

    assert len(writes) >= math.ceil(len(old) / batch_size)  # one transaction per batch at least
    left = await database.run_read(
        lambda connection: sorted(connection.scalars(select(Message.created_at)).all())
    )
    assert left[:3] == kept and len(left) == 4
    assert await contents(repo, "web:a") == [
        f"at {kept[0].isoformat()}",
        f"at {kept[1].isoformat()}",
        "just now",
    ]
    assert await repo.purge_older_than(cutoff, batch_size=batch_size) == 0


async def test_purge_takes_the_old_usage_days_too(repo: ChatRepository, database: Database) -> None:
    day = (datetime.now(UTC) - timedelta(days=10)).date()
    # 22:30 UTC on `day`, written as 01:30 on the day after in UTC+3: `day` is the cutoff's day.
    cutoff = datetime.combine(day, time(22, 30), UTC).astimezone(timezone(timedelta(hours=3)))
    for days_back in range(4):
        charge = TokenCharge("web:u", "U", 1 + days_back, day - timedelta(days=days_back))
        await append(repo, "web:a", "assistant", "a", charge=charge)

    await repo.purge_older_than(cutoff)

    days = await database.run_read(lambda connection: sorted(connection.scalars(select(Usage.day)).all()))
    assert days == [day]  # the cutoff's UTC day stays, the days before it go
    assert await repo.tokens_used("web:u", day) == 1
    assert await repo.message_count("web:a") == 4  # stored now, after the cutoff


async def test_purge_refuses_a_naive_cutoff_and_a_batch_below_one(repo: ChatRepository) -> None:
    await append(repo, "web:a", "user", "stay")
    with pytest.raises(ValueError):
        await repo.purge_older_than(datetime.now() + timedelta(days=1))
    with pytest.raises(ValueError):
        await repo.purge_older_than(datetime.now(UTC) + timedelta(days=1), batch_size=0)
    assert await repo.message_count("web:a") == 1


async def test_purge_ends_while_messages_keep_arriving(repo: ChatRepository, database: Database) -> None:
    """With a cutoff in the future every new message is "old" too: the purge takes only those
    that existed when it began, instead of chasing the new ones."""
    for i in range(6):
        await append(repo, "web:a", "user", f"m{i}")
    channel_id = await database.run_read(lambda connection: connection.scalar(select(Channel.id)))
    new_message = insert(Message).values(channel_id=channel_id, role="user", content="new")
    original = database.run_write
    arrived = 0

    async def run_write(work: Callable[[Connection], T]) -> T:
        nonlocal arrived
        result = await original(work)
        if arrived < 50:  # bounded, whatever the purge does
            arrived += 1
            await original(lambda connection: connection.execute(new_message))
        return result

    database.run_write = run_write  # type: ignore[method-assign]
    try:
        assert await repo.purge_older_than(datetime.now(UTC) + timedelta(days=1), batch_size=2) == 6
    finally:
        database.run_write = original  # type: ignore[method-assign]
    assert arrived < 50
    assert await repo.message_count("web:a") == arrived
