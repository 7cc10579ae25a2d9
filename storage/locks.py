"""Per-channel locks that order one channel's replies across bot processes.

The engine answers a channel's messages one at a time, in the order they reached this process
(an in-process FIFO). With several processes on one PostgreSQL database, that is not enough: two
processes could store and answer two messages of one channel at once, and each reply would miss
the other message. `ChannelLocks.hold(channel_key)` is held around "store the message, read the
history, generate, store the reply", so the stored order is the order in which processes got the
lock, and every reply sees the whole history before it.

- SQLite: `LocalChannelLocks` does nothing. One process owns a SQLite file (that is the supported
  set-up), and the engine's in-process FIFO already orders each channel.
- PostgreSQL: `PostgresChannelLocks` takes `pg_advisory_xact_lock(key)` in a transaction held open
  on a connection of a dedicated, bounded pool (`Database.lock_engine`), and ends the transaction
  to release it. Why the transaction-level lock rather than `pg_advisory_lock` (session level): the
  transaction's end releases it whatever happens: a cancelled task, a failed unlock statement, or
  a connection handed back to the pool mid-way (the pool rolls back on return). A session lock
  that is not explicitly unlocked stays with the pooled connection and blocks the channel for
  good. It also works behind PgBouncer in transaction pooling mode, where session locks do not.
  The open transaction holds no snapshot between statements (READ COMMITTED) and no transaction
  id (it writes nothing), so it does not hold back VACUUM.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.errors import StorageError
from bot.ports import ChannelLocks, LocalChannelLocks
from storage.db import Database

_log = logging.getLogger(__name__)

# Keeps channel keys apart from the other advisory locks of the application (migrations, the
# Telegram poller): a different prefix hashes to a different key.
_CHANNEL_NAMESPACE = b"chinwag:channel:"
_CLAIM_NAMESPACE = b"chinwag:claim:"


def advisory_key(namespace: bytes, name: str) -> int:
    """A stable signed 64-bit key for `pg_advisory_*lock(bigint)`: the same in every process and
    every Python version (unlike `hash()`). A collision only makes two channels wait for each other."""
    digest = hashlib.blake2b(namespace + name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def channel_lock_key(channel_key: str) -> int:
    """The advisory lock key of `channel_key`."""
    return advisory_key(_CHANNEL_NAMESPACE, channel_key)


class PostgresChannelLocks:
    """`pg_advisory_xact_lock` on a connection of `engine`, held for the block.

    At most `max_held` channels hold (or wait for) a lock at once in this process: one connection
    each, for as long as the reply is generated. More wait here, in order, for a free connection,
    rather than time out in the pool. `wait_timeout_s` bounds the wait for the lock itself on the
    server (`lock_timeout`), e.g. behind a process that hangs while holding it.
    """

    def __init__(self, engine: AsyncEngine, *, max_held: int, wait_timeout_s: float) -> None:
        if max_held < 1:
            raise ValueError(f"max_held must be >= 1, got {max_held}")
        self._engine = engine
        self._slots = asyncio.Semaphore(max_held)
        self._lock_timeout_ms = max(1, round(wait_timeout_s * 1000))

    @contextlib.asynccontextmanager
    async def hold(self, channel_key: str) -> AsyncIterator[None]:
        """See `ChannelLocks.hold`."""
        async with self._slots:
            connection = await self._acquire(channel_key)
            try:
                yield
            finally:
                # Closing ends the transaction, which releases the lock. Shielded: a cancelled task
                # must still hand the connection back (SQLAlchemy invalidates a connection whose
                # rollback fails, and the server then drops the lock with the session).
                await asyncio.shield(_close_quietly(connection))

    async def _acquire(self, channel_key: str) -> AsyncConnection:
        connection: AsyncConnection | None = None
        try:
            connection = await self._engine.connect()
            await connection.begin()
            # One round trip: set_config(..., true) is SET LOCAL, for this transaction only.
            await connection.execute(
                text("SELECT set_config('lock_timeout', :timeout, true), pg_advisory_xact_lock(:key)"),
                {"timeout": f"{self._lock_timeout_ms}ms", "key": channel_lock_key(channel_key)},
            )
        except BaseException as exc:
            if connection is not None:
                await asyncio.shield(_close_quietly(connection))
            if isinstance(exc, Exception) and not isinstance(exc, StorageError):
                raise StorageError(f"cannot lock channel {channel_key}: {_cause_name(exc)}") from exc
            raise
        return connection


def _cause_name(exc: BaseException) -> str:
    """The driver's error class (e.g. asyncpg's LockNotAvailableError for a lock_timeout), which
    says more than SQLAlchemy's wrapper; never the message, which could quote the URL."""
    cause: BaseException = exc
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        cause = exc.orig
        # asyncpg errors arrive re-wrapped in an adapter class; the original names the problem.
        if cause.__cause__ is not None:
            cause = cause.__cause__
    return type(cause).__name__


async def _close_quietly(connection: AsyncConnection) -> None:
    try:
        await connection.close()
    except Exception as exc:  # the connection is gone: so is its lock
        _log.warning("closing a channel lock connection failed: %s", type(exc).__name__)


def channel_locks_for(database: Database) -> ChannelLocks:
    """The locks that fit `database`'s dialect (after `database.start()`)."""
    engine = database.lock_engine
    if engine is None:
        return LocalChannelLocks()
    return PostgresChannelLocks(
        engine,
        max_held=database.options.lock_connections,
        wait_timeout_s=database.options.lock_wait_timeout_s,
    )


class Claim:
    """An exclusive role of this process among all processes on the database (e.g. "the one
    that polls Telegram for this bot"), held until `release()` or the process ends.

    On PostgreSQL it is a session-level advisory lock on a connection of its own: session level
    is right here, because the role lasts as long as the process (its connection closing, for
    whatever reason, is what must free it). On SQLite there is one process per file: nothing to hold.
    """

    def __init__(self, connection: AsyncConnection | None = None) -> None:
        self._connection = connection

    async def release(self) -> None:
        """Give the role up (closing the connection ends its session and lock). Idempotent."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await asyncio.shield(_close_quietly(connection))


async def claim_exclusive(database: Database, name: str) -> Claim | None:
    """Take the role `name` (hashed; it may be a secret such as a bot token) without waiting.

    None when another process holds it. Raises `StorageError` when the database fails.
    """
    engine = database.claim_engine
    if engine is None:
        return Claim()
    connection: AsyncConnection | None = None
    try:
        connection = await engine.connect()
        # Autocommit: a session lock needs no open transaction, and holding one for hours would
        # show the process as "idle in transaction".
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        got = await connection.scalar(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": advisory_key(_CLAIM_NAMESPACE, name)}
        )
    except BaseException as exc:
        if connection is not None:
            await asyncio.shield(_close_quietly(connection))
        if isinstance(exc, Exception) and not isinstance(exc, StorageError):
            raise StorageError(f"cannot claim an exclusive role: {_cause_name(exc)}") from exc
        raise
    if not got:
        await _close_quietly(connection)
        return None
    return Claim(connection)
