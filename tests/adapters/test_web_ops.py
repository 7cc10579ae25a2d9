"""The web server's operations endpoints: /healthz, /readyz and /metrics, on the real server."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from sqlalchemy.engine import make_url

from adapters.web import WebAdapter, WebOptions, create
from bot.app import build_metrics
from bot.backends.base import PreparedPrompt
from bot.backends.echo import EchoBackend
from bot.config import ChatConfig, ModelConfig, RateLimitConfig, Settings, WebConfig
from bot.engine import ChatEngine
from bot.errors import BackendError, StorageError
from bot.health import Readiness, backend_check
from bot.metrics import PrometheusMetrics
from bot.ports import SamplingSettings
from storage.db import Database
from storage.repository import ChatRepository
from tests.storage.conftest import Target, target

__all__ = ["target"]  # the fixture, imported to be used here

pytestmark = pytest.mark.timeout(60)

ADMIN_KEY = "admin-secret-123"


def make_engine(repository: ChatRepository, backend: EchoBackend, metrics: PrometheusMetrics) -> ChatEngine:
    engine = ChatEngine(
        repository,
        backend,
        ModelConfig(backend="echo"),
        ChatConfig(rate_limit=RateLimitConfig(messages=1000, per_seconds=60)),
        metrics=metrics,
    )
    metrics.watch_queue(lambda: engine.stats.in_flight, None)
    return engine


@asynccontextmanager
async def served(
    database: Database,
    *,
    backend: EchoBackend | None = None,
    readiness: Readiness | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    backend = backend or EchoBackend()
    metrics = PrometheusMetrics()
    repository = ChatRepository(database)
    engine = make_engine(repository, backend, metrics)
    readiness = readiness or Readiness({"database": database.ping, "backend": backend_check(backend)})
    adapter = WebAdapter(
        engine,
        repository,
        WebOptions(host="127.0.0.1", port=0, admin_api_key=ADMIN_KEY),
        readiness=readiness,
        metrics=metrics,
    )
    await adapter.start()
    try:
        async with httpx.AsyncClient(base_url=adapter.url, timeout=10.0) as client:
            yield client
    finally:
        await adapter.stop()
        await engine.close(grace_s=1.0)


class PingingEcho(EchoBackend):
    """An echo backend with the optional `ping()` of remote backends."""

    def __init__(self, answer: bool | Exception) -> None:
        self.answer = answer

    async def ping(self) -> bool:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class FailingEcho(EchoBackend):
    async def generate(self, prompt: PreparedPrompt, settings: SamplingSettings) -> AsyncGenerator[str, None]:
        raise BackendError("the model fell over")
        yield ""  # an async generator


async def test_healthz_needs_no_key(database: Database) -> None:
    async with served(database) as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_checks_the_database_and_the_backend(database: Database) -> None:
    async with served(database, backend=PingingEcho(True)) as client:
        response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "backend": "ok"}}


@pytest.mark.parametrize(
    ("answer", "reason"),
    [(False, "not ready"), (BackendError("server at 127.0.0.1:9 refused"), "BackendError: server at")],
)
async def test_readyz_is_503_when_the_backend_ping_fails(
    database: Database, answer: bool | Exception, reason: str
) -> None:
    async with served(database, backend=PingingEcho(answer)) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["backend"].startswith(reason)


class TcpProxy:
    """A loopback TCP relay to `upstream`; `cut()` closes it and every relayed connection, which
    is what the bot sees when the database server goes away."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        self._writers += [writer, up_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()


@pytest.mark.parametrize("target", ["postgresql"], indirect=True)
async def test_readyz_turns_503_when_the_database_goes_away(target: Target) -> None:
    url = make_url(target.url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    database = Database(
        url.set(port=proxy.port).render_as_string(hide_password=False), connect_args=target.connect_args
    )
    await database.start()
    try:
        async with served(database) as client:
            assert (await client.get("/readyz")).status_code == 200
            await proxy.cut()
            response = await client.get("/readyz")
    finally:
        await database.stop()
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["backend"] == "ok"
    assert checks["database"].startswith("StorageError")


async def test_readyz_is_503_when_a_check_hangs(database: Database) -> None:
    async def hangs() -> None:
        await asyncio.Event().wait()  # never set: no answer until the readiness check gives up

    readiness = Readiness({"database": hangs}, timeout_s=0.2)
    async with served(database, readiness=readiness) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "no answer within 0.2 s"}


async def test_a_stopped_database_is_not_ready(tmp_path: object) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/x.db")
    await database.start()
    await database.ping()
    await database.stop()
    with pytest.raises(StorageError):
        await database.ping()


def sample(metrics_text: str, name: str) -> float:
    """The value of one sample line (`name` with its labels) of the exposition text."""
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", metrics_text, re.MULTILINE)
    assert match is not None, f"{name} not in /metrics"
    return float(match.group(1))


async def test_metrics_count_messages_latency_tokens_and_errors(database: Database) -> None:
    async with served(database) as client:
        for text in ("hi", "yo", "hey there"):
            answer = await client.post("/api/channels/room/messages", json={"text": text})
            assert answer.json()["status"] == "answered"
        response = await client.get("/metrics")  # no key
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert sample(text, 'chinwag_messages_total{platform="web"}') == 3
    assert sample(text, "chinwag_reply_latency_seconds_count") == 3
    assert sample(text, 'chinwag_reply_latency_seconds_bucket{le="120.0"}') == 3
    # The echo backend streams one chunk per word: "echo[0]: hi" is 2, "echo[4]: hey there" is 3.
    assert sample(text, "chinwag_tokens_generated_total") == 2 + 2 + 3
    assert sample(text, 'chinwag_generation_errors_total{kind="backend"}') == 0
    assert sample(text, "chinwag_queue_depth") == 0


async def test_metrics_count_generation_errors(database: Database) -> None:
    async with served(database, backend=FailingEcho()) as client:
        answer = await client.post("/api/channels/room/messages", json={"text": "hi"})
        assert answer.json()["status"] == "failed"
        text = (await client.get("/metrics")).text
    assert sample(text, 'chinwag_generation_errors_total{kind="backend"}') == 1
    assert sample(text, "chinwag_reply_latency_seconds_count") == 0


def test_two_registries_in_one_process_do_not_collide() -> None:
    first, second = PrometheusMetrics(), PrometheusMetrics()
    first.message_handled("web")
    assert b'chinwag_messages_total{platform="web"} 1.0' in first.render()
    assert b"chinwag_messages_total{" not in second.render()


async def test_metrics_can_be_switched_off(database: Database) -> None:
    settings = Settings(web=WebConfig(port=0, metrics=False))
    assert build_metrics(settings) is None
    assert build_metrics(Settings(web=WebConfig(port=0))) is not None
    repository = ChatRepository(database)
    engine = make_engine(repository, EchoBackend(), PrometheusMetrics())
    adapter = create(settings.web, settings.model, engine, repository, metrics=PrometheusMetrics())
    assert adapter is not None
    await adapter.start()
    try:
        async with httpx.AsyncClient(base_url=adapter.url, timeout=10.0) as client:
            assert (await client.get("/metrics")).status_code == 404
            assert (await client.get("/healthz")).status_code == 200
    finally:
        await adapter.stop()
        await engine.close(grace_s=1.0)
