"""The one thread that runs a process's SQLite units of work, committing queued writes together.

Why one thread with the plain `sqlite3` driver: see `storage.db.Database`. Why group commits:
with `synchronous = FULL` every COMMIT waits for an fsync, and SQLite commits one writer at a
time, so channels answered at once queued behind each other's fsyncs (50 channels at once: 215
echo messages/s with FULL against 736 with NORMAL). Writes that are already waiting when the
thread gets to them run in one transaction, each inside its own SAVEPOINT: one that fails rolls
back alone and gets its own error; the others are committed by a single COMMIT (one fsync). No
caller hears "done" before that COMMIT, so durability is the same as one transaction each.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine

_log = logging.getLogger(__name__)

T = TypeVar("T")

# The most writes committed together: bounds how long the first of them waits for the COMMIT.
_MAX_GROUP = 64


@dataclass(slots=True)
class _Job(Generic[T]):
    work: Callable[[Connection], T]
    write: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]


class _Next:
    """Marker: nothing is waiting to be handled next; take a new job from the queue."""


_NEXT = _Next()


class SqliteWorker:
    """Runs `work(connection)` on its thread: reads one by one (rolled back at the end), writes in
    groups (see the module docstring). `start()` once, `stop()` once; `run()` in between."""

    def __init__(self, engine: Engine, write_engine: Engine) -> None:
        self._engine = engine
        self._write_engine = write_engine
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="chinwag-sqlite", daemon=True)
        self.groups = 0  # write transactions committed (for tests and benchmarks)

    def start(self) -> None:
        self._thread.start()

    async def run(self, work: Callable[[Connection], T], *, write: bool) -> T:
        """`work`'s result once its transaction has ended (committed, for a write); its exception
        otherwise."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(work, write, loop, future))
        return await future

    async def stop(self) -> None:
        """Finish the jobs already queued, close the connections and end the thread."""
        if not self._thread.is_alive():
            return
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)

    # --- the worker thread ---------------------------------------------------------------

    def _serve(self) -> None:
        try:
            pending: _Job[Any] | _Next | None = _NEXT
            while True:
                job = self._jobs.get() if isinstance(pending, _Next) else pending
                if job is None:  # stop
                    return
                if not job.write:
                    self._read(job)
                    pending = _NEXT
                    continue
                group: list[_Job[Any]] = [job]
                pending = self._take_more_writes(group)
                self._write(group)
        finally:
            self._engine.dispose()

    def _take_more_writes(self, group: list[_Job[Any]]) -> _Job[Any] | _Next | None:
        """Add the writes already queued behind `group[0]` to it. Returns the job that stopped the
        group (a read, or None for stop) to be handled next, or `_NEXT` when the queue ran dry."""
        while len(group) < _MAX_GROUP:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return _NEXT
            if job is None or not job.write:
                return job
            group.append(job)
        return _NEXT

    def _read(self, job: _Job[Any]) -> None:
        try:
            with self._engine.connect() as connection:  # closing it rolls the read back
                result = job.work(connection)
        except BaseException as exc:  # handed to the caller, who raises it
            _settle(job, error=exc)
        else:
            _settle(job, result=result)

    def _write(self, group: list[_Job[Any]]) -> None:
        if len(group) == 1:
            self._write_alone(group[0])
            return
        outcomes: list[tuple[_Job[Any], Any, BaseException | None]] = []
        try:
            with self._write_engine.begin() as connection:
                for job in group:
                    try:
                        with connection.begin_nested():
                            outcomes.append((job, job.work(connection), None))
                    except Exception as exc:  # this job's savepoint is rolled back; the rest go on
                        outcomes.append((job, None, exc))
        except BaseException as exc:  # BEGIN or COMMIT failed: nothing of the group was written
            for job in group:
                _settle(job, error=exc)
            return
        self.groups += 1
        for job, result, error in outcomes:
            if error is not None:
                _settle(job, error=error)
            else:
                _settle(job, result=result)

    def _write_alone(self, job: _Job[Any]) -> None:
        try:
            with self._write_engine.begin() as connection:
                result = job.work(connection)
        except BaseException as exc:
            _settle(job, error=exc)
        else:
            self.groups += 1
            _settle(job, result=result)


def _settle(job: _Job[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    """Hand the outcome to the caller's event loop (a loop already closed has no one to tell)."""

    def deliver() -> None:
        if job.future.cancelled():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    try:
        job.loop.call_soon_threadsafe(deliver)
    except RuntimeError:
        _log.debug("a database result arrived after its event loop closed")
