"""Shared fixtures: a real engine over a real SQLite file, with the echo backend or a test double."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.access import RoleRules
from bot.app import build_engine
from bot.backends.base import Backend
from bot.backends.echo import EchoBackend
from bot.config import AccessConfig, ChatConfig, ModelConfig, PersonaConfig, RateLimitConfig
from bot.engine import ChatEngine
from storage.db import Database
from storage.repository import ChatRepository
from tests.fakes.waiting import ReplyLog

EngineFactory = Callable[..., Awaitable[ChatEngine]]


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated SQLite database in a temporary file (not :memory:, see platform-notes)."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")
    await db.start()
    yield db
    await db.stop()


@pytest.fixture
def repository(database: Database) -> ChatRepository:
    return ChatRepository(database)


@pytest.fixture(autouse=True)
def reply_log() -> Iterator[ReplyLog]:
    """Every reply this test's `make_engine` engines hand out: adapter tests wait until the
    platform shows each one's final text (see `ReplyLog`), instead of sleeping."""
    log = ReplyLog()
    ReplyLog.current = log
    yield log
    ReplyLog.current = None


@pytest.fixture
async def make_engine(database: Database, reply_log: ReplyLog) -> AsyncIterator[EngineFactory]:
    """Build engines over the shared database (as the application composes them); every engine is
    closed at the end of the test."""
    engines: list[ChatEngine] = []

    async def factory(
        backend: Backend | None = None,
        *,
        rate_limit: int = 1000,
        model: dict[str, Any] | None = None,
        chat: dict[str, Any] | None = None,
        access: dict[str, Any] | None = None,
        roles: dict[str, RoleRules] | None = None,
        personas: dict[str, dict[str, Any]] | None = None,
    ) -> ChatEngine:
        chat_settings = ChatConfig(
            rate_limit=RateLimitConfig(messages=rate_limit, per_seconds=60), **(chat or {})
        )
        engine = build_engine(
            database,
            backend or EchoBackend(),
            ModelConfig(backend="echo", **(model or {})),
            chat_settings,
            access=AccessConfig.model_validate(access or {}),
            roles=roles,
            personas={
                name: PersonaConfig.model_validate(preset) for name, preset in (personas or {}).items()
            },
        )
        engines.append(engine)
        return reply_log.watch(engine)

    yield factory
    for engine in engines:
        await engine.close(grace_s=1.0)
