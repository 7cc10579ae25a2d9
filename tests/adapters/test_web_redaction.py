"""A private web channel id is its holder's credential: a whole chat exchange logs none."""

from __future__ import annotations

import hashlib
import logging

import pytest

from bot.errors import StorageError
from bot.ports import StoredMessage
from storage.repository import ChatRepository
from tests.bot.doubles import FailingBackend
from tests.conftest import EngineFactory
from tests.fakes.web_harness import read_sse, running_web, web_client

PRIVATE = "p-Vq2_Lx8-Nw4Tz0Hb6Kc1Rm9Ys3Ja7Pd"  # the shape of the id the chat page makes
HASHED = "web:p-…#" + hashlib.sha256(PRIVATE.encode()).hexdigest()[:8]


class BrokenHistory:
    """A history reader whose database fails, naming the channel as a lock's error does."""

    async def recent_messages(
        self, channel_key: str, *, limit: int, max_chars: int | None = None, max_id: int | None = None
    ) -> list[StoredMessage]:
        raise StorageError(f"cannot lock channel {channel_key}: TimeoutError")


async def test_a_chat_exchange_never_logs_a_private_channel_id(
    make_engine: EngineFactory, repository: ChatRepository, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every level: "answered in ..." is a debug line
    engine = await make_engine(FailingBackend())
    messages = f"/api/channels/{PRIVATE}/messages"
    async with running_web(engine, repository) as web, web_client(web) as client:
        sse = {"Accept": "text/event-stream"}
        async with client.stream("POST", messages, json={"text": "hi", "message_id": "m1"}, headers=sse) as r:
            assert [e.json() for e in await read_sse(r)][-1] == {"status": "answered"}
        again = await client.post(messages, json={"text": "hi", "message_id": "m1"})
        assert again.json()["status"] == "duplicate"
        failed = await client.post(messages, json={"text": "please explode"})
        assert failed.json()["status"] == "failed"
        assert (await client.get(messages)).status_code == 200
        assert (await client.post(f"/api/channels/{PRIVATE}/reset")).status_code == 200
    async with running_web(engine, BrokenHistory()) as web, web_client(web) as client:
        assert (await client.get(messages)).status_code == 503

    # Every record of the server's side, formatted with its traceback; the test's own HTTP client
    # (httpx, httpcore) logs the URLs it requests, as any client of the bot would.
    logged = "\n".join(
        caplog.handler.format(record)
        for record in caplog.records
        if not record.name.startswith(("httpx", "httpcore"))
    )
    assert PRIVATE not in logged
    # The lines were written, each naming the channel by its hash (so this test can fail).
    assert f"answered in {HASHED}:" in logged
    assert f"duplicate message m1 in {HASHED} ignored" in logged
    assert f"generation failed in {HASHED}: the model fell over" in logged
    assert f"storage failed for GET /api/channels/{HASHED.removeprefix('web:')}/messages" in logged
    assert f"cannot lock channel {HASHED}: TimeoutError" in logged
