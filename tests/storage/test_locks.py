"""Per-channel advisory locks across database clients ("processes"), and concurrent migrations.

Each `Database` built by `target.new_database()` has its own engines and pools: to PostgreSQL it is
another client, exactly like another bot process.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from bot.backends.base import PreparedPrompt
from bot.backends.echo import EchoBackend
from bot.config import ChatConfig, ModelConfig, RateLimitConfig
from bot.engine import ChatEngine
from bot.errors import StorageError
from bot.events import ChatEvent
from bot.ports import LocalChannelLocks, SamplingSettings
from storage.db import Database, DatabaseOptions
from storage.locks import PostgresChannelLocks, channel_lock_key, channel_locks_for, claim_exclusive
from storage.repository import ChatRepository
from tests.fakes.waiting import wait_until
from tests.storage.conftest import Target

pytestmark = pytest.mark.timeout(60)

only_postgres = pytest.mark.parametrize("target", ["postgresql"], indirect=True)

# Deliberately a pause: how long a waiter that PostgreSQL cannot show us (one waiting inside its
# client for a free connection) gets to take a lock it must not; long enough for a wrongly granted
# acquisition to show, short enough to keep the file fast.
BLOCKED_FOR_S = 0.3
PROMPTLY_S = 5.0


@pytest.fixture
async def clients(target: Target) -> AsyncIterator[list[Database]]:
    """Two started clients of one PostgreSQL schema."""
    async with AsyncExitStack() as stack:
        databases = []
        for _ in range(2):
            database = target.new_database()
            await database.start()
            stack.push_async_callback(database.stop)
            databases.append(database)
        yield databases


def locks_of(database: Database, *, max_held: int = 4, wait_timeout_s: float = 30.0) -> PostgresChannelLocks:
    assert database.lock_engine is not None
    return PostgresChannelLocks(database.lock_engine, max_held=max_held, wait_timeout_s=wait_timeout_s)


async def hold_until(
    locks: PostgresChannelLocks, key: str, held: asyncio.Event, release: asyncio.Event
) -> None:
    async with locks.hold(key):
        held.set()
        await release.wait()


async def wait_until_queued(target: Target, channel_key: str) -> None:
    """Wait until a session waits on the server for `channel_key`'s lock: PostgreSQL lists it in
    pg_locks, not granted (a bigint advisory key shows as its high and low 32 bits, objsubid 1)."""
    unsigned = channel_lock_key(channel_key) % 2**64
    dsn = make_url(target.url).set(drivername="postgresql").render_as_string(hide_password=False)
    observer = await asyncpg.connect(dsn, timeout=PROMPTLY_S)

    async def queued() -> bool:
        waiting = await observer.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 1",
            unsigned >> 32,
            unsigned & 0xFFFFFFFF,
        )
        return bool(waiting)

    try:
        await wait_until(queued, PROMPTLY_S, what=f"a session waits on the server for {channel_key}")
    finally:
        await observer.close()


def test_keys_are_stable_signed_64_bit_and_distinct() -> None:
    key = channel_lock_key("discord:42")
    assert key == channel_lock_key("discord:42")
    assert -(2**63) <= key < 2**63
    assert key != channel_lock_key("discord:43")


@only_postgres
async def test_a_channel_lock_excludes_another_client_until_released(
    target: Target, clients: list[Database]
) -> None:
    first, second = locks_of(clients[0]), locks_of(clients[1])
    held, release = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(hold_until(first, "web:room", held, release))
    await asyncio.wait_for(held.wait(), PROMPTLY_S)

    got_it = asyncio.Event()
    waiter = asyncio.create_task(hold_until(second, "web:room", got_it, asyncio.Event()))
    await wait_until_queued(target, "web:room")
    assert not got_it.is_set(), "the second client got a lock the first one holds"

    release.set()
    await asyncio.wait_for(holder, PROMPTLY_S)
    await asyncio.wait_for(got_it.wait(), PROMPTLY_S)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)


@only_postgres
async def test_other_channels_do_not_wait(clients: list[Database]) -> None:
    first, second = locks_of(clients[0]), locks_of(clients[1])
    held, release = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(hold_until(first, "web:a", held, release))
    await asyncio.wait_for(held.wait(), PROMPTLY_S)
    async with asyncio.timeout(PROMPTLY_S), second.hold("web:b"):
        pass
    release.set()
    await holder


@only_postgres
async def test_the_lock_is_released_when_the_block_raises(clients: list[Database]) -> None:
    first, second = locks_of(clients[0]), locks_of(clients[1])
    with pytest.raises(RuntimeError, match="boom"):
        async with first.hold("web:room"):
            raise RuntimeError("boom")
    async with asyncio.timeout(PROMPTLY_S), second.hold("web:room"):
        pass


@only_postgres
async def test_the_lock_is_released_when_the_holder_is_cancelled(
    target: Target, clients: list[Database]
) -> None:
    first, second = locks_of(clients[0]), locks_of(clients[1])
    held = asyncio.Event()
    holder = asyncio.create_task(hold_until(first, "web:room", held, asyncio.Event()))
    await asyncio.wait_for(held.wait(), PROMPTLY_S)
    holder.cancel()
    await asyncio.gather(holder, return_exceptions=True)
    assert holder.cancelled()
    async with asyncio.timeout(PROMPTLY_S), second.hold("web:room"):
        pass
    # A waiter cancelled while queued on the server leaves nothing behind either.
    held_again, release = asyncio.Event(), asyncio.Event()
    again = asyncio.create_task(hold_until(first, "web:room", held_again, release))
    await asyncio.wait_for(held_again.wait(), PROMPTLY_S)
    queued = asyncio.create_task(hold_until(second, "web:room", asyncio.Event(), asyncio.Event()))
    await wait_until_queued(target, "web:room")
    queued.cancel()
    await asyncio.gather(queued, return_exceptions=True)
    release.set()
    await again
    async with asyncio.timeout(PROMPTLY_S), second.hold("web:room"):
        pass


@only_postgres
async def test_waiting_too_long_is_a_storage_error(clients: list[Database]) -> None:
    first, impatient = locks_of(clients[0]), locks_of(clients[1], wait_timeout_s=0.2)
    held, release = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(hold_until(first, "web:room", held, release))
    await asyncio.wait_for(held.wait(), PROMPTLY_S)
    with pytest.raises(StorageError, match="cannot lock channel web:room: LockNotAvailableError"):
        async with impatient.hold("web:room"):
            pass
    release.set()
    await holder


@only_postgres
async def test_at_most_max_held_locks_per_client(clients: list[Database]) -> None:
    one_slot = locks_of(clients[0], max_held=1)
    held, release = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(hold_until(one_slot, "web:a", held, release))
    await asyncio.wait_for(held.wait(), PROMPTLY_S)
    other = asyncio.Event()
    waiter = asyncio.create_task(hold_until(one_slot, "web:b", other, asyncio.Event()))
    # Deliberate pause (see BLOCKED_FOR_S): this waiter queues inside the client, where neither
    # PostgreSQL nor an event shows it; a second connection would take the lock meanwhile.
    await asyncio.sleep(BLOCKED_FOR_S)
    assert not other.is_set(), "a second connection was used although max_held is 1"
    release.set()
    await holder
    await asyncio.wait_for(other.wait(), PROMPTLY_S)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)


async def test_the_dialect_picks_the_locks(target: Target) -> None:
    database = target.new_database()
    await database.start()
    try:
        locks = channel_locks_for(database)
        expected = LocalChannelLocks if target.dialect == "sqlite" else PostgresChannelLocks
        assert isinstance(locks, expected)
    finally:
        await database.stop()


@only_postgres
async def test_several_clients_migrating_a_fresh_schema_at_once_all_succeed(target: Target) -> None:
    databases = [target.new_database() for _ in range(4)]
    try:
        results = await asyncio.gather(*(database.start() for database in databases), return_exceptions=True)
        assert results == [None] * 4
        repository = ChatRepository(databases[-1])
        assert await repository.append_message("web:x", "user", "hi") is not None
    finally:
        for database in databases:
            await database.stop()


class SlowEcho(EchoBackend):
    """The echo backend with a pause per chunk: two processes' generations then overlap."""

    async def generate(self, prompt: PreparedPrompt, settings: SamplingSettings) -> AsyncGenerator[str, None]:
        async for chunk in super().generate(prompt, settings):
            await asyncio.sleep(0.002)
            yield chunk


@only_postgres
async def test_two_engines_on_one_database_keep_each_channel_in_order(target: Target) -> None:
    """Two engines (two "processes"), their messages for the same channels interleaved and sent
    concurrently, some delivered to both: every reply saw the whole history before it."""
    async with AsyncExitStack() as stack:
        engines = []
        for _ in range(2):
            database = Database(target.url, connect_args=target.connect_args, options=DatabaseOptions())
            await database.start()
            stack.push_async_callback(database.stop)
            engine = ChatEngine(
                ChatRepository(database),
                SlowEcho(),
                ModelConfig(backend="echo"),
                ChatConfig(rate_limit=RateLimitConfig(messages=10_000, per_seconds=60)),
                locks=channel_locks_for(database),
            )
            stack.push_async_callback(engine.close)
            engines.append(engine)

        channels, per_channel = 3, 8
        replies = []
        for number in range(per_channel):
            for channel in range(channels):
                event = ChatEvent(
                    platform="web",
                    channel=f"c{channel}",
                    author_id="u",
                    author_name="U",
                    text=f"m{number}",
                    is_admin=False,
                    is_direct=True,
                    message_id=f"c{channel}-{number}",
                )
                replies.append(engines[number % 2].handle(event))
                if number % 3 == 0:  # the same platform message delivered to the other process too
                    replies.append(engines[(number + 1) % 2].handle(event))
        async with asyncio.timeout(30):
            texts = [await reply.text() for reply in replies]

        assert sum(1 for reply in replies if reply.status.value == "duplicate") == channels * 3
        repository = ChatRepository(database)
        for channel in range(channels):
            history = await repository.recent_messages(f"web:c{channel}", limit=1000)
            assert [m.role for m in history] == ["user", "assistant"] * per_channel
            for position, (question, answer) in enumerate(zip(history[::2], history[1::2], strict=True)):
                assert answer.content == f"echo[{2 * position}]: {question.content}"
            assert sorted(m.platform_message_id for m in history[::2]) == sorted(
                f"c{channel}-{n}" for n in range(per_channel)
            )
        assert all(re.fullmatch(r"(echo\[\d+\]: m\d+)?", text) for text in texts)


@only_postgres
async def test_an_exclusive_claim_is_held_by_one_client_until_released(clients: list[Database]) -> None:
    first = await claim_exclusive(clients[0], "telegram-poller:secret-token")
    assert first is not None
    assert await claim_exclusive(clients[1], "telegram-poller:secret-token") is None
    other = await claim_exclusive(clients[1], "telegram-poller:another-token")
    assert other is not None
    await first.release()
    await first.release()  # idempotent
    again = await claim_exclusive(clients[1], "telegram-poller:secret-token")
    assert again is not None
    await again.release()
    await other.release()


@only_postgres
async def test_a_second_process_refuses_to_poll_the_same_telegram_bot(clients: list[Database]) -> None:
    from pydantic import SecretStr

    from adapters.telegram import TelegramAdapter
    from bot.config import TelegramConfig
    from bot.errors import ChinwagError
    from storage.inbox import UpdateInbox

    token = "123456:TEST-telegram-token"
    held = await claim_exclusive(clients[0], f"telegram-poller:{token}")  # the first process polls
    assert held is not None
    engine = ChatEngine(ChatRepository(clients[1]), EchoBackend(), ModelConfig(backend="echo"), ChatConfig())
    # An address where nothing listens: the refusal must come before any call to Telegram.
    config = TelegramConfig(token=SecretStr(token), base_url="http://127.0.0.1:9/bot")
    inbox = UpdateInbox(clients[1], "telegram")
    adapter = TelegramAdapter(config, engine, inbox, lambda name: claim_exclusive(clients[1], name))
    try:
        with pytest.raises(ChinwagError, match="already polls this bot") as raised:
            await adapter.start()
        assert token not in str(raised.value)
    finally:
        await adapter.stop()
        await engine.close()
        await held.release()


@pytest.mark.parametrize("target", ["sqlite"], indirect=True)
async def test_on_sqlite_a_claim_is_always_granted(target: Target) -> None:
    database = target.new_database()
    await database.start()
    try:
        claim = await claim_exclusive(database, "telegram-poller:x")
        assert claim is not None
        await claim.release()
    finally:
        await database.stop()
