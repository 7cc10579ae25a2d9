"""The web adapter: the chat page, a small JSON/SSE API and an OpenAI-compatible endpoint.

A FastAPI app served by `uvicorn.Server` as a task in the application's own event loop (never
`uvicorn.run`, which would take the loop over). Requests become `ChatEvent`s for the engine; the
adapter touches no table: history is read through `ChatRepository.recent_messages`, the one
read-only seam the composition root allows.

Who may do what (the channel id is the capability):
- a *private* channel id (`p-` followed by 22 to 126 of `[A-Za-z0-9_-]`, what the chat page makes
  with 192 random bits and keeps in localStorage) belongs to whoever holds it: its holder may
  reset it and change its `/system` and `/temperature` settings, for that channel only. Holding
  the id already lets one read its whole history, so these rights add no new exposure;
- any other (named) channel id can be chatted in by anyone, but resetting it or changing its
  settings needs `Authorization: Bearer <web.admin_api_key>`;
- the admin key makes every request an admin one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import uvicorn
from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters.web_openai import Completer, build_openai_router
from adapters.web_ops import build_ops_router
from bot.config import ModelConfig, WebConfig
from bot.engine import ChatEngine
from bot.errors import ChinwagError, StorageError
from bot.events import ChatEvent
from bot.health import Readiness
from bot.metrics import PrometheusMetrics
from bot.ports import StoredMessage
from bot.reply import Reply, ReplyStatus

if TYPE_CHECKING:
    from bot.app import Services
    from bot.config import Settings

logger = logging.getLogger(__name__)

PLATFORM = "web"
STATIC_DIR = Path(__file__).resolve().parent / "static"
CHANNEL_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
_PRIVATE_CHANNEL = re.compile(r"p-[A-Za-z0-9_-]{22,126}")
MAX_HISTORY_LIMIT = 500
DEFAULT_SYSTEM_PROMPT = ModelConfig().system_prompt
# The page's scripts and styles are files of this server: nothing inline, nothing from elsewhere.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True, slots=True)
class WebOptions:
    """The `web:` settings this adapter reads; keys missing from `WebConfig` take these defaults."""

    host: str = "127.0.0.1"
    port: int = 8080
    cors_origins: tuple[str, ...] = ()
    admin_api_key: str | None = None
    api_keys: tuple[str, ...] = ()
    max_body_bytes: int = 64 * 1024

    @classmethod
    def from_config(cls, web: WebConfig) -> WebOptions:
        """The plain values of `settings.web` (secrets unwrapped here, and only here)."""
        return cls(
            host=web.host,
            port=web.port,
            cors_origins=web.cors_origins,
            admin_api_key=web.admin_api_key.get_secret_value() or None if web.admin_api_key else None,
            api_keys=tuple(key.get_secret_value() for key in web.api_keys if key.get_secret_value()),
            max_body_bytes=web.max_body_bytes,
        )


class HistoryReader(Protocol):
    """The read-only part of the repository this adapter may use."""

    async def recent_messages(
        self, channel_key: str, *, limit: int, max_chars: int | None = None
    ) -> list[StoredMessage]:
        """The newest `limit` messages, oldest first."""
        ...


# ---------------------------------------------------------------------------------------------
# Request and response models


class MessageIn(BaseModel):
    """`POST /api/channels/{id}/messages`."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=32_000, description="the message; commands like /help work too")
    author: str | None = Field(default=None, max_length=64, description="display name")
    message_id: str | None = Field(
        default=None, min_length=1, max_length=128, description="client id: a resend is answered once"
    )


class HistoryItem(BaseModel):
    """One stored message."""

    role: str
    content: str
    created_at: str


ChannelId = Annotated[
    str,
    PathParam(
        pattern=CHANNEL_ID_PATTERN,
        description="the conversation's id: 1 to 128 of A-Z a-z 0-9 _ -",
    ),
]


# ---------------------------------------------------------------------------------------------
# Middleware and error shapes


class _BodyTooLarge(HTTPException):
    """Raised from `receive` when a body without (or with a lying) Content-Length grows too big.

    An `HTTPException`, because FastAPI turns any other error while reading the body into a 400.
    """


class BodySizeLimit:
    """Rejects request bodies over `max_bytes` with 413, before or while they are read."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self._app = app
        self._max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self._max_bytes):
            await _too_large(self._max_bytes)(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._max_bytes:
                    raise _BodyTooLarge(413, _too_large_text(self._max_bytes))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            await _too_large(self._max_bytes)(scope, receive, send)


def _too_large_text(max_bytes: int) -> str:
    return f"request body too large (at most {max_bytes} bytes)"


def _too_large(max_bytes: int) -> JSONResponse:
    return JSONResponse({"error": _too_large_text(max_bytes)}, status_code=413)


def _openai_path(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


def _error_response(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """`{"error": message}` for the chat API, OpenAI's error object for `/v1/`."""
    if _openai_path(request):
        kind = "authentication_error" if status == 401 else "invalid_request_error"
        if status >= 500:
            kind = "server_error"
        body: dict[str, Any] = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=status, headers=headers)


def _describe_validation(error: RequestValidationError) -> tuple[str, list[dict[str, str]]]:
    """One readable line and a list of `{field, message}` for a 422."""
    details: list[dict[str, str]] = []
    for item in error.errors():
        location = [str(part) for part in item.get("loc", ())]
        field = ".".join(location[1:] if location and location[0] in {"body", "path", "query"} else location)
        message = str(item.get("msg", "invalid value"))
        if item.get("type") == "json_invalid":
            message = "malformed JSON: " + message.removeprefix("JSON decode error").lstrip(": ")
            field = "body"
        elif item.get("type") == "string_pattern_mismatch" and "channel_id" in location:
            message = "channel id must be 1 to 128 of the characters A-Z a-z 0-9 _ -"
        details.append({"field": field or "body", "message": message})
    summary = "; ".join(f"{detail['field']}: {detail['message']}" for detail in details)
    return summary or "invalid request", details


# ---------------------------------------------------------------------------------------------
# The app


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _key_matches(token: str | None, keys: Sequence[str]) -> bool:
    """Constant-time membership, so a key cannot be guessed byte by byte from response times."""
    if token is None:
        return False
    found = False
    for key in keys:
        found |= hmac.compare_digest(token.encode(), key.encode())
    return found


def is_private_channel(channel_id: str) -> bool:
    """True for the unguessable ids the chat page makes: their holder owns the channel."""
    return _PRIVATE_CHANNEL.fullmatch(channel_id) is not None


def is_loopback(request: Request) -> bool:
    """True when the client connected from this machine."""
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _sse(data: object, event: str | None = None) -> bytes:
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _wants_stream(request: Request, stream: bool) -> bool:
    return stream or "text/event-stream" in request.headers.get("accept", "")


class ClientPseudonym:
    """A stable, opaque author id per client address.

    The address, not the self-chosen channel id, names the user for the engine's rate limit (a
    flood cannot escape it by making up channel ids); it is keyed-hashed because author ids are
    stored with the messages, and addresses are personal data that a plain hash would not hide
    (there are only 2**32 IPv4 addresses). The key lives as long as the process, like the limiter.
    """

    def __init__(self) -> None:
        self._key = secrets.token_bytes(16)

    def __call__(self, request: Request) -> str:
        address = request.client.host if request.client else "unknown"
        return "ip-" + hmac.new(self._key, address.encode(), hashlib.sha256).hexdigest()[:16]


def _chat_router(
    engine: ChatEngine, history: HistoryReader, options: WebOptions, author_id: ClientPseudonym
) -> APIRouter:
    """The `/api/` routes of the chat page and of API clients."""
    router = APIRouter(prefix="")

    def admin_token_ok(request: Request) -> bool:
        return options.admin_api_key is not None and _key_matches(_bearer(request), [options.admin_api_key])

    def require_admin(request: Request) -> None:
        """401 without credentials, 403 with wrong ones (or when no admin key is configured)."""
        if options.admin_api_key is None:
            raise HTTPException(403, "this needs web.admin_api_key, which is not configured")
        token = _bearer(request)
        if token is None:
            raise HTTPException(401, "missing admin key", headers={"WWW-Authenticate": "Bearer"})
        if not admin_token_ok(request):
            raise HTTPException(403, "wrong admin key")

    def to_event(request: Request, channel_id: str, body: MessageIn, *, is_admin: bool) -> ChatEvent:
        return ChatEvent(
            platform=PLATFORM,
            channel=channel_id,
            author_id=author_id(request),
            author_name=(body.author or "web user").strip() or "web user",
            text=body.text,
            is_admin=is_admin,
            is_direct=True,
            message_id=body.message_id,
        )

    def submit(event: ChatEvent) -> Reply:
        try:
            return engine.handle(event)
        except ChinwagError as error:  # the engine is shutting down
            raise HTTPException(503, "the bot is shutting down") from error

    async def stream_reply(reply: Reply) -> AsyncIterator[bytes]:
        async for chunk in reply:
            yield _sse({"delta": chunk})
        await reply.text()
        yield _sse({"status": reply.status.value}, event="done")

    async def reply_response(request: Request, reply: Reply, stream: bool) -> Response:
        if _wants_stream(request, stream):
            return StreamingResponse(
                stream_reply(reply), media_type="text/event-stream", headers=_SSE_HEADERS
            )
        text = await reply.text()
        # A silent reply (a resent message, a dropped flood message) produces no message.
        return JSONResponse({"reply": None if reply.silent else text, "status": reply.status.value})

    @router.post("/api/channels/{channel_id}/messages", response_model=None)
    async def post_message(
        request: Request, channel_id: ChannelId, body: MessageIn, stream: bool = False
    ) -> Response:
        """Send a message; the reply as `{"reply", "status"}`, or as Server-Sent Events
        (`data: {"delta"}` per chunk, then `event: done` with the status) with
        `Accept: text/event-stream` or `?stream=true`."""
        is_admin = admin_token_ok(request) or is_private_channel(channel_id)
        reply = submit(to_event(request, channel_id, body, is_admin=is_admin))
        return await reply_response(request, reply, stream)

    @router.get("/api/channels/{channel_id}/messages")
    async def get_messages(
        channel_id: ChannelId, limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_LIMIT)] = 50
    ) -> dict[str, list[HistoryItem]]:
        """The channel's newest `limit` messages, oldest first."""
        stored = await history.recent_messages(f"{PLATFORM}:{channel_id}", limit=limit)
        return {
            "messages": [
                HistoryItem(role=item.role, content=item.content, created_at=item.created_at.isoformat())
                for item in stored
            ]
        }

    @router.post("/api/channels/{channel_id}/reset", response_model=None)
    async def reset(request: Request, channel_id: ChannelId) -> Response:
        """Clear the channel's history, in order with its pending messages (the engine's `/reset`).

        Needs the admin key, except for a private channel's own holder."""
        if not is_private_channel(channel_id):
            require_admin(request)
        reply = submit(to_event(request, channel_id, MessageIn(text="/reset"), is_admin=True))
        text = await reply.text()
        if reply.status in {ReplyStatus.NOTICE, ReplyStatus.DROPPED}:  # over the rate limit
            raise HTTPException(429, text or "too many requests, please wait")
        if reply.status is ReplyStatus.FAILED:  # e.g. the database is unreachable: nothing cleared
            raise HTTPException(503, text)
        return JSONResponse({"reply": text, "status": reply.status.value})

    @router.get("/api/health")
    async def health() -> dict[str, str]:
        """Liveness probe."""
        return {"status": "ok"}

    return router


def build_app(
    engine: ChatEngine,
    history: HistoryReader,
    options: WebOptions,
    *,
    model_name: str = "chinwag",
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    completer: Completer | None = None,
    readiness: Readiness | None = None,
    metrics: PrometheusMetrics | None = None,
) -> FastAPI:
    """The ASGI app: chat page at `/`, chat API under `/api/`, OpenAI-compatible under `/v1/`,
    `/healthz`, `/readyz` and `/metrics` (adapters/web_ops.py).

    `completer` answers `/v1/chat/completions`: `engine.complete` unless a test passes another.
    """
    app = FastAPI(title="Chinwag", docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return _error_response(request, error.status_code, str(error.detail), dict(error.headers or {}))

    @app.exception_handler(StorageError)
    async def storage_error(request: Request, error: StorageError) -> JSONResponse:
        # The cause goes to the log; the client learns only that it may retry.
        logger.error("storage failed for %s %s: %s", request.method, request.url.path, error)
        return _error_response(request, 503, "storage unavailable, please try again")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        summary, details = _describe_validation(error)
        if _openai_path(request):
            return _error_response(request, 400, summary)
        return JSONResponse({"error": summary, "details": details}, status_code=422)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_PAGE_HEADERS)

    def openai_authorized(request: Request) -> bool:
        """API keys when any are configured; without keys, only clients on this machine."""
        keys = [*options.api_keys, *([options.admin_api_key] if options.admin_api_key else [])]
        if keys:
            return _key_matches(_bearer(request), keys)
        return is_loopback(request)

    author_id = ClientPseudonym()
    app.include_router(_chat_router(engine, history, options, author_id))
    app.include_router(
        build_openai_router(
            completer if completer is not None else engine.complete,
            authorized=openai_authorized,
            user_key=lambda request: f"{PLATFORM}:{author_id(request)}",
            model_name=model_name,
            default_system_prompt=system_prompt,
        )
    )
    app.include_router(build_ops_router(readiness, metrics))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    if options.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(options.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Accept"],
            max_age=600,
        )
    # Outermost, so an oversized body is refused before anything else reads it.
    app.add_middleware(BodySizeLimit, max_bytes=options.max_body_bytes)
    return app


# ---------------------------------------------------------------------------------------------
# The adapter


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
        engine: ChatEngine,
        history: HistoryReader,
        options: WebOptions,
        *,
        model_name: str = "chinwag",
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        completer: Completer | None = None,
        readiness: Readiness | None = None,
        metrics: PrometheusMetrics | None = None,
    ) -> None:
        self._options = options
        self.app = build_app(
            engine,
            history,
            options,
            model_name=model_name,
            system_prompt=system_prompt,
            completer=completer,
            readiness=readiness,
            metrics=metrics,
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
            timeout_graceful_shutdown=5,
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
        """Stop accepting connections, let open responses end (up to 5 s), then return. Idempotent."""
        server, task = self._server, self._task
        self._task = None
        if server is not None:
            server.should_exit = True
        if task is not None:
            await task
        self._server = None


def create(settings: Settings, services: Services) -> WebAdapter | None:
    """The web adapter of the composition root (`bot.app.build_adapters`)."""
    from storage.repository import ChatRepository

    options = WebOptions.from_config(settings.web)
    model = settings.model
    return WebAdapter(
        services.engine,
        ChatRepository(services.database),
        options,
        model_name=str(model.name or model.backend),
        system_prompt=model.system_prompt,
        readiness=services.readiness,
        metrics=services.metrics if settings.web.metrics else None,
    )
