"""Two real bot processes on one PostgreSQL database: each channel's replies stay in order and no
platform message is answered twice, whichever process gets which message.

Each test run creates its own database (and drops it), so concurrent runs on one server never meet.
Both processes start at the same moment on that fresh database: they also migrate it concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.fakes.waiting import wait_until
from tests.storage.conftest import pg_url

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parent.parent
STARTUP_S = 60.0
STOP_S = 20.0
CHANNELS = 4
PER_CHANNEL = 12
IN_FLIGHT = 16  # requests open at once, over both processes
_LISTENING = re.compile(r"web chat at (http://127\.0\.0\.1:\d+)/")


@dataclass
class BotProcess:
    """One `python -m bot run` child and what it printed on stderr."""

    process: asyncio.subprocess.Process
    url: str = ""
    log: list[str] = field(default_factory=list)
    drain: asyncio.Task[None] | None = None

    def tail(self) -> str:
        return "".join(self.log[-30:])


async def bot_command(command: str, config: Path) -> asyncio.subprocess.Process:
    """`python -m bot <command> --config <config>` with this checkout's code, no platform tokens,
    stderr piped (the log)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    for name in ("TELEGRAM_TOKEN", "DISCORD_TOKEN", "CHINWAG_WEB_ADMIN_KEY"):
        env.pop(name, None)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        command,
        "--config",
        str(config),
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def start_bot(config: Path) -> BotProcess:
    return BotProcess(await bot_command("run", config))


async def wait_listening(bot: BotProcess) -> None:
    """Read stderr until the web adapter says where it listens (it binds port 0), then keep
    draining it in the background so the child never blocks on a full pipe."""
    stderr = bot.process.stderr
    assert stderr is not None
    async with asyncio.timeout(STARTUP_S):
        while not bot.url:
            line = (await stderr.readline()).decode(errors="replace")
            if not line:
                raise AssertionError(f"the bot exited during start-up:\n{bot.tail()}")
            bot.log.append(line)
            if match := _LISTENING.search(line):
                bot.url = match.group(1)

    async def drain() -> None:
        while line := await stderr.readline():
            bot.log.append(line.decode(errors="replace"))

    bot.drain = asyncio.create_task(drain())


async def stop_bot(bot: BotProcess) -> int | None:
    """SIGTERM, then SIGKILL if it does not exit in time; the exit code (None if it was killed)."""
    process = bot.process
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            return None
    if bot.drain is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(bot.drain, 5)
    return process.returncode


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for this test, dropped afterwards."""
    if os.environ.get("CHINWAG_SKIP_PG") == "1":
        pytest.skip("CHINWAG_SKIP_PG=1")
    url = make_url(pg_url())
    admin_dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        admin = await asyncpg.connect(admin_dsn, timeout=5)
    except Exception as exc:
        message = f"PostgreSQL at {url.render_as_string()} is unreachable ({type(exc).__name__}: {exc})."
        raise pytest.fail.Exception(message, pytrace=False) from None
    name = f"chinwag_scale_{secrets.token_hex(6)}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def write_config(path: Path, database_url: str) -> Path:
    config = {
        "model": {"backend": "echo"},
        "chat": {"history_messages": 200, "rate_limit": {"messages": 10_000, "per_seconds": 60}},
        # Few lock connections: more channels than that wait their turn instead of failing.
        "storage": {"url": database_url, "pool_size": 2, "max_overflow": 2, "lock_connections": 3},
        "telegram": {"enabled": False},
        "discord": {"enabled": False},
        "web": {"enabled": True, "host": "127.0.0.1", "port": 0},
        "logging": {"level": "INFO"},
    }
    path.write_text(yaml.safe_dump(config))
    return path


async def wait_ready(client: httpx.AsyncClient, bot: BotProcess) -> None:
    async def ready() -> bool:
        with contextlib.suppress(httpx.TransportError):
            return (await client.get(f"{bot.url}/readyz")).status_code == 200
        return False

    # Another process: its /readyz is polled (not too often: it is starting), no event to wait on.
    await wait_until(ready, STARTUP_S, what=f"{bot.url}/readyz answers 200", poll_s=0.1)


@dataclass(frozen=True)
class Sent:
    channel: str
    message_id: str
    text: str
    process: int
    status: str
    reply: str | None


async def test_two_processes_keep_every_channel_in_order_and_answer_each_message_once(
    tmp_path: Path, database_url: str
) -> None:
    config = write_config(tmp_path / "config.yaml", database_url)
    bots: list[BotProcess] = []
    try:
        # Both at once, on an empty database: they migrate it concurrently.
        bots = list(await asyncio.gather(start_bot(config), start_bot(config)))
        await asyncio.gather(*(wait_listening(bot) for bot in bots))
        async with httpx.AsyncClient(timeout=30.0) as client:
            await asyncio.gather(*(wait_ready(client, bot) for bot in bots))
            sent = await send_interleaved(client, bots)
            metrics = [(await client.get(f"{bot.url}/metrics")).text for bot in bots]
    finally:
        codes = [await stop_bot(bot) for bot in bots]
    assert codes == [0, 0], "\n".join(bot.tail() for bot in bots)

    rows = await stored_messages(database_url)
    duplicates = {s.message_id for s in sent if _sent_twice(sent, s.message_id)}
    for channel in {s.channel for s in sent}:
        history = rows[channel]
        questions, answers = history[::2], history[1::2]
        # Complete, and strictly alternating in the order the lock was taken.
        assert [role for role, *_ in history] == ["user", "assistant"] * PER_CHANNEL, channel
        # Each reply saw the whole history before its question: echo[N] counts it.
        for position, ((_, question, _), (_, answer, _)) in enumerate(zip(questions, answers, strict=True)):
            assert answer == f"echo[{2 * position}]: {question}"
        # Every platform message stored once, none missing.
        expected_ids = {s.message_id for s in sent if s.channel == channel}
        stored_ids = [message_id for _, _, message_id in questions]
        assert sorted(stored_ids) == sorted(expected_ids)

    # Over HTTP: each message answered exactly once; the duplicate delivery stayed silent.
    by_id: dict[str, list[Sent]] = {}
    for s in sent:
        by_id.setdefault(s.message_id, []).append(s)
    stored_answer = {
        message_id: answer
        for history in rows.values()
        for (_, _, message_id), (_, answer, _) in zip(history[::2], history[1::2], strict=True)
    }
    for message_id, deliveries in by_id.items():
        answered = [d for d in deliveries if d.status == "answered"]
        assert len(answered) == 1, (message_id, deliveries)
        assert answered[0].reply == stored_answer[message_id]
        assert all(d.status == "duplicate" and d.reply is None for d in deliveries if d is not answered[0])
    assert duplicates and all(len(by_id[message_id]) == 2 for message_id in duplicates)

    handled = sum(_messages_total(text) for text in metrics)
    assert handled == len(sent)
    assert all(_messages_total(text) > 0 for text in metrics), "one process got no message"


def _sent_twice(sent: list[Sent], message_id: str) -> bool:
    return sum(1 for s in sent if s.message_id == message_id) == 2


def _messages_total(metrics_text: str) -> int:
    match = re.search(r'^chinwag_messages_total\{platform="web"\} ([0-9.]+)$', metrics_text, re.MULTILINE)
    assert match is not None
    return int(float(match.group(1)))


async def send_interleaved(client: httpx.AsyncClient, bots: list[BotProcess]) -> list[Sent]:
    """CHANNELS x PER_CHANNEL messages, alternating processes, many in flight at once (also within
    one channel); every fourth message is delivered to both processes."""
    slots = asyncio.Semaphore(IN_FLIGHT)
    deliveries: list[tuple[str, str, str, int]] = []
    for number in range(PER_CHANNEL):
        for channel in range(CHANNELS):
            name, message_id, text = f"room-{channel}", f"m-{channel}-{number}", f"hello {number}"
            deliveries.append((name, message_id, text, number % 2))
            if number % 4 == 1:
                deliveries.append((name, message_id, text, (number + 1) % 2))

    async def deliver(name: str, message_id: str, text: str, process: int) -> Sent:
        async with slots:
            response = await client.post(
                f"{bots[process].url}/api/channels/{name}/messages",
                json={"text": text, "message_id": message_id},
            )
        assert response.status_code == 200, response.text
        body = response.json()
        return Sent(name, message_id, text, process, body["status"], body["reply"])

    async with asyncio.timeout(60):
        return list(await asyncio.gather(*(deliver(*delivery) for delivery in deliveries)))


async def stored_messages(database_url: str) -> dict[str, list[tuple[str, str, str | None]]]:
    """Channel name -> (role, content, platform message id) in stored order."""
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        records = await connection.fetch(
            "SELECT c.external_id, m.role, m.content, m.platform_message_id "
            "FROM messages m JOIN channels c ON c.id = m.channel_id ORDER BY m.id"
        )
    finally:
        await connection.close()
    rows: dict[str, list[tuple[str, str, str | None]]] = {}
    for record in records:
        rows.setdefault(record["external_id"], []).append(
            (record["role"], record["content"], record["platform_message_id"])
        )
    return rows


async def test_migrate_command_run_by_several_processes_at_once(tmp_path: Path, database_url: str) -> None:
    """`python -m bot migrate` (the release step), three at once on an empty database: all succeed
    and the schema is at the newest revision."""
    config = write_config(tmp_path / "config.yaml", database_url)
    processes = [await bot_command("migrate", config) for _ in range(3)]
    try:
        async with asyncio.timeout(STARTUP_S):
            outputs = [await process.communicate() for process in processes]
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert [process.returncode for process in processes] == [0, 0, 0], [err for _, err in outputs]
    assert all(b"schema is up to date" in err for _, err in outputs)

    from alembic.script import ScriptDirectory

    from storage.db import _MIGRATIONS_DIR

    head = ScriptDirectory(str(_MIGRATIONS_DIR)).get_current_head()
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        assert await connection.fetchval("SELECT version_num FROM alembic_version") == head
    finally:
        await connection.close()
