"""Exactly-once answers across `kill -9`: `python -m bot run` as a subprocess against the fake."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from bot.commands import HELP_TEXT
from tests.fakes.telegram_server import Call, FakeTelegram

REPO = Path(__file__).resolve().parents[2]
TOKEN = "654321:SUBPROCESS-token"
PER_CHAT = 12


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(token=TOKEN, max_long_poll_s=0.5) as server:
        yield server


def write_config(tmp_path: Path, base_url: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        "model:\n  backend: echo\n"
        "chat:\n  rate_limit:\n    messages: 1000\n    per_seconds: 60\n"
        f"storage:\n  url: sqlite+aiosqlite:///{tmp_path / 'bot.db'}\n"
        f"telegram:\n  enabled: true\n  token: ${{TELEGRAM_TOKEN}}\n  base_url: {base_url}\n"
        "discord:\n  enabled: false\nweb:\n  enabled: false\n"
        # DEBUG: the token must stay out of even the most verbose logs.
        "logging:\n  level: DEBUG\n",
        encoding="utf-8",
    )
    return path


async def start_bot(config: Path) -> asyncio.subprocess.Process:
    """`python -m bot run` with the token in the environment; its log goes to bot.log beside the config."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TELEGRAM_TOKEN": TOKEN}
    with (config.parent / "bot.log").open("ab") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "run",
            "--config",
            str(config),
            cwd=config.parent,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
        )


def assert_token_not_logged(config: Path) -> None:
    log = (config.parent / "bot.log").read_text(encoding="utf-8", errors="replace")
    assert "Chinwag is up" in log
    assert TOKEN.split(":")[1] not in log


def inbox_states(database: Path) -> dict[str, int]:
    with sqlite3.connect(database) as db:
        return dict(db.execute("SELECT state, count(*) FROM inbound_updates GROUP BY state").fetchall())


def stored_history(database: Path, chat: int) -> list[tuple[str, str]]:
    """The chat's stored history, (role, content) in conversation order."""
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT m.role, m.content FROM messages m JOIN channels c ON c.id = m.channel_id"
            " WHERE c.platform = 'telegram' AND c.external_id = ? ORDER BY m.id",
            (str(chat),),
        ).fetchall()
    return [(role, content) for role, content in rows]


def exact_history(texts: list[str]) -> list[tuple[str, str]]:
    """Each user message once, each followed by its one echo answer."""
    history: list[tuple[str, str]] = []
    for i, text in enumerate(texts):
        history += [("user", text), ("assistant", f"echo[{2 * i}]: {text}")]
    return history


def answered(fake: FakeTelegram, chat: int) -> list[str]:
    """The user messages each reply of a chat answers (`echo[N]: TEXT` -> TEXT), in order."""
    return [re.sub(r"^echo\[\d+\]: ", "", text) for text in fake.texts(chat)]


async def answer_markers(fake: FakeTelegram, chats: list[int]) -> None:
    """Send "/help" to each chat and wait for its answer, then delete that answer again.

    Each chat is answered strictly in order, so once the marker's answer is there every answer
    due before it (a duplicate included) has been sent: "nothing more arrives" without a pause.
    A command is stored nowhere, so the histories the tests check stay as they were; deleting the
    answer leaves the chat as the conversation left it.
    """
    for chat in chats:
        fake.push_message(chat, "/help")
    await fake.wait_for(lambda: all(fake.texts(chat)[-1:] == [HELP_TEXT] for chat in chats), timeout=30)
    for chat in chats:
        [marker_answer] = [message for message in fake.sent if message.chat_id == chat][-1:]
        fake.delete(marker_answer)


async def restart_until_answered(config: Path, fake: FakeTelegram, chats: list[int], database: Path) -> None:
    """Start the bot again, wait until every message has a reply and the inbox is done, stop it."""
    bot = await start_bot(config)
    try:
        total = len(chats) * PER_CHAT
        await fake.wait_for(lambda: sum(len(fake.texts(chat)) for chat in chats) >= total, timeout=60)
        await fake.wait_for(lambda: inbox_states(database).get("pending", 0) == 0, timeout=10)
        await answer_markers(fake, chats)
        await fake.wait_for(lambda: fake.unconfirmed == [], timeout=10)  # the markers' updates too
        bot.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await bot.wait() == 0
    finally:
        if bot.returncode is None:
            bot.kill()
            await bot.wait()


@pytest.mark.parametrize("moment", ["mid_reply", "at_confirmation"])
async def test_kill_9_with_pending_messages_then_restart_answers_each_exactly_once(
    fake: FakeTelegram, tmp_path: Path, moment: str
) -> None:
    """`mid_reply`: one chat, killed while its 10th reply is on the way (the 9 before it are sent
    and marked done; the 10th is generated and stored but never arrives; the rest wait in the
    inbox). `at_confirmation`: four chats, killed as the bot confirms the stored batch (the
    confirmation never arrives, so Telegram hands the whole batch out again)."""
    chats = [201] if moment == "mid_reply" else [201, 202, 203, 204]
    config = write_config(tmp_path, fake.base_url)
    expected = {chat: [f"c{chat} m{i}" for i in range(PER_CHAT)] for chat in chats}
    for i in range(PER_CHAT):
        for chat in chats:
            fake.push_message(chat, expected[chat][i])
    last_update = max(fake.unconfirmed)

    first = await start_bot(config)
    killed = asyncio.Event()

    def kill(call: Call) -> None:
        offset = call.params.get("offset")
        if killed.is_set():
            return
        if moment == "mid_reply" and call.method == "sendMessage" and len(fake.calls_to("sendMessage")) == 10:
            os.kill(first.pid, signal.SIGKILL)
            killed.set()
            raise web.HTTPServiceUnavailable()  # this reply never reached Telegram
        if moment == "at_confirmation" and call.method == "getUpdates" and (offset or 0) > last_update:
            os.kill(first.pid, signal.SIGKILL)
            killed.set()
            # The confirmation is lost with the process: the batch is both stored and redelivered.
            raise web.HTTPServiceUnavailable()

    fake.on_call = kill
    try:
        async with asyncio.timeout(60):
            await killed.wait()
            assert await first.wait() == -signal.SIGKILL
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
    fake.on_call = None
    states = inbox_states(tmp_path / "bot.db")
    answered_before = sum(len(fake.texts(chat)) for chat in chats)
    assert answered_before == (9 if moment == "mid_reply" else 0)
    assert states.get("pending", 0) == len(chats) * PER_CHAT - answered_before, states
    if moment == "at_confirmation":
        assert len(fake.unconfirmed) == len(chats) * PER_CHAT

    await restart_until_answered(config, fake, chats, tmp_path / "bot.db")
    for chat in chats:
        assert answered(fake, chat) == expected[chat], f"chat {chat}"
        # The histories are exact: each message stored once, with one answer, so every reply saw
        # exactly the turns before it (the interrupted one was answered from the store).
        assert fake.texts(chat) == [f"echo[{2 * i}]: {text}" for i, text in enumerate(expected[chat])]
        assert stored_history(tmp_path / "bot.db", chat) == exact_history(expected[chat]), f"chat {chat}"
    assert_token_not_logged(config)
    assert fake.unconfirmed == []


async def test_kill_9_before_the_batch_is_stored_gets_it_redelivered(
    fake: FakeTelegram, tmp_path: Path
) -> None:
    config = write_config(tmp_path, fake.base_url)
    first = await start_bot(config)
    try:
        # Wait until it polls, then kill it the moment the server hands out the batch.
        await fake.wait_for(lambda: fake.get_updates_calls >= 1, timeout=60)
        fake.on_get_updates = lambda _ids: os.kill(first.pid, signal.SIGKILL)
        fake.push_message(301, "one")
        fake.push_message(301, "two")
        async with asyncio.timeout(30):
            assert await first.wait() == -signal.SIGKILL
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
    fake.on_get_updates = None
    assert len(fake.unconfirmed) == 2 and fake.texts(301) == []

    second = await start_bot(config)
    try:
        await fake.wait_for(lambda: len(fake.texts(301)) >= 2, timeout=60)
        await answer_markers(fake, [301])  # a duplicate would have been sent before the marker's
        second.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await second.wait() == 0
    finally:
        if second.returncode is None:
            second.kill()
            await second.wait()
    assert fake.texts(301) == ["echo[0]: one", "echo[2]: two"]
    assert stored_history(tmp_path / "bot.db", 301) == exact_history(["one", "two"])
    assert_token_not_logged(config)
