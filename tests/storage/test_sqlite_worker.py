"""The SQLite worker thread: reads and writes off the event loop, concurrent writes committed
together, a failing write rolled back alone."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, text

from storage.sqlite_worker import SqliteWorker
from tests.fakes.waiting import wait_until


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[SqliteWorker]:
    engine = create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT UNIQUE NOT NULL)"))
    running = SqliteWorker(engine, engine)
    running.start()
    try:
        yield running
    finally:
        await running.stop()


def insert(body: str) -> Callable[[Connection], int]:
    def work(connection: Connection) -> int:
        statement = text("INSERT INTO notes (body) VALUES (:b) RETURNING id")
        return int(connection.execute(statement, {"b": body}).scalar_one())

    return work


def bodies(connection: Connection) -> list[str]:
    return list(connection.execute(text("SELECT body FROM notes ORDER BY id")).scalars())


async def test_writes_waiting_together_are_committed_in_fewer_transactions(worker: SqliteWorker) -> None:
    ids = await asyncio.gather(*(worker.run(insert(f"n{i}"), write=True) for i in range(20)))
    assert sorted(ids) == list(range(1, 21))
    assert await worker.run(bodies, write=False) == [f"n{i}" for i in range(20)]
    # 20 writes queued in one go cannot each have had a transaction of their own.
    assert 1 <= worker.groups < 20


async def test_a_failing_write_in_a_group_is_rolled_back_alone(worker: SqliteWorker) -> None:
    def insert_then_fail(connection: Connection) -> None:
        connection.execute(text("INSERT INTO notes (body) VALUES ('half done')"))
        raise ValueError("changed my mind")

    results = await asyncio.gather(
        worker.run(insert("first"), write=True),
        worker.run(insert_then_fail, write=True),
        worker.run(insert("first"), write=True),  # violates UNIQUE: fails alone too
        worker.run(insert("last"), write=True),
        return_exceptions=True,
    )
    assert isinstance(results[1], ValueError)
    assert isinstance(results[2], Exception) and "UNIQUE" in str(results[2])
    assert await worker.run(bodies, write=False) == ["first", "last"]


async def test_a_write_alone_that_fails_leaves_nothing(worker: SqliteWorker) -> None:
    def insert_then_fail(connection: Connection) -> None:
        connection.execute(text("INSERT INTO notes (body) VALUES ('gone')"))
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await worker.run(insert_then_fail, write=True)
    assert await worker.run(bodies, write=False) == []


async def test_a_read_queued_after_writes_sees_them(worker: SqliteWorker) -> None:
    writes = [worker.run(insert(f"w{i}"), write=True) for i in range(5)]
    read = worker.run(bodies, write=False)
    *_, seen = await asyncio.gather(*writes, read)
    assert seen == [f"w{i}" for i in range(5)]


async def test_a_caller_cancelled_mid_write_does_not_break_the_worker(worker: SqliteWorker) -> None:
    # Threading events: the write runs on the worker thread, which must not touch the loop.
    running, release = threading.Event(), threading.Event()

    def slow_insert(connection: Connection) -> None:
        connection.execute(text("INSERT INTO notes (body) VALUES ('kept')"))
        running.set()
        # Still under way until the caller is cancelled (bounded: never hangs the worker).
        assert release.wait(timeout=10), "the test never released the write"

    caller = asyncio.ensure_future(worker.run(slow_insert, write=True))
    try:
        await wait_until(running.is_set, what="the write runs on the worker thread")
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
    finally:
        release.set()
    # The write itself completes (it was under way); the worker serves the next caller.
    assert await worker.run(insert("after"), write=True) >= 1
    assert await worker.run(bodies, write=False) == ["kept", "after"]
