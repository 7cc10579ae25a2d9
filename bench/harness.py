"""What every workload needs: a real `ChatEngine` over a real SQLite file, timed replies, and a
memory sampler. Nothing here knows about particular workloads."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.app import build_engine
from bot.backends.base import Backend
from bot.config import ChatConfig, ModelConfig, RateLimitConfig
from bot.engine import ChatEngine
from bot.events import ChatEvent
from bot.reply import ReplyStatus
from storage.db import Database, DatabaseOptions
from storage.repository import ChatRepository

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class Timed:
    """One reply as a user saw it: seconds to its first chunk and to its end, and its text."""

    first_chunk_s: float
    total_s: float
    text: str
    answered: bool = True  # False: a notice (busy, timeout, error) instead of a model reply


@dataclass(slots=True)
class Outcome:
    """A workload's result for one mode."""

    replies: list[Timed] = field(default_factory=list)
    wall_s: float = 0.0
    tokens: int = 0
    peak_rss_mb: float = 0.0

    def summary(self) -> dict[str, Any]:
        first = [r.first_chunk_s for r in self.replies]
        total = [r.total_s for r in self.replies]
        return {
            "replies": len(self.replies),
            "tokens": self.tokens,
            "wall_s": round(self.wall_s, 3),
            "tokens_per_s": round(self.tokens / self.wall_s, 2) if self.wall_s else 0.0,
            "ttft_p50_s": round(percentile(first, 50), 4),
            "ttft_p99_s": round(percentile(first, 99), 4),
            "latency_p50_s": round(percentile(total, 50), 4),
            "latency_p99_s": round(percentile(total, 99), 4),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
        }


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (linear interpolation); 0 for no values."""
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[min(98, max(0, round(q) - 1))]


def rss_mb() -> float:
    """This process's resident memory now."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE / 2**20


class PeakMemory:
    """Samples the resident set every 20 ms on a thread while active; `.peak_mb` is the highest."""

    def __init__(self) -> None:
        self.peak_mb = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())


def bench_engine(database: Database, backend: Backend, *, max_new_tokens: int) -> ChatEngine:
    """The engine every benchmark measures: greedy, no rate limit, and a generation timeout no
    queued reply can reach (the default 120 s once cut the baseline's replies short)."""
    return build_engine(
        database,
        backend,
        ModelConfig(temperature=0.0, max_new_tokens=max_new_tokens, generation_timeout_s=3600),
        ChatConfig(rate_limit=RateLimitConfig(messages=1_000_000, per_seconds=1)),
    )


@asynccontextmanager
async def fresh_sqlite(
    directory: Path, name: str, options: DatabaseOptions | None = None
) -> AsyncIterator[Database]:
    """A started `Database` on a new SQLite file in `directory` (a fresh directory per run:
    nothing to clean up first)."""
    database = Database(f"sqlite+aiosqlite:///{directory / name}.db", options=options)
    await database.start()
    try:
        yield database
    finally:
        await database.stop()


@asynccontextmanager
async def engine_over_sqlite(
    backend: Backend,
    directory: Path,
    *,
    max_new_tokens: int = 48,
    name: str = "bench",
    options: DatabaseOptions | None = None,
) -> AsyncIterator[tuple[ChatEngine, ChatRepository]]:
    """`bench_engine` with `backend` over a fresh SQLite file."""
    async with fresh_sqlite(directory, name, options) as database:
        repository = ChatRepository(database)
        engine = bench_engine(database, backend, max_new_tokens=max_new_tokens)
        try:
            yield engine, repository
        finally:
            await engine.close(grace_s=5)


def event(channel: str, text: str, message_id: str | None = None) -> ChatEvent:
    return ChatEvent(
        platform="bench",
        channel=channel,
        author_id=f"user-{channel}",
        author_name="Bench",
        text=text,
        message_id=message_id,
    )


async def timed_reply(engine: ChatEngine, chat_event: ChatEvent) -> Timed:
    """Send one message; time its first chunk and its end."""
    started = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    reply = engine.handle(chat_event)
    async for chunk in reply:
        if first is None:
            first = time.perf_counter() - started
        parts.append(chunk)
    total = time.perf_counter() - started
    answered = reply.status is ReplyStatus.ANSWERED
    return Timed(first if first is not None else total, total, "".join(parts), answered)


async def measure(run: Callable[[], Any], count_tokens: Callable[[str], int]) -> Outcome:
    """Run a workload coroutine factory returning `list[Timed]`; wall time, tokens and peak memory."""
    outcome = Outcome()
    with PeakMemory() as memory:
        started = time.perf_counter()
        outcome.replies = list(await run())
        outcome.wall_s = time.perf_counter() - started
    outcome.peak_rss_mb = memory.peak_mb
    outcome.tokens = sum(count_tokens(r.text) for r in outcome.replies)
    failed = sum(1 for r in outcome.replies if not r.answered)
    if failed:  # a workload whose replies did not all finish measures something else
        raise RuntimeError(f"{failed} of {len(outcome.replies)} replies were not answered")
    return outcome
