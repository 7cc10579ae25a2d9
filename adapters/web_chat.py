"""The chat page and its JSON/SSE API under `/api/`.

Requests become `ChatEvent`s for the engine; the stored history is only read, through the
`HistoryReader` port.

Who may do what (the channel id is the capability):
- a *private* channel id (`p-` followed by 22 to 126 of `[A-Za-z0-9_-]`, what the chat page makes
  with 192 random bits and keeps in localStorage) belongs to whoever holds it: its holder may
  reset it and change its `/system` and `/temperature` settings, for that channel only. Holding
  the id already lets one read its whole history, so these rights add no new exposure;
- any other (named) channel id can be chatted in by anyone, but resetting it or changing its
  settings needs `Authorization: Bearer <web.admin_api_key>`;
- the admin key makes every request an admin one.

Stopping a channel's running reply (`POST .../stop`) and deleting a message of it (`DELETE
.../messages/{message_id}`) follow the reset's rule: the private channel's holder, or the admin
key. A delete only reaches the messages of the channel in its path.

A message may carry files (`attachments`, adapters/web_attachments.py); they become the event's
`Attachment`s, read by the engine like any platform's.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import Scope

from adapters.delivery import QUEUE_NOTICE_AFTER_S
from adapters.web_attachments import AttachmentIn, BadAttachment, to_attachments
from adapters.web_http import ClientPseudonym, bearer_token, key_matches
from adapters.web_streams import Abandoned, InLine, OpenReplies
from bot.errors import ChinwagError
from bot.events import Attachment, ChatEvent
from bot.failures import CUT_RULES, SHUTDOWN_NOTICE, notice_after
from bot.ports import ChatService, HistoryReader
from bot.reply import Reply, ReplyStatus

PLATFORM = "web"
STATIC_DIR = Path(__file__).resolve().parent / "static"
CHANNEL_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
# A client's message id goes into a URL path to delete the message: the channel id's alphabet.
MESSAGE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
_MESSAGE_POST_PATH = re.compile(r"/api/channels/[^/]+/messages")
_PRIVATE_CHANNEL = re.compile(r"p-[A-Za-z0-9_-]{22,126}")
MAX_HISTORY_LIMIT = 500
# The page's scripts and styles are files of this server: nothing inline, nothing from elsewhere.
# Images may also be `blob:` URLs: the page's thumbnails of the files the user picks.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# The engine's notices after a reply's kept text when it was cut short: a stream sends `cut` in
# its `done` event instead, and the page shows its own marker (as it does after a reload).
_CUT_NOTICES = frozenset(rule.notice for rule in CUT_RULES.values())


class MessageIn(BaseModel):
    """`POST /api/channels/{id}/messages`."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(
        max_length=32_000,
        description="the message (commands like /help work too); with attachments their caption, maybe empty",
    )
    author: str | None = Field(default=None, max_length=64, description="display name")
    message_id: str | None = Field(
        default=None,
        pattern=MESSAGE_ID_PATTERN,
        description=(
            "client id, 1 to 128 of A-Z a-z 0-9 _ -: a resend is answered once, and "
            "`DELETE .../messages/{message_id}` deletes the message (one sent without it cannot be deleted)"
        ),
    )
    attachments: list[AttachmentIn] = Field(
        default_factory=list, description="files sent with the message (at most `chat.max_attachments`)"
    )


class HistoryItem(BaseModel):
    """One stored message. `cut` for a reply cut short ("stopped", "timeout", "shutdown"):
    `content` is what was written until then, without the notice the user read after it."""

    role: str
    content: str
    created_at: str
    cut: str | None = None
    message_id: str | None = None
    """A user message's client id (what `DELETE .../messages/{message_id}` takes), when it had one."""
    attached: str | None = None
    """What a user message's files became for the model: their names and texts, `[image: NAME]`."""


ChannelId = Annotated[
    str,
    PathParam(
        pattern=CHANNEL_ID_PATTERN,
        description="the conversation's id: 1 to 128 of A-Z a-z 0-9 _ -",
    ),
]


MessageId = Annotated[
    str,
    PathParam(pattern=MESSAGE_ID_PATTERN, description="the `message_id` the message was sent with"),
]


def is_message_post(scope: Scope) -> bool:
    """True for `POST /api/channels/{id}/messages`, whose body may carry files."""
    return scope.get("method") == "POST" and _MESSAGE_POST_PATH.fullmatch(scope.get("path", "")) is not None


def is_private_channel(channel_id: str) -> bool:
    """True for the unguessable ids the chat page makes: their holder owns the channel."""
    return _PRIVATE_CHANNEL.fullmatch(channel_id) is not None


def admin_key_ok(request: Request, admin_api_key: str | None) -> bool:
    """True when the request carries `web.admin_api_key` (never without one configured)."""
    return admin_api_key is not None and key_matches(bearer_token(request), [admin_api_key])


def require_admin_key(request: Request, admin_api_key: str | None) -> None:
    """401 without credentials, 403 with wrong ones (or when no admin key is configured)."""
    if admin_api_key is None:
        raise HTTPException(403, "this needs web.admin_api_key, which is not configured")
    if bearer_token(request) is None:
        raise HTTPException(401, "missing admin key", headers={"WWW-Authenticate": "Bearer"})
    if not admin_key_ok(request, admin_api_key):
        raise HTTPException(403, "wrong admin key")


def reset_http_status(status: ReplyStatus) -> int:
    """The HTTP status answering a `/reset` that ended with `status`.

    A reset overtaken by a later reset of the same channel (`SUPERSEDED`) is 200: the later
    reset, already queued, clears the channel before anything the client sends next. A notice or
    a dropped reset is the rate limit (429); a failure (e.g. the database is unreachable) cleared
    nothing (503).
    """
    if status in {ReplyStatus.NOTICE, ReplyStatus.DROPPED}:
        return 429
    if status is ReplyStatus.FAILED:
        return 503
    return 200


def _sse(data: object, event: str | None = None) -> bytes:
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _wants_stream(request: Request, stream: bool) -> bool:
    return stream or "text/event-stream" in request.headers.get("accept", "")


def _outcome(reply: Reply) -> dict[str, str]:
    """A finished reply's status, and its cut when it was cut short."""
    outcome = {"status": reply.status.value}
    if reply.cut is not None:
        outcome["cut"] = reply.cut.value
    return outcome


async def _stream_reply(
    replies: OpenReplies, reply: Reply, channel_key: str, queue_notice_after_s: float
) -> AsyncIterator[bytes]:
    """`reply` as Server-Sent Events: `queue` with its `position` while it waits long in the
    model's queue (`null` once it left it), a `delta` per chunk, then `done` with its outcome."""
    held: str | None = None  # a chunk that may be the cut notice: sent only if text follows
    try:
        async for chunk in replies.updates(reply, channel_key, queue_notice_after_s):
            if isinstance(chunk, InLine):
                yield _sse({"position": chunk.position}, event="queue")
                continue
            if held is not None:
                yield _sse({"delta": held})
                held = None
            if chunk in _CUT_NOTICES:
                held = chunk
            else:
                yield _sse({"delta": chunk})
    except Abandoned:  # shutdown could not wait for it: a last word, never a broken stream
        yield _sse({"delta": notice_after(reply, SHUTDOWN_NOTICE)})
        yield _sse({"status": ReplyStatus.FAILED.value}, event="done")
        return
    if held is not None and reply.cut is None:
        yield _sse({"delta": held})
    yield _sse(_outcome(reply), event="done")


async def _whole_text(replies: OpenReplies, reply: Reply, channel_key: str) -> str:
    """`reply`'s text once done; 503 when shutdown gave up on it."""
    try:
        return await replies.text(reply, channel_key)
    except Abandoned as error:
        raise HTTPException(503, "the bot is shutting down") from error


def build_chat_router(
    engine: ChatService,
    history: HistoryReader,
    admin_api_key: str | None,
    author_id: ClientPseudonym,
    open_replies: OpenReplies | None = None,
    *,
    queue_notice_after_s: float = QUEUE_NOTICE_AFTER_S,
    max_attachments: int = 4,
) -> APIRouter:
    """The chat page at `/` and the `/api/` routes of the page and of API clients. The replies
    clients wait for are read through `open_replies`, which the adapter drains at shutdown. A
    streamed reply that waits in the model's queue for `queue_notice_after_s` gets its place.
    A message may carry `max_attachments` files."""
    router = APIRouter()
    replies = open_replies if open_replies is not None else OpenReplies()

    def admin_token_ok(request: Request) -> bool:
        return admin_key_ok(request, admin_api_key)

    def require_admin(request: Request) -> None:
        require_admin_key(request, admin_api_key)

    def to_event(
        request: Request,
        channel_id: str,
        body: MessageIn,
        *,
        is_admin: bool,
        attachments: tuple[Attachment, ...] = (),
    ) -> ChatEvent:
        """The event of a request: staff with the admin key (past access lists and quotas); the
        holder of a private channel is admin of it (`is_admin`), not staff."""
        return ChatEvent(
            platform=PLATFORM,
            channel=channel_id,
            author_id=author_id(request),
            author_name=(body.author or "web user").strip() or "web user",
            text=body.text,
            is_admin=is_admin,
            is_direct=True,
            message_id=body.message_id,
            is_staff=admin_token_ok(request),
            attachments=attachments,
        )

    def submit(event: ChatEvent) -> Reply:
        try:
            return engine.handle(event)
        except ChinwagError as error:  # the engine is shutting down
            raise HTTPException(503, "the bot is shutting down") from error

    @router.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_PAGE_HEADERS)

    @router.post("/api/channels/{channel_id}/messages", response_model=None)
    async def post_message(
        request: Request, channel_id: ChannelId, body: MessageIn, stream: bool = False
    ) -> Response:
        """Send a message; the reply as `{"reply", "status"}`, or as Server-Sent Events
        (`data: {"delta"}` per chunk, then `event: done` with the status) with
        `Accept: text/event-stream` or `?stream=true`. A reply cut short (Stop, a timeout,
        shutdown) also has `"cut"`; its stream leaves the cut's notice out (the page marks it).
        While a streamed reply waits long in the model's queue, `event: queue` events give its
        place (`{"position": 3}`, 1: next), and `{"position": null}` once it left the queue.
        Files come as `attachments`: `[{"name", "type", "data"}]`, `data` in base64; 400 for more
        than `chat.max_attachments` of them or one that does not decode."""
        try:
            attachments = to_attachments(body.attachments, max_attachments)
        except BadAttachment as error:
            raise HTTPException(400, str(error)) from None
        is_admin = admin_token_ok(request) or is_private_channel(channel_id)
        event = to_event(request, channel_id, body, is_admin=is_admin, attachments=attachments)
        reply = submit(event)
        if _wants_stream(request, stream):
            events = _stream_reply(replies, reply, event.channel_key, queue_notice_after_s)
            return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
        text = await _whole_text(replies, reply, event.channel_key)
        # A silent reply (a resent message, a dropped flood message) produces no message.
        return JSONResponse({"reply": None if reply.silent else text, **_outcome(reply)})

    @router.get("/api/channels/{channel_id}/messages")
    async def get_messages(
        channel_id: ChannelId, limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_LIMIT)] = 50
    ) -> dict[str, list[HistoryItem]]:
        """The channel's newest `limit` messages, oldest first."""
        stored = await history.recent_messages(f"{PLATFORM}:{channel_id}", limit=limit)
        return {
            "messages": [
                HistoryItem(
                    role=item.role,
                    content=item.content,
                    created_at=item.created_at.isoformat(),
                    cut=item.cut.value if item.cut is not None else None,
                    message_id=item.platform_message_id if item.role == "user" else None,
                    attached=item.attached,
                )
                for item in stored
            ]
        }

    @router.post("/api/channels/{channel_id}/stop")
    async def stop(request: Request, channel_id: ChannelId) -> dict[str, bool]:
        """Stop the reply being generated in the channel now: the text written so far is kept
        (stored, marked `"cut": "stopped"`) and the reply's stream ends with it. `{"stopped":
        false}` when no reply of the channel is being generated. Needs the admin key, except for
        a private channel's own holder."""
        if not is_private_channel(channel_id):
            require_admin(request)
        return {"stopped": engine.stop(f"{PLATFORM}:{channel_id}")}

    @router.post("/api/channels/{channel_id}/reset", response_model=None)
    async def reset(request: Request, channel_id: ChannelId) -> Response:
        """Clear the channel's history, in order with its pending messages (the engine's `/reset`).

        Needs the admin key, except for a private channel's own holder."""
        if not is_private_channel(channel_id):
            require_admin(request)
        event = to_event(request, channel_id, MessageIn(text="/reset"), is_admin=True)
        reply = submit(event)
        text = await _whole_text(replies, reply, event.channel_key)
        status = reset_http_status(reply.status)
        if status == 429:
            raise HTTPException(429, text or "too many requests, please wait")
        if status != 200:
            raise HTTPException(status, text)
        return JSONResponse({"reply": text, "status": reply.status.value})

    @router.get("/api/health")
    async def health() -> dict[str, str]:
        """Liveness probe."""
        return {"status": "ok"}

    return router
