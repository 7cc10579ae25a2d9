"""People's data, end to end: `python -m bot export` run as a process against the bot's SQLite file,
and `chat.retention_days` purging through the application as it starts."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from pydantic import SecretStr

from bot.app import Application
from bot.config import ChatConfig, ModelConfig, Settings, StorageConfig
from bot.events import ChatEvent
from bot.export import export_document
from bot.ports import MemberMessage, StoredMessage, TokenCharge
from storage.db import Database
from storage.repository import ChatRepository
from tests.conftest import EngineFactory
from tests.fakes.waiting import wait_until
from tests.storage.test_member_data import insert_messages

REPO_ROOT = Path(__file__).resolve().parent.parent
CLI_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Finished:
    code: int
    stdout: str
    stderr: str


async def run_cli(*args: str) -> Finished:
    """`python -m bot ARGS` in a child process (the repository's root as its working directory)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=REPO_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(CLI_TIMEOUT_S):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Finished(process.returncode, stdout.decode(), stderr.decode())


def write_config(folder: Path, database_file: Path) -> Path:
    config = {
        "model": {"backend": "echo"},
        "storage": {"url": f"sqlite+aiosqlite:///{database_file}"},
        "telegram": {"enabled": False},
        "discord": {"enabled": False},
        "web": {"enabled": False},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def event(text: str, *, author: str, channel: str, platform: str = "telegram") -> ChatEvent:
    direct = channel == author
    return ChatEvent(platform, channel, author, f"User {author}", text, is_admin=direct, is_direct=direct)


async def test_export_prints_or_writes_one_users_messages_as_json(
    tmp_path: Path, make_engine: EngineFactory
) -> None:
    engine = await make_engine()
    await engine.ask(event("in the group", author="1011", channel="-100"))
    await engine.ask(event("someone else", author="2022", channel="-100"))
    await engine.ask(event("in private", author="1011", channel="1011"))
    await engine.ask(event("on discord", author="1011", channel="600", platform="discord"))
    config = write_config(tmp_path, tmp_path / "bot.db")  # the `database` fixture's file
    output = tmp_path / "export.json"

    printed, written = await asyncio.gather(
        run_cli("export", "--user", "telegram:1011", "--config", str(config)),
        run_cli("export", "--user", "telegram:1011", "--config", str(config), "--output", str(output)),
    )
    assert printed.code == 0, printed.stderr
    document = json.loads(printed.stdout)
    assert (document["user"], document["message_count"]) == ("telegram:1011", 4)
    assert [(m["channel"], m["role"], m["content"]) for m in document["messages"]] == [
        ("telegram:-100", "user", "in the group"),
        ("telegram:-100", "assistant", "echo[0]: in the group"),
        ("telegram:1011", "user", "in private"),
        ("telegram:1011", "assistant", "echo[0]: in private"),
    ]
    assert document["messages"][0]["author_name"] == "User 1011"
    assert written.code == 0 and written.stdout == ""
    assert f"exported telegram:1011 to {output}" in written.stderr
    assert json.loads(output.read_text(encoding="utf-8"))["messages"] == document["messages"]


def test_the_export_holds_what_attachments_became() -> None:
    at = datetime(2026, 12, 9, tzinfo=UTC)
    with_file = StoredMessage(1, "user", "read this", "7", "Ann", "m1", at, attached="[file: a.txt]\nhello")
    reply = StoredMessage(2, "assistant", "done", None, None, None, at, member_id="7")
    document = export_document("web", "7", [MemberMessage("web:c", with_file), MemberMessage("web:c", reply)])
    assert [(m["content"], m["attached"]) for m in document["messages"]] == [
        ("read this", "[file: a.txt]\nhello"),
        ("done", None),
    ]


async def test_a_malformed_user_is_refused_in_one_line_with_exit_code_2(tmp_path: Path) -> None:
    database_file = tmp_path / "never" / "bot.db"
    config = write_config(tmp_path, database_file)
    results = await asyncio.gather(
        *(
            run_cli("export", "--user", user, "--config", str(config))
            for user in ("1011", "telegram:", "x:1 2")
        )
    )
    for result in results:
        assert result.code == 2 and result.stdout == ""
        [line] = result.stderr.splitlines()
        assert line.startswith("chinwag: expected PLATFORM:ID")
    assert not database_file.parent.exists()  # refused before the database was opened


async def test_the_application_purges_what_is_older_than_the_retention_at_start_up(
    tmp_path: Path, database: Database, repository: ChatRepository
) -> None:
    now = datetime.now(UTC)
    await insert_messages(database, "telegram:-100", [now - timedelta(days=400), now - timedelta(days=31)])
    await insert_messages(database, "discord:600", [now - timedelta(days=45), now - timedelta(days=29)])
    old_day = (now - timedelta(days=40)).date()
    await repository.append_message(
        "telegram:-100", "assistant", "recent", charge=TokenCharge("telegram:1", "Ann", 5, old_day)
    )
    today_charge = TokenCharge("telegram:1", "Ann", 3, now.date())
    await repository.append_message("telegram:-100", "assistant", "recent too", charge=today_charge)
    settings = Settings(
        model=ModelConfig(backend="echo"),
        chat=ChatConfig(retention_days=30),
        storage=StorageConfig(url=SecretStr(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")),
    )

    async def contents(channel_key: str) -> list[str]:
        return [m.content for m in await repository.recent_messages(channel_key, limit=100)]

    async def purged() -> bool:
        return await contents("discord:600") == [f"at {(now - timedelta(days=29)).isoformat()}"]

    async with Application(settings):
        await wait_until(purged, what="the retention purge at start-up")
        assert await contents("telegram:-100") == ["recent", "recent too"]
        assert await repository.tokens_used("telegram:1", old_day) == 0  # old usage days go too
        assert await repository.tokens_used("telegram:1", now.date()) == 3
