"""`adapters.downloads.download_start` against a real HTTP server on 127.0.0.1 (aiohttp).

The server misbehaves the ways a file host can: 404, hangs before answering, trickles a byte at a
time, streams 50 MB, compresses. It counts what it sent, so a test can say the download stopped
early instead of reading the whole file.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from aiohttp import web

from adapters.downloads import download_start
from bot.errors import AttachmentUnavailable

CHUNK = 64 * 1024
FIFTY_MB = 50 * 1024 * 1024
TOKEN_PATH = "/file/bot123456:SECRET-TOKEN"  # as in a Telegram file URL
MAX_TRICKLE_BYTES = 500  # 10 s at most: every loop here is bounded


@dataclass
class Stream:
    """What the server did for one streamed body."""

    size: int
    sent: int = 0
    client_left: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class FileServer:
    """`GET /files/{size}`: `size` bytes of "x", streamed in 64 KB chunks (recorded in `streams`);
    `/missing`: 404; `/hang`: no answer until the test ends; `/trickle`: one byte every 20 ms;
    `/gzip`: 200 MB of zeros, gzip-compressed; `/moved`: a redirect to `/files/10`."""

    def __init__(self) -> None:
        self.streams: list[Stream] = []
        self.requests: list[web.Request] = []
        self.release = asyncio.Event()  # set at the end: whatever still waits returns
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/files/{size}", self._file)
        app.router.add_get(TOKEN_PATH + "/files/{size}", self._file)
        app.router.add_get(TOKEN_PATH + "/missing", self._missing)
        app.router.add_get("/hang", self._hang)
        app.router.add_get("/trickle", self._trickle)
        app.router.add_get("/gzip", self._gzip)
        app.router.add_get("/moved", self._moved)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _file(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        stream = Stream(int(request.match_info["size"]))
        self.streams.append(stream)
        response = web.StreamResponse(headers={"Content-Length": str(stream.size)})
        try:
            await response.prepare(request)
            while stream.sent < stream.size:
                chunk = b"x" * min(CHUNK, stream.size - stream.sent)
                await response.write(chunk)
                stream.sent += len(chunk)
        except ConnectionError:  # aiohttp's ClientConnectionResetError: the client hung up
            stream.client_left = True
        finally:
            stream.finished.set()
        return response

    async def _missing(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        return web.Response(status=404, text="Not Found")

    async def _hang(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        await self.release.wait()
        return web.Response(text="too late")

    async def _trickle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        response = web.StreamResponse(headers={"Content-Length": str(MAX_TRICKLE_BYTES)})
        await response.prepare(request)
        try:
            for _ in range(MAX_TRICKLE_BYTES):
                if self.release.is_set():
                    break
                await response.write(b"x")
                await asyncio.sleep(0.02)
        except ConnectionError:
            pass
        return response

    async def _gzip(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        body = gzip.compress(b"\0" * 200_000_000, compresslevel=9)  # about 200 KB
        return web.Response(body=body, headers={"Content-Encoding": "gzip"})

    async def _moved(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        raise web.HTTPFound("/files/10")


def own_log(caplog: pytest.LogCaptureFixture) -> str:
    """What Chinwag's own loggers wrote (httpx and httpcore log URLs at INFO and DEBUG: the
    application sets them to WARNING, see bot/app.py)."""
    return "\n".join(
        record.getMessage() for record in caplog.records if record.name.startswith(("adapters", "bot"))
    )


@pytest.fixture
async def server() -> AsyncIterator[FileServer]:
    file_server = FileServer()
    await file_server.start()
    yield file_server
    await file_server.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http_client:
        yield http_client


async def test_a_small_file_is_read_whole(server: FileServer, client: httpx.AsyncClient) -> None:
    downloaded = await download_start(client, f"{server.url}/files/1000", limit=4096, timeout_s=10)

    assert downloaded.data == b"x" * 1000
    assert downloaded.complete


async def test_a_file_of_exactly_the_limit_is_complete(server: FileServer, client: httpx.AsyncClient) -> None:
    downloaded = await download_start(client, f"{server.url}/files/262144", limit=262_144, timeout_s=10)

    assert len(downloaded.data) == 262_144
    assert downloaded.complete


async def test_a_file_one_byte_over_the_limit_is_not(server: FileServer, client: httpx.AsyncClient) -> None:
    downloaded = await download_start(client, f"{server.url}/files/262145", limit=262_144, timeout_s=10)

    assert len(downloaded.data) == 262_144
    assert not downloaded.complete


async def test_a_50_mb_file_is_read_to_the_limit_and_the_rest_is_never_sent(
    server: FileServer, client: httpx.AsyncClient
) -> None:
    downloaded = await download_start(client, f"{server.url}/files/{FIFTY_MB}", limit=262_144, timeout_s=10)

    assert len(downloaded.data) == 262_144
    assert not downloaded.complete
    (stream,) = server.streams
    await asyncio.wait_for(stream.finished.wait(), 10)
    # The client closed the connection: the server's next write failed, long before 50 MB (what it
    # did send is the limit plus what the loopback socket buffers held).
    assert stream.client_left
    assert stream.sent < FIFTY_MB


async def test_a_404_is_unavailable_without_the_url(
    server: FileServer, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), pytest.raises(AttachmentUnavailable) as raised:
        await download_start(client, f"{server.url}{TOKEN_PATH}/missing", limit=1000, timeout_s=10)

    assert str(raised.value) == "the server answered 404"
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert "SECRET" not in own_log(caplog)


async def test_a_server_that_hangs_runs_into_the_deadline(
    server: FileServer, client: httpx.AsyncClient
) -> None:
    with pytest.raises(AttachmentUnavailable) as raised:
        await download_start(client, f"{server.url}/hang", limit=1000, timeout_s=0.3)

    assert str(raised.value) == "the download did not finish within 0.3 s"
    assert len(server.requests) == 1


async def test_a_trickling_server_runs_into_the_one_deadline(
    server: FileServer, client: httpx.AsyncClient
) -> None:
    # A byte every 20 ms never lets a per-read timeout fire: only the deadline for the whole
    # download ends it.
    with pytest.raises(AttachmentUnavailable) as raised:
        await download_start(client, f"{server.url}/trickle", limit=1000, timeout_s=0.3)

    assert str(raised.value) == "the download did not finish within 0.3 s"


async def test_a_refused_connection_is_unavailable_and_logs_no_url(caplog: pytest.LogCaptureFixture) -> None:
    # A port that was just free: nothing listens there.
    listener = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()

    async with httpx.AsyncClient() as http_client:
        with caplog.at_level(logging.DEBUG), pytest.raises(AttachmentUnavailable) as raised:
            await download_start(
                http_client, f"http://127.0.0.1:{port}{TOKEN_PATH}/f", limit=10, timeout_s=10
            )

    assert str(raised.value) == "the connection failed"
    assert own_log(caplog) == "attachment download failed: ConnectError"
    assert "SECRET" not in str(raised.value)


async def test_the_file_is_asked_for_uncompressed_and_a_compressed_one_is_refused(
    server: FileServer, client: httpx.AsyncClient
) -> None:
    # 200 KB of gzip are 200 MB of zeros: decompressing them to find the first 256 KB took 270 MB.
    with pytest.raises(AttachmentUnavailable) as raised:
        await download_start(client, f"{server.url}/gzip", limit=262_144, timeout_s=10)

    assert str(raised.value) == "the server sent the file compressed"
    assert server.requests[-1].headers["Accept-Encoding"] == "identity"


async def test_a_redirect_is_followed(server: FileServer, client: httpx.AsyncClient) -> None:
    downloaded = await download_start(client, f"{server.url}/moved", limit=100, timeout_s=10)

    assert downloaded.data == b"x" * 10
    assert downloaded.complete


async def test_a_token_url_that_works_is_read(server: FileServer, client: httpx.AsyncClient) -> None:
    downloaded = await download_start(client, f"{server.url}{TOKEN_PATH}/files/5", limit=100, timeout_s=10)

    assert downloaded.data == b"xxxxx"


@pytest.mark.parametrize(("size", "complete"), [(0, True), (1, False)])
async def test_a_limit_of_zero(
    server: FileServer, client: httpx.AsyncClient, size: int, complete: bool
) -> None:
    downloaded = await download_start(client, f"{server.url}/files/{size}", limit=0, timeout_s=10)

    assert downloaded.data == b""
    assert downloaded.complete is complete


async def test_a_negative_limit_is_a_programming_error(client: httpx.AsyncClient) -> None:
    with pytest.raises(ValueError, match="negative"):
        await download_start(client, "http://127.0.0.1:9/never", limit=-1, timeout_s=1)
