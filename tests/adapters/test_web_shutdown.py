"""SIGTERM to a real `python -m bot run` while an SSE reply streams: the client gets its final
event, the kept text is stored, the process exits 0 within the drain time, and logs no error.

The model is a fake OpenAI-compatible server streaming a long reply slowly (the echo backend
answers at once), so the reply is still being written when the signal comes.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
from pathlib import Path

import httpx
import pytest
import yaml

from tests.adapters.test_web_stop import WORDS, deltas, next_event, rest_of
from tests.fakes.inference import Reply
from tests.fakes.openai_server import MODEL, FakeOpenAI
from tests.test_scaling import BotProcess, start_bot, stop_bot, wait_listening

pytestmark = pytest.mark.timeout(120)

PRIVATE = "p-" + "T" * 32
DRAIN_S = 0.5
_ERRORS = re.compile(r"Exception in ASGI application|Traceback|ERROR")


def write_config(path: Path, model_url: str) -> Path:
    config = {
        "model": {"backend": "openai", "base_url": model_url, "name": MODEL, "stall_timeout_s": 30},
        "storage": {"url": f"sqlite+aiosqlite:///{path.parent / 'bot.db'}"},
        "telegram": {"enabled": False},
        "discord": {"enabled": False},
        "web": {"enabled": True, "host": "127.0.0.1", "port": 0, "drain_s": DRAIN_S},
        "logging": {"level": "INFO"},
    }
    path.write_text(yaml.safe_dump(config))
    return path


async def test_sigterm_while_a_reply_streams_ends_it_cleanly(tmp_path: Path) -> None:
    # About 100 s of reply: only the shutdown can end it.
    endless = Reply(tuple(f"w{i} " for i in range(5000)), delay_s=0.02)
    async with FakeOpenAI(default=endless) as model:
        bot: BotProcess = await start_bot(write_config(tmp_path / "config.yaml", model.base_url))
        try:
            await wait_listening(bot)
            async with httpx.AsyncClient(base_url=bot.url, timeout=30.0) as client:
                url = f"/api/channels/{PRIVATE}/messages"
                headers = {"Accept": "text/event-stream"}
                async with client.stream("POST", url, json={"text": "talk"}, headers=headers) as response:
                    lines = response.aiter_lines()
                    first = await next_event(lines)
                    assert first is not None and first.event == "message", bot.tail()
                    bot.process.send_signal(signal.SIGTERM)
                    events = [first, *await rest_of(lines)]
            # The old shutdown took 16.8 s here; now the drain, one stop and the usual closing.
            await asyncio.wait_for(bot.process.wait(), timeout=10)
        finally:
            code = await stop_bot(bot)  # waits for the exit (SIGKILL only after 20 s)
    log = "".join(bot.log)
    assert code == 0, log
    assert events[-1].event == "done" and events[-1].json() == {"status": "answered", "cut": "shutdown"}, log
    assert WORDS.fullmatch(deltas(events)), deltas(events)
    assert not _ERRORS.search(log), log
    assert "shutting down" in log
    stored = stored_history(tmp_path / "bot.db")
    assert stored == [("user", "talk", None), ("assistant", deltas(events), "shutdown")]


def stored_history(path: Path) -> list[tuple[str, str, str | None]]:
    """The channel's rows, read with the sqlite3 module (the bot's process is gone)."""
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT m.role, m.content, m.cut FROM messages m JOIN channels c ON c.id = m.channel_id "
            "WHERE c.external_id = ? ORDER BY m.id",
            (PRIVATE,),
        ).fetchall()
    return [(role, content, cut) for role, content, cut in rows]
