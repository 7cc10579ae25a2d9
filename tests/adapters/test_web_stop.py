"""Stopping a streaming reply over the chat API, and shutting the web adapter down while one streams."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator

import pytest

import adapters.web_streams
from adapters.web import WebAdapter, WebOptions
from bot.failures import SHUTDOWN_NOTICE, STOPPED_CUT_NOTICE
from bot.reply import CutReason
from storage.repository import ChatRepository
from tests.bot.doubles import EndlessBackend
from tests.conftest import EngineFactory
from tests.fakes.waiting import wait_until
from tests.fakes.web_harness import SseEvent, running_web, web_client

PRIVATE = "p-" + "S" * 32
ADMIN_KEY = "admin-secret-456"
SSE = {"Accept": "text/event-stream"}
WORDS = re.compile(r"(w\d+ )+")  # what EndlessBackend writes


async def next_event(lines: AsyncIterator[str]) -> SseEvent | None:
    """The next event of a stream being read (None at its end)."""
    name, data = "message", []
    async for line in lines:
        if not line:
            if data:
                return SseEvent(name, "\n".join(data))
        elif line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").removeprefix(" "))
    return SseEvent(name, "\n".join(data)) if data else None


async def rest_of(lines: AsyncIterator[str]) -> list[SseEvent]:
    events = []
    while (event := await next_event(lines)) is not None:
        events.append(event)
    return events


def deltas(events: list[SseEvent]) -> str:
    return "".join(event.json()["delta"] for event in events if event.event == "message")


async def test_stop_over_the_api_keeps_the_text_and_the_history_shows_the_cut(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    backend = EndlessBackend()
    engine = await make_engine(backend)
    url = f"/api/channels/{PRIVATE}"
    async with running_web(engine, repository) as web, web_client(web) as client:
        assert (await client.post(f"{url}/stop")).json() == {"stopped": False}  # nothing running
        async with client.stream("POST", f"{url}/messages", json={"text": "talk"}, headers=SSE) as response:
            lines = response.aiter_lines()
            first = await next_event(lines)
            assert first is not None and first.event == "message"
            stopped = await client.post(f"{url}/stop")
            assert stopped.status_code == 200 and stopped.json() == {"stopped": True}
            events = [first, *await rest_of(lines)]
        history = (await client.get(f"{url}/messages")).json()["messages"]

        # A JSON client gets the notice in its text, and the cut beside it.
        waiting = asyncio.create_task(client.post(f"{url}/messages", json={"text": "again"}))

        async def stopped_now() -> bool:  # False until its generation runs
            return bool((await client.post(f"{url}/stop")).json()["stopped"])

        await wait_until(stopped_now, what="the second reply was stopped")
        answer = (await waiting).json()

    assert events[-1].event == "done" and events[-1].json() == {"status": "answered", "cut": "stopped"}
    kept = deltas(events)
    assert WORDS.fullmatch(kept), kept  # the text so far, without the notice (the page marks it)
    assert [(m["role"], m["content"], m["cut"]) for m in history] == [
        ("user", "talk", None),
        ("assistant", kept, "stopped"),
    ]
    assert answer["status"] == "answered" and answer["cut"] == "stopped"
    assert WORDS.fullmatch(answer["reply"].removesuffix(STOPPED_CUT_NOTICE)), answer
    stored = await repository.recent_messages(f"web:{PRIVATE}", limit=10)
    assert [m.cut for m in stored] == [None, CutReason.STOPPED, None, CutReason.STOPPED]


async def test_stopping_a_named_channel_needs_the_admin_key(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    engine = await make_engine(EndlessBackend())
    async with running_web(engine, repository, admin_api_key=ADMIN_KEY) as web, web_client(web) as client:
        assert (await client.post("/api/channels/room-1/stop")).status_code == 401
        wrong = await client.post("/api/channels/room-1/stop", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403
        admin_key = {"Authorization": f"Bearer {ADMIN_KEY}"}
        admin = await client.post("/api/channels/room-1/stop", headers=admin_key)
        assert admin.status_code == 200 and admin.json() == {"stopped": False}
        assert (await client.post("/api/channels/bad id!/stop")).status_code in {404, 422}


class _ErrorRecords(logging.Handler):
    """Every record of ERROR or worse (uvicorn's loggers do not propagate to pytest's capture)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_shutdown_while_a_reply_streams_gives_the_client_a_final_event_and_no_error(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    engine = await make_engine(EndlessBackend())
    web = WebAdapter(engine, repository, WebOptions(host="127.0.0.1", port=0, drain_s=0.2))
    await web.start()
    errors = _ErrorRecords()
    watched = [logging.getLogger(name) for name in ("uvicorn", "")]  # uvicorn's do not propagate
    for logger in watched:
        logger.addHandler(errors)
    try:
        async with (
            web_client(web) as client,
            client.stream(
                "POST", f"/api/channels/{PRIVATE}/messages", json={"text": "talk"}, headers=SSE
            ) as response,
        ):
            lines = response.aiter_lines()
            first = await next_event(lines)
            assert first is not None and first.event == "message"
            stopping = asyncio.create_task(web.stop())
            events = [first, *await rest_of(lines)]
            # Stopped within the grace and its settling time, not by uvicorn's backstop.
            await asyncio.wait_for(stopping, timeout=adapters.web_streams.STOP_SETTLE_S + 2)
    finally:
        for logger in watched:
            logger.removeHandler(errors)
        await web.stop()
    assert events[-1].event == "done" and events[-1].json() == {"status": "answered", "cut": "shutdown"}
    kept = deltas(events)
    assert WORDS.fullmatch(kept), kept
    stored = await repository.recent_messages(f"web:{PRIVATE}", limit=10)
    assert [(m.content, m.cut) for m in stored] == [("talk", None), (kept, CutReason.SHUTDOWN)]
    assert [record.getMessage() for record in errors.records] == []


async def test_a_reply_still_waiting_at_shutdown_is_abandoned_with_a_final_event(
    make_engine: EngineFactory, repository: ChatRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two streams in one channel: the second waits behind the first, so stopping the first only
    # lets the second begin; after the settling time the adapter gives up on it.
    monkeypatch.setattr(adapters.web_streams, "STOP_SETTLE_S", 0.3)
    backend = EndlessBackend()
    engine = await make_engine(backend)
    web = WebAdapter(engine, repository, WebOptions(host="127.0.0.1", port=0, drain_s=0.1))
    await web.start()
    url = f"/api/channels/{PRIVATE}/messages"
    try:
        async with web_client(web) as client:

            async def stream(text: str) -> list[SseEvent]:
                async with client.stream("POST", url, json={"text": text}, headers=SSE) as response:
                    return await rest_of(response.aiter_lines())

            first = asyncio.create_task(stream("first"))
            await asyncio.wait_for(backend.started.wait(), timeout=10)
            second = asyncio.create_task(stream("second"))
            await wait_until(lambda: web._open_replies.count == 2, what="both requests reached the server")
            await asyncio.wait_for(web.stop(), timeout=10)
            first_events, second_events = await asyncio.gather(first, second)
    finally:
        await web.stop()
    assert first_events[-1].json() == {"status": "answered", "cut": "shutdown"}
    assert second_events[-1].event == "done" and second_events[-1].json() == {"status": "failed"}
    assert deltas(second_events).endswith(SHUTDOWN_NOTICE.strip())
