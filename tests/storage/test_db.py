"""Database lifecycle, migrations, SQLite settings and error reporting."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import make_url

import storage.db
from bot.errors import StorageError
from storage.db import Database, DatabaseOptions
from storage.models import load_metadata
from storage.repository import ChatRepository

from .conftest import Target


def head_revision() -> str | None:
    config = Config()
    config.set_main_option("script_location", str(Path(storage.db.__file__).parent / "migrations"))
    return ScriptDirectory.from_config(config).get_current_head()


async def alembic_versions(database: Database) -> list[str]:
    return await database.run_read(
        lambda connection: list(connection.scalars(text("SELECT version_num FROM alembic_version")))
    )


def select_one(connection: Connection) -> None:
    connection.execute(text("SELECT 1"))


async def test_migrated_schema_matches_the_models(database: Database) -> None:
    def check(connection: Connection) -> None:
        # Autogenerate compares tables, columns, types, nullability, indexes, unique constraints, FKs.
        assert compare_metadata(MigrationContext.configure(connection), load_metadata()) == []
        inspector = inspect(connection)
        checks = {c["name"] for c in inspector.get_check_constraints("messages")}
        assert checks == {"ck_messages_role"}
        checks = {c["name"] for c in inspector.get_check_constraints("channels")}
        assert checks == {"ck_channels_context", "ck_channels_listen"}
        index = {i["name"]: i["column_names"] for i in inspector.get_indexes("messages")}
        assert index["ix_messages_channel_id_id"] == ["channel_id", "id"]
        assert index["ix_messages_channel_id_member_id_id"] == ["channel_id", "member_id", "id"]
        assert index["ix_messages_member_id"] == ["member_id"]
        assert index["ix_messages_created_at"] == ["created_at"]
        for table in ("messages", "usage"):
            (fk,) = inspector.get_foreign_keys(table)
            assert fk["options"].get("ondelete") == "CASCADE"
        usage_key = inspector.get_pk_constraint("usage")["constrained_columns"]
        assert usage_key == ["day", "user_key", "channel_id"]

    await database.run_read(check)
    assert await alembic_versions(database) == [head_revision()]


async def test_restart_keeps_data_and_migrates_nothing(target: Target) -> None:
    first = target.new_database()
    await first.start()
    await ChatRepository(first).append_message("web:a", "user", "kept")
    await first.stop()

    second = target.new_database()
    await second.start()
    try:
        assert [m.content for m in await ChatRepository(second).recent_messages("web:a", limit=5)] == ["kept"]
        assert await alembic_versions(second) == [head_revision()]
    finally:
        await second.stop()


async def test_several_clients_starting_at_once_on_a_new_database(target: Target) -> None:
    databases = [target.new_database() for _ in range(4)]
    try:
        await asyncio.gather(*(db.start() for db in databases))
        for i, db in enumerate(databases):
            await ChatRepository(db).append_message("web:a", "user", f"from {i}")
        assert await ChatRepository(databases[0]).message_count("web:a") == 4
        assert await alembic_versions(databases[0]) == [head_revision()]
    finally:
        for db in databases:
            await db.stop()


async def test_lifecycle_is_explicit_and_stop_is_idempotent(target: Target) -> None:
    db = target.new_database()
    await db.stop()  # before start: nothing to do
    with pytest.raises(RuntimeError):
        await db.run_read(select_one)
    await db.start()
    with pytest.raises(RuntimeError):
        await db.start()
    await db.stop()
    await db.stop()
    with pytest.raises(RuntimeError):
        await db.run_write(select_one)
    await db.start()  # a stopped database can start again
    assert await ChatRepository(db).message_count("web:a") == 0
    await db.stop()
    assert db.dialect_name == target.dialect


async def test_unknown_schema_revision_is_a_storage_error(target: Target, database: Database) -> None:
    await database.run_write(
        lambda connection: connection.execute(
            text("UPDATE alembic_version SET version_num = 'from_the_future'")
        )
    )

    newer = target.new_database()
    with pytest.raises(StorageError, match="from_the_future"):
        await newer.start()
    await newer.stop()


async def test_unreachable_postgres_is_a_clean_storage_error() -> None:
    db = Database("postgresql+asyncpg://chinwag:hunter2-secret@127.0.0.1:1/chinwag")
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        await db.start()
    message = str(caught.value)
    assert "hunter2-secret" not in message
    assert "\n" not in message
    assert "127.0.0.1" in message
    assert time.monotonic() - started < 10
    await db.stop()  # safe after a failed start


async def test_a_bad_driver_option_is_a_storage_error() -> None:
    db = Database("postgresql+asyncpg://chinwag:hunter2-secret@127.0.0.1:1/chinwag?sslmode=bogus")
    with pytest.raises(StorageError) as caught:
        await db.start()
    assert "hunter2-secret" not in str(caught.value)
    await db.stop()


@pytest.mark.parametrize(
    "url",
    [
        "mysql+aiomysql://chinwag:hunter2-secret@localhost/chinwag",
        "postgresql+psycopg://chinwag:hunter2-secret@localhost/chinwag",
        "postgresql+asyncpg://chinwag:hunter2-secret@localhost:port/chinwag",
        "not a url hunter2-secret",
        "sqlite+aiosqlite://",
        "sqlite+aiosqlite:///:memory:",
    ],
)
def test_unusable_urls_are_refused_without_echoing_secrets(url: str) -> None:
    with pytest.raises(StorageError) as caught:
        Database(url)
    assert "hunter2-secret" not in str(caught.value)


def test_sync_urls_get_the_async_driver() -> None:
    assert Database("sqlite:///data/bot.db").dialect_name == "sqlite"
    assert Database("postgres://u@h/db").dialect_name == "postgresql"


async def test_sqlite_file_that_cannot_be_created_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    db = Database(f"sqlite+aiosqlite:///{blocker}/data/bot.db")
    # A regular file in the way of the folder: root-proof, unlike a chmod (root writes anywhere).
    with pytest.raises(StorageError) as caught:
        await db.start()
    await db.stop()
    assert str(caught.value) == (
        f"cannot create/write the database at {blocker}/data/bot.db: {blocker} is a file, not a folder"
    )


async def test_a_folder_where_the_sqlite_file_should_be_is_named(tmp_path: Path) -> None:
    (tmp_path / "bot.db").mkdir()
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/bot.db")
    with pytest.raises(StorageError) as caught:
        await db.start()
    await db.stop()
    assert (
        str(caught.value)
        == f"cannot create/write the database at {tmp_path}/bot.db: that is a folder, not a file"
    )


# A child process starts the database and prints the error: under root, with the capabilities
# dropped that let root write anywhere (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so the folder's
# mode bites as it does for any other user.
_START_AND_REPORT = """
import asyncio, sys
from bot.errors import StorageError
from storage.db import Database

async def main() -> None:
    database = Database("sqlite+aiosqlite:///" + sys.argv[1])
    try:
        await database.start()
    except StorageError as error:
        print(error)
    else:
        print("started")
    await database.stop()

asyncio.run(main())
"""
_AS_ANY_USER = (
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
)


def test_a_read_only_folder_is_reported_as_not_writable(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    folder.chmod(0o555)
    command = [sys.executable, "-c", _START_AND_REPORT, str(folder / "bot.db")]
    if os.geteuid() == 0:  # CI runs as root, which a chmod does not stop
        command = [*_AS_ANY_USER, *command]
    repo = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": repo},
        check=False,
    )
    assert done.stdout.strip() == (
        f"cannot create/write the database at {folder}/bot.db: the folder {folder} is not writable "
        "(permission denied)"
    ), done.stderr


def test_an_unwritable_folder_is_reported_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What a non-root user meets in a read-only folder (sqlite3 says only "unable to open database
    # file"). os.access stands in for the permission bits: tests run as root in CI, and root's
    # access is never denied.
    folder = tmp_path / "data"
    folder.mkdir()
    denied = {folder}
    monkeypatch.setattr(storage.db.os, "access", lambda path, mode: Path(path) not in denied)
    url = make_url(f"sqlite+aiosqlite:///{folder}/bot.db")
    assert storage.db._sqlite_location_problem(url) == (
        f"cannot create/write the database at {folder}/bot.db: the folder {folder} is not writable "
        "(permission denied)"
    )
    (folder / "bot.db").write_bytes(b"")
    denied = {folder / "bot.db"}
    assert storage.db._sqlite_location_problem(url) == (
        f"cannot create/write the database at {folder}/bot.db: the file is read-only (permission denied)"
    )
    denied = set()
    assert storage.db._sqlite_location_problem(url) is None  # not the location: the usual message


async def test_sqlite_file_that_is_not_a_database_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    path.write_bytes(b"this is not a database file, just some text that is long enough" * 20)
    db = Database(f"sqlite+aiosqlite:///{path}")
    with pytest.raises(StorageError, match="not a database"):
        await db.start()
    await db.stop()


async def test_sqlite_connection_settings(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "bot.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    await db.start()
    try:
        assert path.is_file()

        def pragmas(connection: Connection) -> dict[str, object]:
            return {
                name: connection.execute(text(f"PRAGMA {name}")).scalar()
                for name in ["journal_mode", "synchronous", "foreign_keys", "busy_timeout"]
            }

        # The worker thread's connections serve every message: reads and writes alike.
        expected = {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 5000}
        assert await db.run_read(pragmas) == expected
        assert await db.run_write(pragmas) == expected
    finally:
        await db.stop()


async def test_sqlite_synchronous_normal_is_an_option(tmp_path: Path) -> None:
    options = DatabaseOptions(sqlite_synchronous="normal")
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}", options=options)
    await db.start()
    try:
        pragma = text("PRAGMA synchronous")
        for_writes = await db.run_write(lambda connection: connection.execute(pragma).scalar())
        for_reads = await db.run_read(lambda connection: connection.execute(pragma).scalar())
        assert for_writes == for_reads == 1  # NORMAL
    finally:
        await db.stop()


def _try_to_take_the_write_lock(path: Path) -> bool:
    """Whether another connection could start writing right now (no waiting)."""
    connection = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return False
    finally:
        connection.close()


async def test_sqlite_writers_take_the_write_lock_up_front_and_readers_do_not(tmp_path: Path) -> None:
    # A deferred transaction that reads first and writes later fails with SQLITE_BUSY, whatever the
    # busy timeout, when another connection wrote in between; BEGIN IMMEDIATE cannot be caught so.
    path = tmp_path / "bot.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    await db.start()

    # The work runs on the worker thread, inside its transaction: ask another connection from there.
    def write_that_has_only_read(connection: Connection) -> bool:
        connection.execute(text("SELECT 1"))  # only a read so far
        return _try_to_take_the_write_lock(path)

    def read(connection: Connection) -> bool:
        connection.execute(text("SELECT count(*) FROM messages"))
        return _try_to_take_the_write_lock(path)

    try:
        assert not await db.run_write(write_that_has_only_read)
        assert await db.run_read(read)
    finally:
        await db.stop()


async def test_deleting_a_channel_deletes_its_messages(database: Database) -> None:
    # ON DELETE CASCADE needs foreign_keys=ON on SQLite.
    repo = ChatRepository(database)
    await repo.append_message("web:gone", "user", "bye")
    await database.run_write(lambda connection: connection.execute(text("DELETE FROM channels")))
    messages = await database.run_read(
        lambda connection: connection.scalar(text("SELECT count(*) FROM messages"))
    )
    assert messages == 0


def migrate(revision: str, *, up: bool) -> Callable[[Connection], None]:
    """A unit of work that runs Alembic up or down to `revision` on its connection."""

    def work(connection: Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(Path(storage.db.__file__).parent / "migrations"))
        config.attributes["connection"] = connection
        (command.upgrade if up else command.downgrade)(config, revision)

    return work


def columns(connection: Connection, table: str = "messages") -> set[str]:
    return {column["name"] for column in inspect(connection).get_columns(table)}


async def test_migration_0003_adds_the_cut_column_under_existing_rows_and_goes_back(
    database: Database,
) -> None:

    def old_reply(connection: Connection) -> None:  # written as the 0002 schema takes it
        connection.execute(text("INSERT INTO channels (platform, external_id) VALUES ('web', 'a')"))
        connection.execute(
            text(
                "INSERT INTO messages (channel_id, role, content) "
                "SELECT id, 'assistant', 'from before' FROM channels WHERE external_id = 'a'"
            )
        )

    await database.run_write(migrate("0002", up=False))
    assert "cut" not in await database.run_read(columns)
    await database.run_write(old_reply)
    await database.run_write(migrate("head", up=True))
    assert "cut" in await database.run_read(columns)
    (old,) = await ChatRepository(database).recent_messages("web:a", limit=5)
    assert (old.content, old.cut) == ("from before", None)
    assert await alembic_versions(database) == [head_revision()]


async def test_migration_0004_fills_in_member_ids_and_goes_back(database: Database) -> None:
    """A user message's member is its author; an assistant message's, the author of the channel's
    nearest earlier user message (never one of another channel)."""
    await database.run_write(migrate("0003", up=False))
    assert "member_id" not in await database.run_read(columns)

    def history_0003(connection: Connection) -> None:  # written as the 0003 schema takes it
        connection.execute(
            text("INSERT INTO channels (platform, external_id) VALUES ('telegram', 'a'), ('telegram', 'b')")
        )
        rows = [
            ("b", "assistant", None, "b: the bot spoke first"),
            ("a", "user", "u1", "a: u1 asks"),
            ("b", "user", "u3", "b: u3 asks"),
            ("a", "assistant", None, "a: to u1"),
            ("a", "assistant", None, "a: to u1 again"),
            ("b", "assistant", None, "b: to u3"),
            ("a", "user", "u2", "a: u2 asks"),
            ("a", "assistant", None, "a: to u2"),
            ("a", "user", None, "a: no author"),
            ("a", "assistant", None, "a: to no one known"),
        ]
        for channel, role, author, content in rows:
            connection.execute(
                text(
                    "INSERT INTO messages (channel_id, role, author_id, content) "
                    "SELECT id, :role, :author, :content FROM channels WHERE external_id = :channel"
                ),
                {"channel": channel, "role": role, "author": author, "content": content},
            )

    await database.run_write(history_0003)
    await database.run_write(migrate("head", up=True))
    assert await alembic_versions(database) == [head_revision()]

    members = await database.run_read(
        lambda connection: {
            row.content: row.member_id
            for row in connection.execute(text("SELECT content, member_id FROM messages"))
        }
    )
    assert members == {
        "b: the bot spoke first": None,
        "a: u1 asks": "u1",
        "b: u3 asks": "u3",
        "a: to u1": "u1",
        "a: to u1 again": "u1",
        "b: to u3": "u3",
        "a: u2 asks": "u2",
        "a: to u2": "u2",
        "a: no author": None,
        "a: to no one known": None,
    }

    # And back: the columns, indexes and table go, the history stays.
    await database.run_write(migrate("0003", up=False))
    assert "member_id" not in await database.run_read(columns)
    assert not {"persona", "context", "listen"} & await database.run_read(lambda c: columns(c, "channels"))
    assert "usage" not in await database.run_read(lambda connection: inspect(connection).get_table_names())
    assert await ChatRepository(database).message_count("telegram:a") == 7


async def test_migration_0005_adds_attached_under_existing_messages_and_goes_back(
    database: Database,
) -> None:
    await database.run_write(migrate("0004", up=False))
    assert "attached" not in await database.run_read(columns)

    def history_0004(connection: Connection) -> None:  # written as the 0004 schema takes it
        connection.execute(text("INSERT INTO channels (platform, external_id) VALUES ('discord', '1')"))
        for role, platform_id, content in [("user", "10", "a question"), ("assistant", None, "an answer")]:
            connection.execute(
                text(
                    "INSERT INTO messages (channel_id, role, platform_message_id, content, member_id) "
                    "SELECT id, :role, :platform_id, :content, 'u1' FROM channels"
                ),
                {"role": role, "platform_id": platform_id, "content": content},
            )

    await database.run_write(history_0004)
    await database.run_write(migrate("head", up=True))
    assert await alembic_versions(database) == [head_revision()]
    assert "attached" in await database.run_read(columns)

    repo = ChatRepository(database)
    before = await repo.recent_messages("discord:1", limit=5)
    assert [(m.content, m.attached, m.member_id) for m in before] == [
        ("a question", None, "u1"),
        ("an answer", None, "u1"),
    ]
    # The old messages can be edited and deleted like new ones.
    edited = await repo.edit_message("discord:1", "10", "a better question")
    assert edited is not None and (edited.id, edited.attached) == (before[0].id, None)
    await repo.append_message("discord:1", "user", "new", platform_message_id="11", attached="[image: a.png]")

    # And back: the column goes, the messages and their texts stay.
    await database.run_write(migrate("0004", up=False))
    assert "attached" not in await database.run_read(columns)
    assert await repo.message_count("discord:1") == 3
    await database.run_write(migrate("head", up=True))
    assert await repo.delete_messages("discord:1", ["10", "11"]) == 3
