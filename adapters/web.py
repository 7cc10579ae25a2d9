"""The web adapter: the chat page, a small JSON/SSE API and an OpenAI-compatible endpoint.

A FastAPI app (adapters/web_app.py) served by `uvicorn.Server` as a task in the application's own
event loop (never `uvicorn.run`, which would take the loop over). The adapter touches no table:
it reads history through the `HistoryReader` port the composition root hands it.

The SSE replies stream the engine's chunks as they come and need none of the chat platforms'
delivery path (edit pacing, typing, splitting, retries): a browser takes any length at any rate.

Shutdown (`stop`) lets open chat replies finish for `drain_s`, then stops them keeping their text
(adapters/web_streams.py), so every stream ends with its `done` event and uvicorn has no response
left to cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import socket
from collections.abc import Iterator

import uvicorn

from adapters.web_app import DEFAULT_MODEL_NAME, DEFAULT_SYSTEM_PROMPT, build_app
from adapters.web_openai import served_model_name
from adapters.web_options import WebOptions
from adapters.web_streams import ABANDON_SETTLE_S, STOP_SETTLE_S, OpenReplies
from bot.config import ChatConfig, ModelConfig, WebConfig
from bot.errors import ChinwagError
from bot.health import Readiness
from bot.metrics import PrometheusMetrics
from bot.ports import ChatService, HistoryReader

# WebOptions is part of this module's interface (callers that build a `WebAdapter` name it).
__all__ = ["WebAdapter", "WebOptions", "create", "ensure_port_free"]

logger = logging.getLogger(__name__)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handlers: SIGINT/SIGTERM belong to the application."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class WebAdapter:
    """Serves `build_app` on `options.host:options.port` inside the running event loop."""

    name = "web"

    def __init__(
        self,
        engine: ChatService,
        history: HistoryReader,
        options: WebOptions,
        *,
        model_name: str = DEFAULT_MODEL_NAME,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        readiness: Readiness | None = None,
        metrics: PrometheusMetrics | None = None,
    ) -> None:
        self._options = options
        self._engine = engine
        self._open_replies = OpenReplies()
        self.app = build_app(
            engine,
            history,
            options,
            model_name=model_name,
            system_prompt=system_prompt,
            readiness=readiness,
            metrics=metrics,
            open_replies=self._open_replies,
        )
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0). Only while started."""
        server = self._server
        if server is None or not server.started or not server.servers:
            raise RuntimeError("the web adapter is not started")
        sockets = server.servers[0].sockets
        return int(sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """The base URL, e.g. `http://127.0.0.1:8080`."""
        host = self._options.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving; returns once the socket listens. Raises `ChinwagError` if the
        server cannot start (e.g. the port is taken)."""
        if self._task is not None:
            return
        config = uvicorn.Config(
            self.app,
            host=self._options.host,
            port=self._options.port,
            lifespan="off",
            access_log=False,  # request lines would carry channel ids, which are credentials
            log_level="warning",
            # Only a backstop: `stop` ends every chat reply within this (the OpenAI API's
            # completions are not tracked; whatever is still open then is cancelled).
            timeout_graceful_shutdown=math.ceil(self._options.drain_s + STOP_SETTLE_S + ABANDON_SETTLE_S + 2),
            server_header=False,
        )
        server = _EmbeddedServer(config)
        self._server = server
        self._task = asyncio.create_task(self._serve(server), name="chinwag:web")
        while not server.started:
            if self._task.done():
                failure = self._failure
                await self.stop()
                raise ChinwagError(
                    f"the web server could not listen on {self._options.host}:{self._options.port}"
                ) from failure
            await asyncio.sleep(0.01)
        logger.info("web chat at %s/", self.url)

    async def _serve(self, server: _EmbeddedServer) -> None:
        # uvicorn calls sys.exit when it cannot bind; a SystemExit escaping a task would stop the
        # whole event loop, so it is kept here and reported by `start`.
        try:
            await server.serve()
        except SystemExit as error:
            self._failure = error
        except Exception as error:
            self._failure = error
            logger.exception("the web server failed")

    async def stop(self) -> None:
        """Stop accepting connections; let open chat replies finish for `drain_s`, then stop them
        (their text kept) so each client gets its final event; return once the server is down.
        Idempotent."""
        server, task = self._server, self._task
        self._task = None
        if server is not None:
            server.should_exit = True  # uvicorn closes the listening socket and idle connections
        if task is not None:
            await self._open_replies.drain(self._options.drain_s, self._engine.stop)
            await task
        self._server = None


def ensure_port_free(host: str, port: int) -> None:
    """Pre-flight for start-up: bind `host:port` (every address `host` resolves to) and let go.

    Called before the model loads, so a port already taken (a second `make run`) fails in a
    moment, naming `web.port`, instead of after the load. Raises `ChinwagError` when a bind
    fails; port 0 (any free port) always passes. A port taken between this check and the real
    bind still fails later, in `WebAdapter.start`.
    """
    if port == 0:
        return
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise ChinwagError(f"web.host: cannot resolve {host!r} ({error.strerror})") from None
    for family, kind, protocol, _name, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            # As asyncio's create_server (under uvicorn) binds: SO_REUSEADDR, so a port in
            # TIME_WAIT passes and a listener does not; IPv6 sockets IPv6-only; an IPv6 address
            # the machine lacks is skipped.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRNOTAVAIL and family == socket.AF_INET6:
                    continue
                if error.errno == errno.EADDRINUSE:
                    reason = "the port is already in use (is another Chinwag running?)"
                else:
                    reason = error.strerror or type(error).__name__
                raise ChinwagError(
                    f"the web server cannot listen on {where}: {reason}; stop the other program "
                    f"or set web.port (now {port}) in the config file to a free port"
                ) from None


def create(
    web: WebConfig,
    model: ModelConfig,
    engine: ChatService,
    history: HistoryReader,
    *,
    chat: ChatConfig | None = None,
    readiness: Readiness | None = None,
    metrics: PrometheusMetrics | None = None,
) -> WebAdapter | None:
    """The web adapter of the composition root. `chat` gives the attachment limits the API checks
    (`ChatConfig`'s defaults without it). `metrics` is served at `/metrics` only when
    `web.metrics` is on. Never None: the web server needs no token (the `| None` is the
    adapter factories' shared shape)."""
    return WebAdapter(
        engine,
        history,
        WebOptions.from_config(web, chat),
        model_name=served_model_name(model),
        system_prompt=model.system_prompt,
        readiness=readiness,
        metrics=metrics if web.metrics else None,
    )
