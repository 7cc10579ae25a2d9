"""What the fake inference servers share: scripted behaviours (faults), request records, lifecycle.

A test queues behaviours with `script(...)`; each generation request takes the next one, and when
the queue is empty the server answers with `default`. Every request is recorded (path, headers,
JSON body) so tests assert on what the bot sent. Servers listen on 127.0.0.1, port 0 unless a port
is given (a test that restarts a server on the same port simulates a server coming back).
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Reply:
    """Stream these tokens, waiting `first_delay_s` before the first and `delay_s` between."""

    tokens: tuple[str, ...]
    first_delay_s: float = 0.0
    delay_s: float = 0.0


@dataclass(frozen=True)
class Status:
    """Answer with this HTTP status and JSON body (no stream)."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Cut:
    """Stream `tokens`, then drop the connection without finishing the response."""

    tokens: tuple[str, ...]


@dataclass(frozen=True)
class Garbage:
    """Stream `tokens`, then an event whose data is `raw` (not JSON), then nothing more."""

    tokens: tuple[str, ...]
    raw: str = "{this is not json"


Behaviour = Reply | Status | Cut | Garbage


@dataclass(frozen=True)
class Request:
    """One request the bot made."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


def free_port() -> int:
    """A port nothing listens on (bound and released at once): connecting there is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeInferenceServer:
    """Base of the fakes: `async with Fake() as fake:` then `fake.base_url`."""

    def __init__(self, *, port: int = 0, default: Behaviour = Reply(("Hello", " there", "!"))) -> None:
        self.port = port
        self.default = default
        self.requests: list[Request] = []
        self.streaming = 0
        """Streams being written now: a client that stops reading must make this drop to 0."""
        self._idle = asyncio.Event()
        self._idle.set()
        self._script: deque[Behaviour] = deque()
        self._runner: web.AppRunner | None = None

    def script(self, *behaviours: Behaviour) -> None:
        """Answer the next generation requests with these, in order."""
        self._script.extend(behaviours)

    def stream_started(self) -> None:
        self.streaming += 1
        self._idle.clear()

    def stream_ended(self) -> None:
        self.streaming -= 1
        if self.streaming == 0:
            self._idle.set()

    async def wait_streams_closed(self, timeout_s: float = 2.0) -> bool:
        """Whether every stream ended (the client closed it, or it finished) within `timeout_s`."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def next_behaviour(self) -> Behaviour:
        return self._script.popleft() if self._script else self.default

    @property
    def generation_requests(self) -> list[Request]:
        return [r for r in self.requests if r.method == "POST"]

    @property
    def base_url(self) -> str:
        """The URL the backend is configured with."""
        raise NotImplementedError

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        # Requests with images carry them base64-encoded: more than aiohttp's 1 MiB default.
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self.routes(app)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeInferenceServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def record(self, request: web.Request) -> Any:
        body = await request.json() if request.can_read_body else None
        self.requests.append(Request(request.method, request.path, dict(request.headers), body))
        return body

    @staticmethod
    def status_response(behaviour: Status) -> web.Response:
        return web.json_response(behaviour.body, status=behaviour.status, headers=behaviour.headers)

    @staticmethod
    async def open_stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        return response

    @staticmethod
    async def pause(seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)

    @staticmethod
    def drop(request: web.Request) -> None:
        """Close the socket mid-response: the client sees an incomplete chunked body."""
        transport = request.transport
        if transport is not None:
            transport.abort()
