"""Runs the real web adapter on 127.0.0.1, port 0, in the test's event loop, and reads its SSE."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from adapters.web import WebAdapter, WebOptions
from bot.ports import ChatService, HistoryReader


@asynccontextmanager
async def running_web(
    engine: ChatService, history: HistoryReader, **options: Any
) -> AsyncIterator[WebAdapter]:
    """A started `WebAdapter` on a free loopback port; stopped on exit."""
    adapter = WebAdapter(engine, history, WebOptions(host="127.0.0.1", port=0, **options))
    await adapter.start()
    try:
        yield adapter
    finally:
        await adapter.stop()


@asynccontextmanager
async def web_client(adapter: WebAdapter, **kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for `adapter`, bounded so a hung server fails the test instead of hanging it."""
    async with httpx.AsyncClient(base_url=adapter.url, timeout=10.0, **kwargs) as client:
        yield client


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One Server-Sent Event as the wire carried it."""

    event: str
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


async def read_sse(response: httpx.Response) -> list[SseEvent]:
    """Every event of a streamed response, in order (`event` is "message" when unnamed)."""
    return [event async for event in sse_events(response)]


async def sse_events(response: httpx.Response) -> AsyncIterator[SseEvent]:
    """The events of a streamed response as they arrive (`event` is "message" when unnamed)."""
    name = "message"
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield SseEvent(name, "\n".join(data))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").removeprefix(" "))
    if data:
        yield SseEvent(name, "\n".join(data))
