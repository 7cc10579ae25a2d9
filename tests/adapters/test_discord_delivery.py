"""Exactly-once Discord answers across `kill -9` and across gateway sessions.

The kill test runs `python -m bot run` as a subprocess against the fake in this process, kills it
while replies are on their way, starts it again and checks that every message got one reply and is
stored once. The session test runs the adapter in-process: an outage longer than the resume window
ends the session, and the new one fetches what arrived meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
from aiohttp import web
from pydantic import SecretStr

from adapters.discord import DiscordAdapter
from bot.commands import HELP_TEXT
from bot.config import DiscordConfig
from storage.repository import ChatRepository
from tests.conftest import EngineFactory
from tests.fakes.discord_server import BOT_ID, Call, FakeDiscord

REPO = Path(__file__).resolve().parents[2]
TOKEN = "MTIz.SUBPROCESS-discord-token-never-logged"
GUILD_CHANNELS = (700_000_000_000_000_011, 700_000_000_000_000_012, 700_000_000_000_000_013)
DM_CHANNEL = 700_000_000_000_000_021  # a direct chat: every message is addressed to the bot
CHANNELS = (*GUILD_CHANNELS, DM_CHANNEL)
PER_CHANNEL = 4
KILL_AT_POST = 5  # the 5th reply posted (of 16) kills the process and never reaches "Discord"


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(token=TOKEN, channel_ids=GUILD_CHANNELS) as server:
        yield server


def mention(text: str) -> str:
    return f"<@{BOT_ID}> {text}"


def write_config(tmp_path: Path, fake: FakeDiscord) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        "model:\n  backend: echo\n"
        "chat:\n  rate_limit:\n    messages: 1000\n    per_seconds: 60\n"
        f"storage:\n  url: sqlite+aiosqlite:///{tmp_path / 'bot.db'}\n"
        "telegram:\n  enabled: false\nweb:\n  enabled: false\n"
        "discord:\n  enabled: true\n  token: ${DISCORD_TOKEN}\n"
        f"  api_base: {fake.api_base}\n  gateway_url: {fake.gateway_url}\n"
        "  edit_interval_s: 0.1\n  first_post_delay_s: 0\n  drain_s: 1\n  slash_commands: false\n"
        # DEBUG: the token must stay out of even the most verbose logs.
        "logging:\n  level: DEBUG\n",
        encoding="utf-8",
    )
    return path


async def start_bot(config: Path) -> asyncio.subprocess.Process:
    """`python -m bot run` with the token in the environment; its log goes to bot.log beside the config."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "DISCORD_TOKEN": TOKEN}
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


async def wait_until_identified(fake: FakeDiscord, times: int, within: float = 20.0) -> None:
    """Wait until the `times`-th gateway session is up (messages dispatched from then on reach it)."""
    await fake.wait_for(lambda: fake.identifies >= times and fake.connected, within)


async def stop_bot(bot: asyncio.subprocess.Process) -> None:
    """SIGTERM, and expect a clean exit within 20 s (killed otherwise)."""
    try:
        bot.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await bot.wait() == 0
    finally:
        if bot.returncode is None:
            bot.kill()
            await bot.wait()


def stored_history(database: Path, channel: int) -> list[tuple[str, str]]:
    """The channel's stored history, (role, content) in conversation order."""
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT m.role, m.content FROM messages m JOIN channels c ON c.id = m.channel_id"
            " WHERE c.platform = 'discord' AND c.external_id = ? ORDER BY m.id",
            (str(channel),),
        ).fetchall()
    return [(role, content) for role, content in rows]


def stored_user_ids(database: Path) -> list[str]:
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT platform_message_id FROM messages WHERE role = 'user'").fetchall()
    return [row[0] for row in rows]


def replies_per_message(fake: FakeDiscord) -> Counter[int]:
    """How many posted messages quote each message (every reply quotes the user's)."""
    return Counter(sent.reference for sent in fake.sent if sent.reference is not None)


def push_addressed_messages(fake: FakeDiscord) -> dict[int, list[tuple[int, str]]]:
    """`PER_CHANNEL` messages addressed to the bot in each channel (mentions in the guild, plain
    text in the DM), round robin; channel -> (id, text)."""
    expected: dict[int, list[tuple[int, str]]] = {channel: [] for channel in CHANNELS}
    for i in range(PER_CHANNEL):
        for channel in CHANNELS:
            text = f"c{channel % 100} m{i}"
            if channel == DM_CHANNEL:
                payload = fake.push_message(channel, text)
            else:
                payload = fake.push_message(channel, mention(text), guild=True)
            expected[channel].append((int(payload["id"]), text))
    return expected


async def answer_markers(fake: FakeDiscord, channels: tuple[int, ...]) -> None:
    """Send "/help" in each channel and wait for its answer, then forget that answer again.

    Each channel is answered strictly in order, so once the marker's answer is posted every answer
    due before it (a duplicate included) has been posted: "nothing more arrives" without a pause.
    A command is stored nowhere, so the stored histories stay as they were; dropping the answers
    from `fake.sent` leaves the record of the conversation alone for the checks that follow.
    """
    markers = [
        int(fake.push_message(channel, "/help", guild=channel != DM_CHANNEL)["id"]) for channel in channels
    ]
    await fake.wait_for(lambda: all(replies_per_message(fake)[marker] >= 1 for marker in markers), within=20)
    for marker in markers:
        [answer] = [sent for sent in fake.sent if sent.reference == marker]
        assert answer.content == HELP_TEXT
        fake.sent.remove(answer)


def assert_each_answered_once(
    fake: FakeDiscord, database: Path, expected: Mapping[int, list[tuple[int, str]]]
) -> None:
    """Every message (id, text) of every channel got one reply, and is stored once."""
    all_ids = [message_id for messages in expected.values() for message_id, _ in messages]
    counts = replies_per_message(fake)
    assert {message_id: counts[message_id] for message_id in all_ids} == dict.fromkeys(all_ids, 1)
    assert len(fake.sent) == len(all_ids)  # nothing posted that quotes no message
    by_reference = {sent.reference: sent.content for sent in fake.sent}
    for channel, messages in expected.items():
        history = stored_history(database, channel)
        # Each message is stored once, in order, and no answer was generated twice: every stored
        # answer is the one posted for its message (a stored answer is re-sent, not regenerated).
        # An answer can be missing from the store: the killed process may have posted a streamed
        # reply before the engine committed it. And messages stored but unanswered at the kill
        # get their answers after them, so the rows need not alternate.
        assert [content for role, content in history if role == "user"] == [text for _, text in messages]
        answers = [content for role, content in history if role == "assistant"]
        posted = [by_reference[message_id] for message_id, _ in messages]
        assert len(set(answers)) == len(answers) and set(answers) <= set(posted), (history, posted)
        for message_id, text in messages:
            assert re.fullmatch(rf"echo\[\d+\]: {text}", by_reference[message_id]), by_reference[message_id]
    assert sorted(stored_user_ids(database)) == sorted(str(message_id) for message_id in all_ids)


@pytest.mark.parametrize("posting", ["slow", "fast"])
async def test_kill_9_while_replies_are_pending_then_restart_answers_each_exactly_once(
    fake: FakeDiscord, tmp_path: Path, posting: str
) -> None:
    """16 messages in 3 guild channels and a DM; killed as the 5th reply is posted (that one never reaches
    "Discord"). `slow`: posts take 0.3 s, so the echo model has stored answers the killed process
    never posted: the restart must post those from the store. `fast`: the kill finds messages
    stored but unanswered (answered now) and replies posted whose answer was not committed (not
    fetched again: Discord's history shows them answered). Either way every message gets one
    reply and is stored once."""
    if posting == "slow":
        fake.post_delay_s = 0.3
    config = write_config(tmp_path, fake)
    database = tmp_path / "bot.db"
    first = await start_bot(config)
    killed = asyncio.Event()

    def kill(call: Call) -> None:
        if call.method != "POST" or not call.path.endswith("/messages"):
            return
        if killed.is_set():
            # Sent by the process in the instant before SIGKILL took it: its connection dies with
            # it, so this never reaches Discord either.
            raise web.HTTPServiceUnavailable()
        if sum(1 for c in fake.calls if c.method == "POST" and c.path.endswith("/messages")) == KILL_AT_POST:
            os.kill(first.pid, signal.SIGKILL)
            killed.set()
            raise web.HTTPServiceUnavailable()  # this reply never reached Discord

    try:
        await wait_until_identified(fake, 1)
        fake.on_call = kill
        expected = push_addressed_messages(fake)
        async with asyncio.timeout(20):
            await killed.wait()
            assert await first.wait() == -signal.SIGKILL
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
    fake.on_call = None
    # Posts the process sent before dying (accepted, then held by the slow API) land.
    await fake.wait_for(lambda: fake.posts_in_flight == 0, within=10)
    posted_before = len(fake.sent)
    assert posted_before < KILL_AT_POST
    at_kill = Counter(role for channel in CHANNELS for role, _ in stored_history(database, channel))
    assert 0 < at_kill["user"] <= len(CHANNELS) * PER_CHANNEL
    if posting == "slow":
        assert at_kill["assistant"] > posted_before  # answers stored, never posted
    all_ids = [message_id for messages in expected.values() for message_id, _ in messages]

    fake.post_delay_s = 0.0
    second = await start_bot(config)
    try:
        await wait_until_identified(fake, 2)
        await fake.wait_for(lambda: all(replies_per_message(fake)[i] >= 1 for i in all_ids), within=20)
        await answer_markers(fake, CHANNELS)  # a duplicate would have been posted before them
    finally:
        await stop_bot(second)

    assert_each_answered_once(fake, database, expected)
    log = (tmp_path / "bot.log").read_text(encoding="utf-8", errors="replace")
    if posting == "slow":
        assert "stored answer resent" in log  # the engine's redelivery path, not a new answer
    assert TOKEN not in log and TOKEN.split(".")[1] not in log


async def test_a_new_session_after_a_long_outage_fetches_what_arrived_meanwhile(
    fake: FakeDiscord, make_engine: EngineFactory, repository: ChatRepository
) -> None:
    """RESUME refused (the session expired): the client IDENTIFYs, nothing is replayed, and the
    new session's backfill answers the message sent during the outage, once; the one answered
    before is not answered again."""
    engine = await make_engine()
    config = DiscordConfig(
        token=SecretStr(TOKEN),
        api_base=fake.api_base,
        gateway_url=fake.gateway_url,
        edit_interval_s=0.1,
        first_post_delay_s=0,
        ready_timeout_s=10.0,
        slash_commands=False,
    )

    async def last_seen() -> Mapping[str, str]:
        return await repository.last_platform_message_ids("discord")

    adapter = DiscordAdapter(config, engine, guild_ready_timeout_s=0.05, last_seen=last_seen)
    channel = GUILD_CHANNELS[0]
    await adapter.start()
    try:
        before = fake.push_message(channel, mention("before"), guild=True)
        await fake.wait_for(lambda: len(fake.sent) == 1, within=10)
        await fake.invalidate_session()
        during = fake.push_message(channel, mention("during the outage"), guild=True)  # never replayed
        await fake.wait_for(lambda: fake.identifies == 2, within=15)
        await fake.wait_for(lambda: len(fake.sent) >= 2, within=10)
        fake.push_message(channel, mention("after"), guild=True)
        await fake.wait_for(lambda: len(fake.sent) >= 3, within=10)
        # The channel is answered in order: a duplicate would be posted before the marker's answer.
        marker = fake.push_message(channel, "/help", guild=True)
        await fake.wait_for(lambda: replies_per_message(fake)[int(marker["id"])] >= 1, within=10)
    finally:
        await adapter.stop()
    assert fake.resumes == 0
    assert [(sent.reference, sent.content) for sent in fake.sent] == [
        (int(before["id"]), "echo[0]: before"),
        (int(during["id"]), "echo[2]: during the outage"),
        (fake.sent[2].reference, "echo[4]: after"),
        (int(marker["id"]), HELP_TEXT),
    ]
