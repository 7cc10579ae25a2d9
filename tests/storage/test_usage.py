"""Token charges: recorded with the reply, once, atomically across processes; the quota and top list."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta

import pytest

from bot.ports import TokenCharge, UsageEntry
from storage.db import Database
from storage.repository import ChatRepository

from .conftest import Target

DAY = date(2026, 12, 8)


def cost(user: str, tokens: int, name: str | None = None, day: date = DAY) -> TokenCharge:
    return TokenCharge(user_key=f"telegram:{user}", user_name=name, tokens=tokens, day=day)


async def reply(
    repo: ChatRepository, key: str, charge: TokenCharge, platform_message_id: str | None = None
) -> bool:
    stored = await repo.append_message(
        key,
        "assistant",
        "answer",
        member_id=charge.user_key,
        platform_message_id=platform_message_id,
        charge=charge,
    )
    return stored is not None


async def test_charges_add_up_per_user_and_day_over_every_channel(repo: ChatRepository) -> None:
    await reply(repo, "telegram:1", cost("7", 10))
    await reply(repo, "telegram:1", cost("7", 5))
    await reply(repo, "telegram:2", cost("7", 100))
    await reply(repo, "telegram:2", cost("7", 1000, day=DAY + timedelta(days=1)))
    await reply(repo, "telegram:1", cost("8", 3))

    assert await repo.tokens_used("telegram:7", DAY) == 115
    assert await repo.tokens_used("telegram:7", DAY + timedelta(days=1)) == 1000
    assert await repo.tokens_used("telegram:7", DAY - timedelta(days=1)) == 0
    assert await repo.tokens_used("telegram:8", DAY) == 3
    assert await repo.tokens_used("discord:7", DAY) == 0
    # A charge is stored with its reply.
    assert await repo.message_count("telegram:1") == 3
    assert await repo.message_count("telegram:2") == 2


async def test_a_duplicate_delivery_is_not_charged(repo: ChatRepository) -> None:
    assert await reply(repo, "telegram:1", cost("7", 10), platform_message_id="m1")
    assert not await reply(repo, "telegram:1", cost("7", 10), platform_message_id="m1")
    assert not await reply(repo, "telegram:1", cost("7", 99), platform_message_id="m1")
    assert await repo.tokens_used("telegram:7", DAY) == 10


async def test_a_charge_below_one_token_is_refused_and_nothing_is_stored(repo: ChatRepository) -> None:
    for tokens in (0, -5):
        with pytest.raises(ValueError):
            await reply(repo, "telegram:1", cost("7", tokens))
    assert await repo.message_count("telegram:1") == 0
    assert await repo.tokens_used("telegram:7", DAY) == 0


async def test_top_usage_is_the_channels_users_most_first(repo: ChatRepository) -> None:
    await reply(repo, "telegram:1", cost("a", 5, "Ann"))
    await reply(repo, "telegram:1", cost("b", 20, "Bob"))
    await reply(repo, "telegram:1", cost("c", 20, "Cy"))  # ties Bob: by user key
    await reply(repo, "telegram:1", cost("a", 1, "Ann B."))  # the newest name given wins
    await reply(repo, "telegram:1", cost("a", 1))  # ... and no name keeps it
    await reply(repo, "telegram:1", cost("d", 2))
    await reply(repo, "telegram:2", cost("d", 500, "Dee"))  # another channel
    await reply(repo, "telegram:1", cost("d", 700, day=DAY - timedelta(days=1)))  # another day

    assert await repo.top_usage("telegram:1", DAY, 10) == [
        UsageEntry("telegram:b", "Bob", 20),
        UsageEntry("telegram:c", "Cy", 20),
        UsageEntry("telegram:a", "Ann B.", 7),
        UsageEntry("telegram:d", None, 2),
    ]
    assert await repo.top_usage("telegram:1", DAY, 2) == [
        UsageEntry("telegram:b", "Bob", 20),
        UsageEntry("telegram:c", "Cy", 20),
    ]
    assert await repo.top_usage("telegram:2", DAY, 10) == [UsageEntry("telegram:d", "Dee", 500)]
    assert await repo.top_usage("telegram:1", DAY + timedelta(days=1), 10) == []
    assert await repo.top_usage("telegram:404", DAY, 10) == []
    assert await repo.top_usage("telegram:1", DAY, 0) == []
    with pytest.raises(ValueError):
        await repo.top_usage("telegram:1", DAY, -1)
    with pytest.raises(ValueError):
        await repo.top_usage("no-colon", DAY, 1)


async def test_concurrent_charges_from_two_clients_give_the_exact_total(
    target: Target, database: Database
) -> None:
    """Two "processes" charge one user in one channel at once: no charge lost, none counted twice."""
    other = target.new_database()
    await other.start()
    try:
        repos = [ChatRepository(database), ChatRepository(other)]
        results = await asyncio.gather(
            *(reply(repos[i % 2], "telegram:1", cost("7", i + 1, f"name {i}")) for i in range(100)),
            # One delivery seen by both clients ten times: stored, and charged, once.
            *(
                reply(repos[i % 2], "telegram:1", cost("7", 1000), platform_message_id="dup")
                for i in range(10)
            ),
        )
        assert sum(results) == 101
        assert await repos[0].tokens_used("telegram:7", DAY) == sum(range(1, 101)) + 1000
        assert await repos[1].message_count("telegram:1") == 101
        (entry,) = await repos[1].top_usage("telegram:1", DAY, 5)
        assert entry.tokens == sum(range(1, 101)) + 1000
    finally:
        await other.stop()


async def test_moving_a_channel_merges_its_usage_into_the_new_one(repo: ChatRepository) -> None:
    await reply(repo, "telegram:-1", cost("7", 10, "Ann"))
    await reply(repo, "telegram:-1", cost("8", 4, "Bob"))
    await reply(repo, "telegram:-1", cost("7", 2, day=DAY - timedelta(days=1)))
    await reply(repo, "telegram:-100", cost("7", 5, "Ann N."))

    await repo.move_channel("telegram:-1", "telegram:-100")

    assert await repo.top_usage("telegram:-100", DAY, 10) == [
        UsageEntry("telegram:7", "Ann N.", 15),  # the new channel's name is the newer one
        UsageEntry("telegram:8", "Bob", 4),
    ]
    assert await repo.top_usage("telegram:-100", DAY - timedelta(days=1), 10) == [
        UsageEntry("telegram:7", None, 2)
    ]
    assert await repo.top_usage("telegram:-1", DAY, 10) == []
    assert await repo.tokens_used("telegram:7", DAY) == 15  # the quota is unchanged by the move
