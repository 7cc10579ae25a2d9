"""`python -m bench.channel_locks`: what the per-channel advisory lock costs on PostgreSQL.

The echo backend through the real `ChatEngine` and PostgreSQL storage, in one process, with the
lock (`PostgresChannelLocks`: one more connection check-out, a transaction and
`pg_advisory_xact_lock` per message) and without it (`LocalChannelLocks`), alternating, in the same
run and database. Two workloads: one message at a time (the added latency per message) and many
channels at once (throughput). Not part of `make test`.

    python -m bench.channel_locks [--url postgresql+asyncpg://postgres@127.0.0.1:5432/test]

It creates a schema of its own in that database and drops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.harness import Timed, event, percentile, timed_reply
from bot.app import build_engine
from bot.backends.echo import EchoBackend
from bot.config import ChatConfig, ModelConfig, RateLimitConfig
from bot.engine import ChatEngine
from bot.ports import ChannelLocks, LocalChannelLocks
from storage.db import Database
from storage.locks import channel_locks_for

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
MODES = ("no-lock", "advisory-lock")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.channel_locks", description=__doc__)
    parser.add_argument("--url", default=DEFAULT_URL, help="PostgreSQL URL (default: %(default)s)")
    parser.add_argument("--sequential", type=int, default=300, help="messages sent one at a time")
    parser.add_argument("--channels", type=int, default=16, help="channels for the concurrent workload")
    parser.add_argument("--per-channel", type=int, default=20, help="messages per channel, concurrent")
    parser.add_argument("--rounds", type=int, default=2, help="times each mode runs, alternating")
    return parser.parse_args()


def summary(replies: list[Timed], wall_s: float) -> dict[str, float]:
    totals = [reply.total_s for reply in replies]
    return {
        "messages": len(replies),
        "messages_per_s": round(len(replies) / wall_s, 1) if wall_s else 0.0,
        "p50_ms": round(percentile(totals, 50) * 1000, 2),
        "p99_ms": round(percentile(totals, 99) * 1000, 2),
    }


async def run_mode(
    database: Database, locks: ChannelLocks, workload: Callable[[ChatEngine], Awaitable[list[Timed]]]
) -> dict[str, float]:
    engine = build_engine(
        database,
        EchoBackend(),
        ModelConfig(backend="echo"),
        ChatConfig(rate_limit=RateLimitConfig(messages=1_000_000, per_seconds=60)),
        locks=locks,
    )
    try:
        started = time.perf_counter()
        replies = await workload(engine)
        return summary(replies, time.perf_counter() - started)
    finally:
        await engine.close()


async def bench(args: argparse.Namespace, url: str, schema: str) -> dict[str, Any]:
    database = Database(url, connect_args={"server_settings": {"search_path": schema}})
    await database.start()
    try:
        locks: dict[str, ChannelLocks] = {
            "no-lock": LocalChannelLocks(),
            "advisory-lock": channel_locks_for(database),
        }
        results: dict[str, Any] = {"sequential": {m: [] for m in MODES}, "concurrent": {m: [] for m in MODES}}
        for round_number in range(args.rounds):
            for mode in MODES if round_number % 2 == 0 else tuple(reversed(MODES)):
                tag = f"{mode}-{round_number}"

                async def sequential(engine: ChatEngine, tag: str = tag) -> list[Timed]:
                    return await one_at_a_time(engine, args.sequential, tag)

                async def concurrent(engine: ChatEngine, tag: str = tag) -> list[Timed]:
                    return await many_channels(engine, args.per_channel, args.channels, tag)

                results["sequential"][mode].append(await run_mode(database, locks[mode], sequential))
                results["concurrent"][mode].append(await run_mode(database, locks[mode], concurrent))
        return results
    finally:
        await database.stop()


async def one_at_a_time(engine: ChatEngine, messages: int, tag: str) -> list[Timed]:
    """Each message awaited before the next, round robin over 8 channels: the added latency."""
    return [
        await timed_reply(engine, event(f"{tag}-seq-{i % 8}", f"message {i}", f"{tag}-{i}"))
        for i in range(messages)
    ]


async def many_channels(engine: ChatEngine, per_channel: int, channels: int, tag: str) -> list[Timed]:
    """`channels` channels each send `per_channel` messages as fast as replies come: throughput."""

    async def one_channel(c: int) -> list[Timed]:
        return [
            await timed_reply(engine, event(f"{tag}-conc-{c}", f"message {i}", f"{tag}-{c}-{i}"))
            for i in range(per_channel)
        ]

    per = await asyncio.gather(*(one_channel(c) for c in range(channels)))
    return [timed for replies in per for timed in replies]


async def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    admin = create_async_engine(args.url, isolation_level="AUTOCOMMIT")
    schema = f"chinwag_bench_{secrets.token_hex(4)}"
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            results = await bench(args, args.url, schema)
        finally:
            async with admin.connect() as connection:
                await connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        await admin.dispose()
    print(json.dumps(results, indent=2))
    for workload, modes in results.items():
        for mode, runs in modes.items():
            for run in runs:
                print(
                    f"{workload:10} {mode:13} {run['messages']:5d} msgs  {run['messages_per_s']:8.1f} msg/s"
                    f"  p50 {run['p50_ms']:7.2f} ms  p99 {run['p99_ms']:7.2f} ms"
                )


if __name__ == "__main__":
    asyncio.run(main())
