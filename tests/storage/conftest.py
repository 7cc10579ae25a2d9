"""Fixtures that run every storage test on SQLite (a temp file) and on PostgreSQL (a fresh schema).

PostgreSQL comes from `CHINWAG_TEST_PG_URL` (default: the local server, trust auth). When it cannot be
reached the PostgreSQL cases fail with a message that says so; `CHINWAG_SKIP_PG=1` skips them instead.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from storage.db import Database
from storage.repository import ChatRepository

DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def pg_url() -> str:
    return os.environ.get("CHINWAG_TEST_PG_URL", DEFAULT_PG_URL)


@dataclass(frozen=True)
class Target:
    """One empty database for one test; `new_database()` gives another client of it (a "process")."""

    url: str
    connect_args: dict[str, Any] | None = None
    sqlite_path: Path | None = None
    schema: str | None = None

    @property
    def dialect(self) -> str:
        return "sqlite" if self.sqlite_path is not None else "postgresql"

    def new_database(self) -> Database:
        return Database(self.url, connect_args=self.connect_args)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    if request.param == "sqlite":
        # A subdirectory that does not exist yet: start() must create it.
        path = tmp_path / "data" / "bot.db"
        yield Target(url=f"sqlite+aiosqlite:///{path}", sqlite_path=path)
        return

    if os.environ.get("CHINWAG_SKIP_PG") == "1":
        pytest.skip("CHINWAG_SKIP_PG=1")
    url = make_url(pg_url())
    try:
        admin = await asyncpg.connect(
            url.set(drivername="postgresql").render_as_string(hide_password=False), timeout=5
        )
    except Exception as exc:
        # CI starts the server: a missing one is a failure, never a silent skip.
        message = (
            f"PostgreSQL at {url.render_as_string()} is unreachable ({type(exc).__name__}: {exc}). "
            "Start it, point CHINWAG_TEST_PG_URL at a server, or set CHINWAG_SKIP_PG=1 to skip."
        )
        raise pytest.fail.Exception(message, pytrace=False) from None
    schema = f"chinwag_test_{secrets.token_hex(6)}"
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        yield Target(url=pg_url(), connect_args={"server_settings": {"search_path": schema}}, schema=schema)
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


@pytest.fixture
async def database(target: Target) -> AsyncIterator[Database]:
    db = target.new_database()
    await db.start()
    try:
        yield db
    finally:
        await db.stop()


@pytest.fixture
def repo(database: Database) -> ChatRepository:
    return ChatRepository(database)
