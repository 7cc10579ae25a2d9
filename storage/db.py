"""The database: engines, short units of work and schema migrations (SQLite or PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from bot.errors import StorageError
from storage.sqlite_worker import SqliteWorker

if TYPE_CHECKING:
    import aiosqlite

_log = logging.getLogger(__name__)

T = TypeVar("T")

_MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Any fixed 64-bit number works; every Chinwag process must use the same one ("Chinwag" in ASCII).
_MIGRATION_LOCK_KEY = 0x43_68_69_6E_77_61_67

# Execution option that marks the write engine; the SQLite "begin" hook reads it.
_BEGIN_IMMEDIATE = "chinwag_begin_immediate"

_SQLITE_BUSY_TIMEOUT_MS = 5000
# asyncpg waits 60 s by default for an unreachable host; a bot should report it sooner.
_PG_CONNECT_TIMEOUT_S = 10
_MAX_ERROR_TEXT = 300


@dataclass(frozen=True, slots=True)
class DatabaseOptions:
    """Connection pool sizes (the `storage:` config keys of the same names).

    Every process opens at most `pool_size + max_overflow` connections for its short units of
    work and, on PostgreSQL, `lock_connections` more for the per-channel locks (one per channel
    being answered, held while its reply is generated). The sum over all processes must stay
    under the server's `max_connections` (100 by default).
    """

    pool_size: int = 5
    max_overflow: int = 10
    pool_timeout_s: float = 30.0
    lock_connections: int = 20
    lock_wait_timeout_s: float = 300.0
    # SQLite's `synchronous` pragma: "full" (a commit survives power loss) or "normal" (in WAL
    # mode: survives the bot crashing, not the machine losing power; commits skip the fsync).
    sqlite_synchronous: Literal["full", "normal"] = "full"


class Database:
    """Owns the async engine. SQLite (`sqlite+aiosqlite://`) by default, PostgreSQL (`postgresql+asyncpg://`).

    `start()` connects and migrates the schema to the newest revision; `stop()` releases every
    connection. Data is read and written in short units of work: `run_read(work)` for reads,
    `run_write(work)` for anything that writes (it commits on success, rolls back on error), where
    `work(connection)` is synchronous SQL Core on a plain `Connection`. Database failures inside
    either surface as `StorageError` with a one-line message free of passwords.

    On SQLite the work runs on one dedicated thread with the plain `sqlite3` driver: one thread
    hand-off per unit of work instead of one per statement, fetch, begin and commit (aiosqlite),
    several times cheaper. On PostgreSQL it runs through `AsyncConnection.run_sync` on the async
    engine. The async engine also runs the migrations at start, `ping()`, and (PostgreSQL) the
    locks and claims of storage/locks.py.
    """

    def __init__(
        self,
        url: str,
        *,
        echo_sql: bool = False,
        connect_args: dict[str, Any] | None = None,
        options: DatabaseOptions | None = None,
    ) -> None:
        """Check `url` (raises `StorageError` if unusable); connects nothing yet.

        `sqlite://` and `postgresql://` (or `postgres://`) are accepted and get the async driver.
        `connect_args` go to the driver (e.g. asyncpg `server_settings`).
        """
        self._url = _async_url(url)
        self._echo_sql = echo_sql
        self._connect_args = dict(connect_args or {})
        self.options = options or DatabaseOptions()
        self._engine: AsyncEngine | None = None
        self._lock_engine: AsyncEngine | None = None
        self._claim_engine: AsyncEngine | None = None
        self._write_engine: AsyncEngine | None = None
        # SQLite only: the one thread (and its synchronous engine) that runs `run_read`/`run_write`.
        self._sqlite_worker: SqliteWorker | None = None

    @property
    def dialect_name(self) -> str:
        """`"sqlite"` or `"postgresql"`."""
        return self._url.get_backend_name()

    @property
    def claim_engine(self) -> AsyncEngine | None:
        """PostgreSQL: an engine without a pool, for connections that live as long as a claim."""
        return self._claim_engine

    @property
    def lock_engine(self) -> AsyncEngine | None:
        """PostgreSQL: the pool of `options.lock_connections` connections reserved for advisory
        locks held across a model call (kept apart so that they can never starve the short
        units of work). None on SQLite and before `start()`."""
        return self._lock_engine

    async def start(self) -> None:
        """Connect and apply the migrations up to head.

        Safe when several processes start at once on one database (SQLite: the upgrade runs in a
        BEGIN IMMEDIATE transaction; PostgreSQL: under an advisory lock). Raises `StorageError` if
        the database cannot be reached or migrated; nothing stays open then.
        """
        if self._engine is not None:
            raise RuntimeError("Database.start() called twice")
        started = False
        try:
            await self._start()
            started = True
        except Exception as exc:
            # Whatever stops the start (driver, network, file system, a bad URL option, an unknown
            # schema revision) means the database cannot be used; the cause stays chained for the log.
            location = _sqlite_location_problem(self._url) if self.dialect_name == "sqlite" else None
            if location is not None:
                raise StorageError(location) from exc
            raise StorageError(
                f"cannot open the database {self._url.render_as_string()}: {self._describe(exc)}"
            ) from exc
        finally:
            if not started:
                await self.stop()

    async def _start(self) -> None:
        connect_args = dict(self._connect_args)
        if self.dialect_name == "sqlite":
            await asyncio.to_thread(_create_parent_dir, self._url)
        else:
            connect_args.setdefault("timeout", _PG_CONNECT_TIMEOUT_S)
        options = self.options
        self._engine = create_async_engine(
            self._url,
            echo=self._echo_sql,
            connect_args=connect_args,
            # A restarted PostgreSQL server would otherwise cost one failed request per pooled connection.
            pool_pre_ping=self.dialect_name == "postgresql",
            pool_size=options.pool_size,
            max_overflow=options.max_overflow,
            pool_timeout=options.pool_timeout_s,
        )
        if self.dialect_name == "postgresql":
            # Exactly `lock_connections`, no overflow: the lock holders queue in front of it
            # (storage/locks.py), so it never waits for its pool timeout.
            self._lock_engine = create_async_engine(
                self._url,
                connect_args=connect_args,
                pool_pre_ping=True,
                pool_size=options.lock_connections,
                max_overflow=0,
                pool_timeout=options.pool_timeout_s,
            )
            # Connections held for a process's lifetime (storage.locks.claim_exclusive): opened
            # and closed on demand, never taken from the pools above.
            self._claim_engine = create_async_engine(self._url, connect_args=connect_args, poolclass=NullPool)
        if self.dialect_name == "sqlite":
            event.listen(self._engine.sync_engine, "connect", self._on_sqlite_connect)
            event.listen(self._engine.sync_engine, "begin", _on_sqlite_begin)
            await _enable_wal(self._engine)
        # Shares the pool and the hooks; only the begin statement differs.
        self._write_engine = self._engine.execution_options(**{_BEGIN_IMMEDIATE: True})

        async with self._write_engine.begin() as connection:
            if self.dialect_name == "postgresql":
                # Released at commit: other processes starting now wait, then find the schema at head.
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
            await connection.run_sync(_upgrade_to_head)

        if self.dialect_name == "sqlite":
            self._start_sqlite_thread(connect_args)

    def _start_sqlite_thread(self, connect_args: dict[str, Any]) -> None:
        # Same file, same pragmas and BEGIN hooks as the async engine; its connections are made
        # and used by the one worker thread only.
        engine = create_engine(
            self._url.set(drivername="sqlite+pysqlite"), echo=self._echo_sql, connect_args=connect_args
        )
        event.listen(engine, "connect", self._on_sqlite_connect)
        event.listen(engine, "begin", _on_sqlite_begin)
        self._sqlite_worker = SqliteWorker(engine, engine.execution_options(**{_BEGIN_IMMEDIATE: True}))
        self._sqlite_worker.start()

    async def stop(self) -> None:
        """Close every pooled connection. Safe to call twice or after a failed `start()`."""
        engines = [e for e in (self._claim_engine, self._lock_engine, self._engine) if e is not None]
        worker = self._sqlite_worker
        self._engine = self._write_engine = self._lock_engine = self._claim_engine = None
        self._sqlite_worker = None
        if worker is not None:
            await worker.stop()
        for engine in engines:
            await engine.dispose()

    async def ping(self, timeout_s: float = 2.0) -> None:
        """Run `SELECT 1`; raises `StorageError` when the database does not answer within
        `timeout_s` (the readiness probe)."""
        if self._engine is None:
            raise StorageError("the database is not started")
        try:
            async with (
                asyncio.timeout(timeout_s),
                self._storage_errors(),
                self._engine.connect() as connection,
            ):
                await connection.execute(text("SELECT 1"))
        except TimeoutError:
            raise StorageError(f"the database did not answer within {timeout_s:g} s") from None

    def _on_sqlite_connect(self, dbapi_connection: Any, _connection_record: Any) -> None:
        _configure_sqlite_connection(dbapi_connection, self.options.sqlite_synchronous)

    async def run_read(self, work: Callable[[Connection], T]) -> T:
        """`work(connection)` in a read transaction (rolled back at the end); returns its result.

        `work` runs on another thread (SQLite) or inside a greenlet (PostgreSQL): it must only use
        the connection and its own arguments, never the event loop."""
        if self._sqlite_worker is not None:
            async with self._storage_errors():
                return await self._sqlite_worker.run(work, write=False)
        if self._engine is None:
            raise RuntimeError("Database.start() has not been called")
        async with self._storage_errors(), self._engine.connect() as connection:
            return await connection.run_sync(work)

    async def run_write(self, work: Callable[[Connection], T]) -> T:
        """`work(connection)` in a write transaction, committed when it returns, rolled back when
        it raises; returns its result. The same rules for `work` as in `run_read`.

        On SQLite the transaction starts with BEGIN IMMEDIATE, so a read followed by a write cannot
        fail with SQLITE_BUSY halfway. Keep it short: it holds the database's write lock."""
        if self._sqlite_worker is not None:
            # No in-process write lock: the worker's single thread already orders these, and
            # writes waiting together are committed together (storage/sqlite_worker.py).
            async with self._storage_errors():
                return await self._sqlite_worker.run(work, write=True)
        if self._write_engine is None:
            raise RuntimeError("Database.start() has not been called")
        async with self._storage_errors(), self._write_engine.begin() as connection:
            return await connection.run_sync(work)

    @contextlib.asynccontextmanager
    async def _storage_errors(self) -> AsyncIterator[None]:
        try:
            yield
        except (SQLAlchemyError, OSError) as exc:
            raise StorageError(f"database error: {self._describe(exc)}") from exc

    def _describe(self, exc: BaseException) -> str:
        """One line naming the driver's error, without the URL's password or SQLAlchemy's SQL dump."""
        cause: BaseException = exc
        if isinstance(exc, DBAPIError) and exc.orig is not None:
            cause = exc.orig
            # asyncpg errors arrive re-wrapped in an adapter class; the original reads better.
            if cause.__cause__ is not None:
                cause = cause.__cause__
            detail = str(cause)
        elif isinstance(exc, SQLAlchemyError) and exc.args:
            detail = str(exc.args[0])  # str(exc) would append a documentation link
        else:
            detail = str(exc)
        first_line = detail.strip().splitlines()[0] if detail.strip() else ""
        if self._url.password:
            first_line = first_line.replace(str(self._url.password), "***")
        if len(first_line) > _MAX_ERROR_TEXT:
            first_line = first_line[:_MAX_ERROR_TEXT] + "…"
        name = type(cause).__name__
        return f"{name}: {first_line}" if first_line else name


def _async_url(raw: str) -> URL:
    """Parse `raw` and pick the async driver; `StorageError` for anything else."""
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):  # ValueError: e.g. a port that is not a number
        # The exception text would repeat the URL, password included.
        raise StorageError("the database URL is not valid (expected sqlite+aiosqlite:///PATH)") from None
    if url.drivername == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    elif url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+asyncpg")
    if url.drivername == "sqlite+aiosqlite":
        if url.database in (None, "", ":memory:"):
            # One shared connection: a rollback in one task would discard another task's writes.
            raise StorageError("an in-memory SQLite database is not supported: give a file path")
    elif url.drivername != "postgresql+asyncpg":
        raise StorageError(
            f"unsupported database driver {url.drivername!r}: use sqlite+aiosqlite:// or postgresql+asyncpg://"
        )
    return url


def _sqlite_location_problem(url: URL) -> str | None:
    """Why the SQLite file of `url` cannot be created or written, in words, when its location is
    the reason (sqlite3 only says "unable to open database file"); None when it is not.

    Checked after a failed start: a parent that is a file, a folder that is not writable, a
    folder where the file should be, a file that is read-only. `os.access` answers for this
    process, so root passes permission checks (as it passes the file system's).
    """
    if not url.database or url.query.get("uri") == "true":
        return None
    path = Path(url.database).expanduser().absolute()
    prefix = f"cannot create/write the database at {path}"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the nearest folder that exists: where creating would start
    if not folder.is_dir():
        return f"{prefix}: {folder} is a file, not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{prefix}: the folder {folder} is not writable (permission denied)"
    if path.is_dir():
        return f"{prefix}: that is a folder, not a file"
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return f"{prefix}: the file is read-only (permission denied)"
    return None


def _create_parent_dir(url: URL) -> None:
    if url.database and url.query.get("uri") != "true":
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _configure_sqlite_connection(dbapi_connection: Any, synchronous: str) -> None:
    # Take BEGIN away from the sqlite3 module: it skips BEGIN before SELECT and DDL (so reads and
    # migrations would not be transactional) and cannot say BEGIN IMMEDIATE. `_on_sqlite_begin`
    # emits it instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        for pragma in (
            f"busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}",
            # FULL by default: a commit survives power loss (platform updates are acked after it).
            f"synchronous = {synchronous.upper()}",
            "foreign_keys = ON",  # off by default in SQLite; ON DELETE CASCADE needs it
        ):
            cursor.execute(f"PRAGMA {pragma}")
    finally:
        cursor.close()


async def _enable_wal(engine: AsyncEngine) -> None:
    """Put the SQLite file in WAL mode (readers then never block the writer, nor it them).

    The mode is stored in the file, so once per start is enough. Switching a new file to WAL needs
    an exclusive lock, and SQLite refuses it at once, without waiting for the busy timeout, while
    another process starting at the same moment holds a lock: so retry for a while.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _SQLITE_BUSY_TIMEOUT_MS / 1000
    async with engine.connect() as connection:
        # The raw driver connection: a PRAGMA that changes the journal mode must run outside a
        # transaction, and SQLAlchemy would begin one.
        raw = cast("aiosqlite.Connection", (await connection.get_raw_connection()).driver_connection)
        while True:
            try:
                ((mode,),) = await raw.execute_fetchall("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or loop.time() > deadline:
                    raise
                await asyncio.sleep(0.02)
    if str(mode).lower() != "wal":  # e.g. a file system without shared memory
        _log.warning("SQLite refused WAL mode (journal_mode is %s): readers will block writers", mode)


def _on_sqlite_begin(connection: Connection) -> None:
    # A deferred transaction that reads and then writes fails at once with SQLITE_BUSY when another
    # connection wrote meanwhile, whatever the busy timeout: writers take the write lock up front.
    immediate = connection.get_execution_options().get(_BEGIN_IMMEDIATE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _upgrade_to_head(connection: Connection) -> None:
    """Run Alembic on `connection` (already in a transaction, which the caller commits)."""
    config = Config()
    # Config values go through configparser interpolation.
    config.set_main_option("script_location", str(_MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
