"""HTTP plumbing of the web server: the body-size limit, error shapes and access checks.

Nothing here knows about chats: these are the rules every route of the server shares.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bot.errors import StorageError
from bot.redact import redact

logger = logging.getLogger(__name__)

OPENAI_PREFIX = "/v1/"


# ---------------------------------------------------------------------------------------------
# The body-size limit


class _BodyTooLarge(HTTPException):
    """Raised from `receive` when a body without (or with a lying) Content-Length grows too big.

    An `HTTPException`, because FastAPI turns any other error while reading the body into a 400.
    """


class BodySizeLimit:
    """Rejects request bodies over their limit with 413, before or while they are read.

    The limit is `max_bytes`, or what `limit_for` says for a request (the chat API's messages
    carry attachments, so they may be larger than other requests). A declared Content-Length over
    it is refused before a byte of the body is read."""

    def __init__(self, app: ASGIApp, max_bytes: int, limit_for: Callable[[Scope], int] | None = None) -> None:
        self._app = app
        self._limit_for = limit_for if limit_for is not None else (lambda _scope: max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        max_bytes = self._limit_for(scope)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
            await _too_large(max_bytes)(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise _BodyTooLarge(413, _too_large_text(max_bytes))
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
            await _too_large(max_bytes)(scope, receive, send)


def _too_large_text(max_bytes: int) -> str:
    return f"request body too large (at most {max_bytes} bytes)"


def _too_large(max_bytes: int) -> JSONResponse:
    return JSONResponse({"error": _too_large_text(max_bytes)}, status_code=413)


# ---------------------------------------------------------------------------------------------
# Error shapes


def is_openai_path(request: Request) -> bool:
    """True for the OpenAI-compatible routes, whose clients expect OpenAI's error object."""
    return request.url.path.startswith(OPENAI_PREFIX)


def error_response(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """`{"error": message}` for the chat API, OpenAI's error object for `/v1/`."""
    if is_openai_path(request):
        kind = "authentication_error" if status == 401 else "invalid_request_error"
        if status >= 500:
            kind = "server_error"
        body: dict[str, Any] = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=status, headers=headers)


def describe_validation(error: RequestValidationError) -> tuple[str, list[dict[str, str]]]:
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
        elif item.get("type") == "string_pattern_mismatch" and "message_id" in location:
            message = "message id must be 1 to 128 of the characters A-Z a-z 0-9 _ -"
        details.append({"field": field or "body", "message": message})
    summary = "; ".join(f"{detail['field']}: {detail['message']}" for detail in details)
    return summary or "invalid request", details


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves `app` in the shapes above: HTTP errors, storage failures (503) and
    invalid requests (422 with details on the chat API, 400 on `/v1/` as OpenAI answers)."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return error_response(request, error.status_code, str(error.detail), dict(error.headers or {}))

    @app.exception_handler(StorageError)
    async def storage_error(request: Request, error: StorageError) -> JSONResponse:
        # The cause goes to the log; the client learns only that it may retry.
        # The path holds the channel id, a private one being its credential: never logged as is.
        logger.error(
            "storage failed for %s %s: %s", request.method, redact(request.url.path), redact(str(error))
        )
        return error_response(request, 503, "storage unavailable, please try again")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        summary, details = describe_validation(error)
        if is_openai_path(request):
            return error_response(request, 400, summary)
        return JSONResponse({"error": summary, "details": details}, status_code=422)


# ---------------------------------------------------------------------------------------------
# Access checks and client identity


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if any."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def key_matches(token: str | None, keys: Sequence[str]) -> bool:
    """Constant-time membership, so a key cannot be guessed byte by byte from response times."""
    if token is None:
        return False
    found = False
    for key in keys:
        found |= hmac.compare_digest(token.encode(), key.encode())
    return found


def is_loopback(request: Request) -> bool:
    """True when the client connected from this machine."""
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
