"""The web server's ASGI app: every router of the web adapter, its error shapes and middleware."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Scope

from adapters.web_chat import PLATFORM, STATIC_DIR, build_chat_router, is_message_post
from adapters.web_http import (
    BodySizeLimit,
    ClientPseudonym,
    bearer_token,
    install_error_handlers,
    is_loopback,
    key_matches,
)
from adapters.web_messages import build_messages_router
from adapters.web_openai import build_openai_router
from adapters.web_ops import build_ops_router
from adapters.web_options import WebOptions
from adapters.web_streams import OpenReplies
from bot.config import ModelConfig
from bot.health import Readiness
from bot.metrics import PrometheusMetrics
from bot.ports import ChatService, HistoryReader

DEFAULT_MODEL_NAME = "chinwag"
DEFAULT_SYSTEM_PROMPT = ModelConfig().system_prompt


def build_app(
    engine: ChatService,
    history: HistoryReader,
    options: WebOptions,
    *,
    model_name: str = DEFAULT_MODEL_NAME,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    readiness: Readiness | None = None,
    metrics: PrometheusMetrics | None = None,
    open_replies: OpenReplies | None = None,
) -> FastAPI:
    """The ASGI app: chat page at `/`, chat API under `/api/` (adapters/web_chat.py),
    OpenAI-compatible under `/v1/` answered by `engine.complete` (adapters/web_openai.py),
    `/healthz`, `/readyz` and `/metrics` (adapters/web_ops.py). The chat API reads the replies
    its clients wait for through `open_replies` (for the adapter's shutdown)."""
    app = FastAPI(title="Chinwag", docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    install_error_handlers(app)

    def openai_authorized(request: Request) -> bool:
        """API keys when any are configured; without keys, only clients on this machine."""
        keys = [*options.api_keys, *([options.admin_api_key] if options.admin_api_key else [])]
        if keys:
            return key_matches(bearer_token(request), keys)
        return is_loopback(request)

    # One pseudonym for both APIs, so a client shares one rate limit across them.
    author_id = ClientPseudonym()
    app.include_router(
        build_chat_router(
            engine,
            history,
            options.admin_api_key,
            author_id,
            open_replies,
            max_attachments=options.max_attachments,
        )
    )
    app.include_router(
        build_messages_router(
            engine,
            options.admin_api_key,
            max_attachments=options.max_attachments,
            max_upload_bytes=options.max_upload_bytes,
        )
    )
    app.include_router(
        build_openai_router(
            engine.complete,
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
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Accept"],
            max_age=600,
        )

    def body_limit(scope: Scope) -> int:
        """A chat message carries its files in its body; every other request is small."""
        return options.max_upload_bytes if is_message_post(scope) else options.max_body_bytes

    # Outermost, so an oversized body is refused before anything else reads it.
    app.add_middleware(BodySizeLimit, max_bytes=options.max_body_bytes, limit_for=body_limit)
    return app
