"""One user's daily quota kept by two engines on one database, on SQLite and PostgreSQL.

SQLite: two engines on one `Database` (one process, as SQLite is run). PostgreSQL: two `Database`
clients of one fresh schema, as two processes have (channel locks are advisory locks there). Both
engines answer the same user at once in the same channels; every reply's cost is charged in the
transaction that stores it, so the user's total is the exact sum of the answered replies' costs,
and once it reaches the limit neither engine asks the model again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from bot.app import build_engine
from bot.backends.echo import EchoBackend, echo_tokens
from bot.config import ChatConfig, ModelConfig, QuotaConfig, RateLimitConfig
from bot.engine import ChatEngine
from bot.events import ChatEvent
from bot.reply import ReplyStatus
from storage.db import Database
from storage.repository import ChatRepository
from tests.storage.conftest import Target

LIMIT = 100
PER_ENGINE = 20
USER = "7"
# The user's private chat and two groups: each engine answers a channel's messages in order, and
# different channels at once.
CHANNELS = (USER, "-1001", "-1002")


def engine_on(database: Database) -> ChatEngine:
    chat = ChatConfig(
        rate_limit=RateLimitConfig(messages=1000, per_seconds=60), quota=QuotaConfig(tokens_per_day=LIMIT)
    )
    return build_engine(database, EchoBackend(), ModelConfig(backend="echo"), chat)


@pytest.fixture
async def two_engines(target: Target, database: Database) -> AsyncIterator[tuple[ChatEngine, ChatEngine]]:
    """Two engines: on one SQLite `Database`, or on two PostgreSQL clients (two "processes")."""
    other = database
    if target.dialect == "postgresql":
        other = target.new_database()
        await other.start()
    engines = (engine_on(database), engine_on(other))
    try:
        yield engines
    finally:
        for engine in engines:
            await engine.close(grace_s=1.0)
        if other is not database:
            await other.stop()


def message(engine_index: int, n: int) -> ChatEvent:
    channel = CHANNELS[n % len(CHANNELS)]
    words = " ".join(["word"] * (1 + n % 4))
    return ChatEvent(
        "telegram", channel, USER, "Ann", f"{words} e{engine_index}m{n}", is_direct=channel == USER
    )


async def test_two_engines_charge_one_users_quota_exactly_and_both_refuse_once_it_is_spent(
    two_engines: tuple[ChatEngine, ChatEngine], database: Database
) -> None:
    events = [
        (engine, message(index, n)) for n in range(PER_ENGINE) for index, engine in enumerate(two_engines)
    ]
    replies = [engine.handle(event) for engine, event in events]
    async with asyncio.timeout(60):
        texts = await asyncio.gather(*(reply.text() for reply in replies))

    answered: dict[str, int] = {}  # channel key -> tokens of its answered replies
    questions: dict[str, list[str]] = {}
    for (_, event), reply, text in zip(events, replies, texts, strict=True):
        if reply.status is ReplyStatus.ANSWERED:
            assert text.endswith(f": {event.text}")
            answered[event.channel_key] = answered.get(event.channel_key, 0) + len(echo_tokens(text))
            questions.setdefault(event.channel_key, []).append(event.text)
        else:
            assert reply.status is ReplyStatus.NOTICE and "quota" in text, text
    # The demand (about 180 tokens) is far over the limit: some were refused, most answered.
    assert 0 < sum(len(asked) for asked in questions.values()) < len(events)

    repository = ChatRepository(database)
    today = datetime.now(UTC).date()
    total = await repository.tokens_used(f"telegram:{USER}", today)
    assert total == sum(answered.values()) >= LIMIT
    for channel_key, tokens in answered.items():
        (entry,) = await repository.top_usage(channel_key, today, 5)
        assert (entry.user_key, entry.tokens) == (f"telegram:{USER}", tokens)
        stored = await repository.recent_messages(channel_key, limit=1000)
        assert sorted(m.content for m in stored if m.role == "user") == sorted(questions[channel_key])
        assert len(stored) == 2 * len(questions[channel_key])  # a refused question is not stored

    for index, engine in enumerate(two_engines):
        refused = engine.handle(message(index, 99))
        assert "quota" in await refused.text() and refused.status is ReplyStatus.NOTICE
    assert await repository.tokens_used(f"telegram:{USER}", today) == total
