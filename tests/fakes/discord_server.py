"""A fake Discord (REST API + gateway websocket, aiohttp on 127.0.0.1) for running the real discord.py.

REST: what login and the adapter call (`/users/@me`, `/oauth2/applications/@me`, create/edit
messages, typing, message history, global application commands, interaction callbacks), answered
with `Content-Type: application/json` exactly (discord.py parses nothing else). Gateway: HELLO →
IDENTIFY → READY → GUILD_CREATE, heartbeats acknowledged, then MESSAGE_CREATE / INTERACTION_CREATE
dispatches; every dispatch is kept in the session's log so a RESUME after `drop_connection` replays
what the client missed. Faults on demand: 429 with `Via` and `retry_after`, like Discord's.
Tests push what users type with `push_message` and assert on `sent` (what the bot posted).

Files and changes: `add_file` serves an attachment over HTTP (`/attachments/...`, a signed-looking
URL like the CDN's), streamed in chunks with its `Content-Length`: a body given whole, a generated
body of any size (only what the client reads is ever produced; `ServedFile.bytes_sent` counts what
was written), or one that hangs after the headers. `edit_message`, `delete_messages` and
`partial_update` dispatch MESSAGE_UPDATE / MESSAGE_DELETE / MESSAGE_DELETE_BULK as Discord does;
with `announce_bot_edits` the bot's own edits dispatch a MESSAGE_UPDATE too, as on Discord (off by
default: most tests need not see the bot's streaming echoed back).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

BOT_ID = 900_000_000_000_000_001
APPLICATION_ID = 900_000_000_000_000_002
OWNER_ID = 900_000_000_000_000_003
GUILD_ID = 800_000_000_000_000_001
MANAGER_ROLE = 800_000_000_000_000_002  # Manage Server
ADMIN_ROLE = 800_000_000_000_000_003  # Administrator
MEMBER_ROLE = 800_000_000_000_000_004  # "Regulars": no admin bits (for access by role)
UNKNOWN_ROLE = 800_000_000_000_000_099  # a role id no GUILD_CREATE names
DISCORD_EPOCH_MS = 1_420_070_400_000
MANAGE_GUILD = 1 << 5
ADMINISTRATOR = 1 << 3
# What @everyone may do on a fresh server (view, send, read history, …): no admin bits.
EVERYONE_PERMISSIONS = 104_324_673
_JSON = "application/json"  # exactly: discord.py ignores a body typed `application/json; charset=utf-8`
_FILE_CHUNK_BYTES = 64 * 1024


@dataclass
class SentMessage:
    """A message the bot posted: its current content (after edits) and every version with its time."""

    channel_id: int
    id: int
    content: str
    reference: int | None
    allowed_mentions: dict[str, Any] | None
    versions: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class Call:
    """One REST request the bot made."""

    method: str
    path: str
    body: Any
    at: float


@dataclass
class ServedFile:
    """An attachment the fake serves, and what its downloads did.

    The body is `data`, or, when `data` is None, `size` bytes of `filler` repeated (made chunk by
    chunk as it is sent: a 50 MB file costs the fake one chunk). `hang`: the headers are sent, then
    nothing until the fake stops. `bytes_sent` counts the body bytes handed to the connection,
    `completed` the downloads that sent the whole body, `active` the downloads still running."""

    id: int
    filename: str
    content_type: str | None
    size: int
    data: bytes | None = None
    filler: bytes = b"x"
    hang: bool = False
    requests: int = 0
    bytes_sent: int = 0
    completed: int = 0
    active: int = 0

    def chunks(self) -> AsyncIterator[bytes]:
        return _body_chunks(self)


async def _body_chunks(served: ServedFile) -> AsyncIterator[bytes]:
    if served.data is not None:
        for start in range(0, len(served.data), _FILE_CHUNK_BYTES):
            yield served.data[start : start + _FILE_CHUNK_BYTES]
        return
    block = (served.filler * (_FILE_CHUNK_BYTES // len(served.filler) + 1))[:_FILE_CHUNK_BYTES]
    for start in range(0, served.size, _FILE_CHUNK_BYTES):
        yield block[: min(_FILE_CHUNK_BYTES, served.size - start)]


@dataclass
class _Fault:
    method: str
    path_suffix: str
    retry_after: float
    remaining: int


# Low bits of every id: ids made in the same millisecond still differ.
_SEQUENCE = itertools.count()


def snowflake(at_ms: float | None = None) -> int:
    """A Discord id for the time `at_ms` (now by default); ids made later compare greater."""
    ms = int(at_ms if at_ms is not None else time.time() * 1000)
    return ((ms - DISCORD_EPOCH_MS) << 22) | (next(_SEQUENCE) % (1 << 22))


def user_payload(user_id: int, name: str, *, bot: bool = False) -> dict[str, Any]:
    """A user object as the gateway sends it."""
    return {
        "id": str(user_id),
        "username": name.lower(),
        "global_name": name,
        "discriminator": "0",
        "avatar": None,
        "bot": bot,
    }


def member_payload(user: dict[str, Any] | None, roles: tuple[int, ...] = ()) -> dict[str, Any]:
    """A guild member object with the given role ids (without @everyone, as Discord sends it): with
    `user` as in GUILD_CREATE's members, without as in MESSAGE_CREATE's `member`. discord.py
    requires `roles` and `flags`."""
    member: dict[str, Any] = {
        "roles": [str(role) for role in roles],
        "flags": 0,
        "joined_at": "2024-01-01T00:00:00+00:00",
        "deaf": False,
        "mute": False,
    }
    if user is not None:
        member["user"] = user
    return member


def guild_payload(
    guild_id: int = GUILD_ID,
    channel_ids: tuple[int, ...] = (),
    members: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    """A GUILD_CREATE body: @everyone (id = guild id), a Manage Server role, an Administrator role
    and a plain member role (`MEMBER_ROLE`); `members` (see `member_payload`) are cached by the
    client with their roles."""

    def role(role_id: int, name: str, permissions: int, position: int) -> dict[str, Any]:
        return {
            "id": str(role_id),
            "name": name,
            "permissions": str(permissions),
            "position": position,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }

    return {
        "id": str(guild_id),
        "name": "Test server",
        "owner_id": str(OWNER_ID),
        "unavailable": False,
        "member_count": 3 + len(members),
        "features": [],
        "roles": [
            role(guild_id, "@everyone", EVERYONE_PERMISSIONS, 0),
            role(MANAGER_ROLE, "Managers", EVERYONE_PERMISSIONS | MANAGE_GUILD, 1),
            role(ADMIN_ROLE, "Admins", ADMINISTRATOR, 2),
            role(MEMBER_ROLE, "Regulars", EVERYONE_PERMISSIONS, 3),
        ],
        "channels": [
            {
                "id": str(channel_id),
                "type": 0,
                "name": f"chat-{index}",
                "position": index,
                "guild_id": str(guild_id),
                "permission_overwrites": [],
            }
            for index, channel_id in enumerate(channel_ids)
        ],
        "members": list(members),
        "presences": [],
        "threads": [],
        "voice_states": [],
        "emojis": [],
        "stickers": [],
    }


def message_payload(
    channel_id: int,
    content: str,
    *,
    author: dict[str, Any],
    guild_id: int | None = None,
    roles: tuple[int, ...] = (),
    mentions: tuple[dict[str, Any], ...] = (),
    referenced: dict[str, Any] | None = None,
    message_type: int | None = None,
    message_id: int | None = None,
) -> dict[str, Any]:
    """A MESSAGE_CREATE body; without `guild_id` it is a DM. Guild messages carry a `member` object
    (with `roles` and `flags`, which discord.py requires)."""
    payload: dict[str, Any] = {
        "id": str(message_id if message_id is not None else snowflake()),
        "channel_id": str(channel_id),
        "author": author,
        "content": content,
        "timestamp": datetime.now(UTC).isoformat(),
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": list(mentions),
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": False,
        "type": message_type if message_type is not None else (19 if referenced else 0),
        "flags": 0,
    }
    if guild_id is not None:
        payload["guild_id"] = str(guild_id)
        payload["member"] = member_payload(None, roles)
    if referenced is not None:
        payload["message_reference"] = {
            "type": 0,
            "message_id": referenced["id"],
            "channel_id": str(channel_id),
            **({"guild_id": str(guild_id)} if guild_id is not None else {}),
        }
        payload["referenced_message"] = referenced
    return payload


class FakeDiscord:
    """The fake server. Use `async with FakeDiscord() as fake:`, then `fake.api_base` and
    `fake.gateway_url`."""

    def __init__(
        self,
        *,
        token: str = "TEST.discord.token",
        channel_ids: tuple[int, ...] = (),
        announce_bot_edits: bool = False,
    ) -> None:
        self.token = token
        self.announce_bot_edits = announce_bot_edits
        self.channel_ids = channel_ids
        self.bot_user = user_payload(BOT_ID, "Chinwag", bot=True)
        self.calls: list[Call] = []
        self.identify_payloads: list[dict[str, Any]] = []
        self.sent: list[SentMessage] = []
        self.typing: list[tuple[int, float]] = []
        self.commands: list[dict[str, Any]] = []  # the last PUT of global application commands
        self.interaction_responses: list[dict[str, Any]] = []
        self.identifies = 0
        self.resumes = 0
        # Every message of every channel (users' and the bot's), oldest first, for history requests.
        self.history: dict[int, list[dict[str, Any]]] = {}
        self.dm_recipients: dict[int, dict[str, Any]] = {}  # DM channel id -> the user at the other end
        # Guild members with roles (user id -> (name, role ids)): named in GUILD_CREATE, and their
        # messages carry those roles unless a test gives others. See `give_roles`.
        self.members: dict[int, tuple[str, tuple[int, ...]]] = {}
        self._log: list[dict[str, Any]] = []  # the session's dispatches, for RESUME
        self._session_id = "fake-session-1"
        self._sockets: set[web.WebSocketResponse] = set()
        self._faults: list[_Fault] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.port = 0
        # Called with every REST request before it is answered.
        self.on_call: Callable[[Call], None] | None = None
        # Seconds every message POST takes to answer (a slow API: the bot's replies back up).
        self.post_delay_s = 0.0
        # Message POSTs accepted and not answered yet (waiting out `post_delay_s`): those still land
        # even when the bot that sent them is gone. Changes are notified like every call.
        self.posts_in_flight = 0
        # Attachments served at /attachments/{id}/{filename} (see `add_file`), by id.
        self.files: dict[int, ServedFile] = {}
        self._stopping = asyncio.Event()  # ends the downloads that hang

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> FakeDiscord:
        app = web.Application()
        app.router.add_get("/", self._gateway)
        app.router.add_route("*", "/api/v10/{path:.*}", self._rest)
        app.router.add_get("/attachments/{file_id}/{filename}", self._file)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping.set()
        for socket in list(self._sockets):
            await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def api_base(self) -> str:
        """What `discord.http.Route.BASE` takes."""
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        """What `DiscordWebSocket.DEFAULT_GATEWAY` takes."""
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def connected(self) -> bool:
        """True while a client holds a gateway connection."""
        return bool(self._sockets)

    # --- driving it from a test ------------------------------------------------------------

    def push_message(
        self,
        channel_id: int,
        content: str,
        *,
        user_id: int = 42,
        name: str = "Alice",
        guild: bool = False,
        roles: tuple[int, ...] | None = None,
        reply_to: SentMessage | None = None,
        bot: bool = False,
        deliver: bool = True,
        attachments: Sequence[dict[str, Any]] = (),
    ) -> dict[str, Any]:
        """A user's message: kept in the channel's history and, when `deliver`, dispatched.

        `<@BOT_ID>` in `content` becomes a mention of the bot (as Discord does); `guild=False`
        makes it a DM. A guild message's `member.roles` are `roles`, by default those
        `give_roles` gave the user (none). `attachments`: attachment objects (see `add_file`).
        Returns the MESSAGE_CREATE body.
        """
        if roles is None:
            roles = self.members.get(user_id, (name, ()))[1]
        mentions = (self.bot_user,) if f"<@{BOT_ID}>" in content else ()
        referenced = None
        if reply_to is not None:
            referenced = message_payload(
                channel_id,
                reply_to.content,
                author=self.bot_user,
                guild_id=GUILD_ID if guild else None,
                message_id=reply_to.id,
            )
            referenced.pop("member", None)
        payload = message_payload(
            channel_id,
            content,
            author=user_payload(user_id, name, bot=bot),
            guild_id=GUILD_ID if guild else None,
            roles=roles,
            mentions=mentions,
            referenced=referenced,
        )
        payload["attachments"] = list(attachments)
        self.history.setdefault(channel_id, []).append(payload)
        if not guild:
            self.dm_recipients.setdefault(channel_id, payload["author"])
        if deliver:
            self.dispatch("MESSAGE_CREATE", payload)
        return payload

    def add_file(
        self,
        filename: str,
        data: bytes | None = None,
        *,
        content_type: str | None = "text/plain; charset=utf-8",
        size: int | None = None,
        filler: bytes = b"x",
        hang: bool = False,
    ) -> dict[str, Any]:
        """Serve a file and return its attachment object (for `push_message(attachments=...)`).

        The body is `data`, or `size` (default 1024) bytes of `filler` generated as they are
        sent; `hang` sends the headers (with the `Content-Length`) and then nothing. The attachment
        object's `size` is `size` when given (with `data`, a false claim), else the body's size.
        `content_type` None: Discord did not recognise the type (the object has none)."""
        body_size = len(data) if data is not None else (size if size is not None else 1024)
        served = ServedFile(
            id=snowflake(),
            filename=filename,
            content_type=content_type,
            size=body_size,
            data=data,
            filler=filler,
            hang=hang,
        )
        self.files[served.id] = served
        # Like the CDN's: expiry and signature in the query (which the bot must not log).
        url = f"http://127.0.0.1:{self.port}/attachments/{served.id}/{filename}?ex=6a1b2c3d&hm=fake-signature-{served.id}"
        attachment: dict[str, Any] = {
            "id": str(served.id),
            "filename": filename,
            "size": size if size is not None else body_size,
            "url": url,
            "proxy_url": url,
        }
        if content_type is not None:
            attachment["content_type"] = content_type
        return attachment

    def edit_message(self, message: dict[str, Any], content: str) -> dict[str, Any]:
        """A user edits `message` (a body `push_message` returned): the history keeps the new text
        and a MESSAGE_UPDATE with the whole message (new `content`, `edited_timestamp` set) is
        dispatched, as Discord sends it. Returns the update's body."""
        updated = {**message, "content": content, "edited_timestamp": datetime.now(UTC).isoformat()}
        updated["mentions"] = [self.bot_user] if f"<@{BOT_ID}>" in content else []
        self._replace_in_history(updated)
        self.dispatch("MESSAGE_UPDATE", updated)
        return updated

    def partial_update(self, message: dict[str, Any]) -> dict[str, Any]:
        """An update without `content` or `author` (how Discord used to announce a link preview:
        only the ids and the new embeds). Returns the update's body."""
        update: dict[str, Any] = {
            "id": message["id"],
            "channel_id": message["channel_id"],
            "embeds": [{"type": "link", "url": "https://example.com/", "title": "Example"}],
        }
        if "guild_id" in message:
            update["guild_id"] = message["guild_id"]
        self.dispatch("MESSAGE_UPDATE", update)
        return update

    def delete_messages(self, channel_id: int, message_ids: Sequence[int]) -> None:
        """Messages of `channel_id` are deleted (by their author or a moderator): gone from the
        history, and one MESSAGE_DELETE, or a MESSAGE_DELETE_BULK for several, is dispatched (with
        `guild_id` in a guild channel, as Discord sends them)."""
        gone = {str(message_id) for message_id in message_ids}
        self.history[channel_id] = [
            message for message in self.history.get(channel_id, []) if message["id"] not in gone
        ]
        where: dict[str, Any] = {"channel_id": str(channel_id)}
        if channel_id in self.channel_ids:
            where["guild_id"] = str(GUILD_ID)
        if len(message_ids) == 1:
            self.dispatch("MESSAGE_DELETE", {"id": str(message_ids[0]), **where})
        else:
            self.dispatch(
                "MESSAGE_DELETE_BULK", {"ids": [str(message_id) for message_id in message_ids], **where}
            )

    def _replace_in_history(self, message: dict[str, Any]) -> None:
        channel = self.history.get(int(message["channel_id"]), [])
        for index, kept in enumerate(channel):
            if kept["id"] == message["id"]:
                channel[index] = message

    def give_roles(self, user_id: int, *roles: int, name: str = "Alice") -> None:
        """Make `user_id` a guild member holding `roles` (role ids; the guild's are in
        `guild_payload`): named in the next GUILD_CREATE (at IDENTIFY; no member events follow,
        as without the privileged members intent), and the member's later messages carry the
        roles in `member.roles`, which is what the client goes by."""
        self.members[user_id] = (name, roles)

    def push_interaction(
        self,
        channel_id: int,
        command: str,
        options: dict[str, Any] | None = None,
        *,
        user_id: int = 42,
        name: str = "Alice",
        guild: bool = True,
        permissions: int = EVERYONE_PERMISSIONS,
        roles: tuple[int, ...] | None = None,
    ) -> dict[str, Any]:
        """A user running the slash command `command` (options: name → string value); in a guild
        the member holds `roles` (by default those `give_roles` gave the user) and has
        `permissions` in the channel."""
        if roles is None:
            roles = self.members.get(user_id, (name, ()))[1]
        user = user_payload(user_id, name)
        payload: dict[str, Any] = {
            "id": str(snowflake()),
            "application_id": str(APPLICATION_ID),
            "type": 2,
            "token": f"interaction-token-{snowflake()}",
            "version": 1,
            "channel_id": str(channel_id),
            "channel": {"id": str(channel_id), "type": 0 if guild else 1, "name": "chat"},
            "locale": "en-US",
            "app_permissions": "0",
            "attachment_size_limit": 26_214_400,
            "entitlements": [],
            "authorizing_integration_owners": {},
            "context": 0 if guild else 1,
            "data": {
                "id": str(snowflake()),
                "name": command,
                "type": 1,
                "options": [
                    {"name": key, "type": 3, "value": value} for key, value in (options or {}).items()
                ],
            },
        }
        if guild:
            payload["guild_id"] = str(GUILD_ID)
            payload["member"] = {**member_payload(user, roles), "permissions": str(permissions)}
        else:
            payload["user"] = user
        self.dispatch("INTERACTION_CREATE", payload)
        return payload

    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a dispatch to the connected client, or keep it for a RESUME when none is."""
        frame = {"op": 0, "t": event, "s": len(self._log) + 1, "d": data}
        self._log.append(frame)
        for socket in list(self._sockets):
            self._spawn(self._send(socket, frame))

    async def drop_connection(self, code: int = 4000) -> None:
        """Close the gateway socket with a resumable close code (the client should RESUME)."""
        for socket in list(self._sockets):
            await socket.close(code=code)
            self._sockets.discard(socket)

    async def invalidate_session(self) -> None:
        """End the session as after an outage longer than the resume window: the socket closes
        resumably, but the RESUME is refused (op 9), so the client IDENTIFYs anew and nothing that
        was dispatched meanwhile is replayed."""
        self._session_id = "fake-session-expired"
        await self.drop_connection()

    def fail_next(self, method: str, path_suffix: str, times: int = 1, *, retry_after: float = 0.3) -> None:
        """Answer the next `times` `method` requests whose path ends with `path_suffix` with a 429."""
        self._faults.append(_Fault(method, path_suffix, retry_after, times))

    def texts(self, channel_id: int) -> list[str]:
        """The current content of every message the bot posted in `channel_id`, in order."""
        return [sent.content for sent in self.sent if sent.channel_id == channel_id]

    async def wait_for(self, condition: Callable[[], bool], within: float = 10.0) -> None:
        """Wait until `condition()` holds (checked after every change), or fail after `within` s."""
        async with asyncio.timeout(within):
            async with self._changed:
                await self._changed.wait_for(condition)

    # --- REST ------------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["path"]
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            body = json.loads(raw) if raw and request.content_type == "application/json" else raw
        call = Call(request.method, path, body, time.monotonic())
        self.calls.append(call)
        if self.on_call is not None:
            self.on_call(call)
        # Interaction callbacks are authorised by the interaction's token in the URL, not the bot's.
        needs_auth = not path.startswith(("/interactions/", "/webhooks/"))
        if needs_auth and request.headers.get("Authorization") != f"Bot {self.token}":
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        for fault in self._faults:
            if fault.remaining > 0 and fault.method == request.method and path.endswith(fault.path_suffix):
                fault.remaining -= 1
                return _json(
                    {
                        "message": "You are being rate limited.",
                        "retry_after": fault.retry_after,
                        "global": False,
                    },
                    status=429,
                    headers={"Via": "1.1 google", "Retry-After": str(max(1, round(fault.retry_after)))},
                )
        delayed = bool(self.post_delay_s) and request.method == "POST" and path.endswith("/messages")
        if delayed:
            self.posts_in_flight += 1
        try:
            if delayed:
                await asyncio.sleep(self.post_delay_s)
            return await self._route(request, path, body)
        finally:
            if delayed:
                self.posts_in_flight -= 1
            await self._notify()

    async def _route(self, request: web.Request, path: str, body: Any) -> web.Response:
        parts = path.strip("/").split("/")
        match request.method, parts:
            case "GET", ["users", "@me"]:
                return _json(self.bot_user)
            case "GET", ["oauth2", "applications", "@me"]:
                return _json(self._application())
            case "POST", ["channels", channel, "typing"]:
                self.typing.append((int(channel), time.monotonic()))
                return web.Response(status=204)
            case "POST", ["channels", channel, "messages"]:
                return _json(self._create(int(channel), body))
            case "PATCH", ["channels", channel, "messages", message_id]:
                return self._edit(int(channel), int(message_id), body)
            case "GET", ["channels", channel, "messages"]:
                return _json(self._history(int(channel), request.query))
            case "GET", ["channels", channel]:
                return self._channel(int(channel))
            case "PUT", ["applications", _, "commands"]:
                self.commands = list(body or [])
                return _json(
                    [
                        {
                            **command,
                            "id": str(snowflake()),
                            "application_id": str(APPLICATION_ID),
                            "version": "1",
                            "default_member_permissions": None,
                            "dm_permission": True,
                            "nsfw": False,
                        }
                        for command in self.commands
                    ]
                )
            case "POST", ["interactions", interaction_id, _, "callback"]:
                self.interaction_responses.append(body)
                # discord.py asks `with_response=true`: the callback object comes back.
                return _json(
                    {
                        "interaction": {
                            "id": interaction_id,
                            "type": 2,
                            "response_message_loading": body.get("type") == 5,
                            "response_message_ephemeral": False,
                        },
                        "resource": {"type": body.get("type")},
                    }
                )
            case "POST", ["webhooks", _, _]:  # an interaction's follow-up message
                self.interaction_responses.append({"type": "followup", "data": body})
                return _json(message_payload(0, body.get("content", ""), author=self.bot_user))
        return _json({"message": "404: Not Found", "code": 0}, status=404)

    def _application(self) -> dict[str, Any]:
        return {
            "id": str(APPLICATION_ID),
            "name": "Chinwag",
            "description": "",
            "icon": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": user_payload(OWNER_ID, "Owner"),
            "verify_key": "0" * 64,
            "flags": 0,
            "team": None,
        }

    def _create(self, channel_id: int, body: dict[str, Any]) -> dict[str, Any]:
        reference = body.get("message_reference") or {}
        reference_id = int(reference["message_id"]) if reference.get("message_id") else None
        payload = message_payload(channel_id, body.get("content", ""), author=self.bot_user)
        if reference_id is not None:
            # As Discord keeps it: the history shows which message a reply quotes.
            payload["type"] = 19
            payload["message_reference"] = {
                "type": 0,
                "message_id": str(reference_id),
                "channel_id": str(channel_id),
            }
        self.history.setdefault(channel_id, []).append(payload)
        sent = SentMessage(
            channel_id, int(payload["id"]), payload["content"], reference_id, body.get("allowed_mentions")
        )
        sent.versions.append((time.monotonic(), sent.content))
        self.sent.append(sent)
        return payload

    def _edit(self, channel_id: int, message_id: int, body: dict[str, Any]) -> web.Response:
        for sent in self.sent:
            if sent.id == message_id and sent.channel_id == channel_id:
                sent.content = body.get("content", sent.content)
                sent.versions.append((time.monotonic(), sent.content))
                payload = message_payload(channel_id, sent.content, author=self.bot_user, message_id=sent.id)
                if self.announce_bot_edits:
                    # Discord announces every edit, the bot's own included: the bot ignores these.
                    update = {
                        **payload,
                        "edited_timestamp": datetime.now(UTC).isoformat(),
                        **({"guild_id": str(GUILD_ID)} if channel_id in self.channel_ids else {}),
                    }
                    self.dispatch("MESSAGE_UPDATE", update)
                return _json(payload)
        return _json({"message": "Unknown Message", "code": 10008}, status=404)

    def _channel(self, channel_id: int) -> web.Response:
        """GET /channels/{id}: a guild text channel, or a DM with its recipient (what
        `Client.fetch_channel` needs for a channel that is not cached, e.g. a DM after a restart)."""
        if channel_id in self.channel_ids:
            channels = guild_payload(channel_ids=self.channel_ids)["channels"]
            return _json(channels[self.channel_ids.index(channel_id)])
        if channel_id in self.dm_recipients:
            return _json({"id": str(channel_id), "type": 1, "recipients": [self.dm_recipients[channel_id]]})
        return _json({"message": "Unknown Channel", "code": 10003}, status=404)

    def _history(self, channel_id: int, query: Any) -> list[dict[str, Any]]:
        """Like Discord: the `limit` messages right after `after`, or right before `before`, or the
        latest; newest first."""
        messages = self.history.get(channel_id, [])
        limit = int(query.get("limit", 50))
        if "before" in query:
            before = int(query["before"])
            chosen = [message for message in messages if int(message["id"]) < before][-limit:]
        elif "after" in query:
            after = int(query["after"])
            chosen = [message for message in messages if int(message["id"]) > after][:limit]
        else:
            chosen = messages[-limit:]
        return list(reversed(chosen))

    async def _file(self, request: web.Request) -> web.StreamResponse:
        """GET /attachments/{id}/{filename}: the file, streamed chunk by chunk (see `ServedFile`)."""
        served = self.files.get(int(request.match_info["file_id"]))
        if served is None or request.match_info["filename"] != served.filename:
            return web.Response(status=404, text="Not Found")
        served.requests += 1
        served.active += 1
        response = web.StreamResponse(
            headers={"Content-Type": served.content_type or "application/octet-stream"}
        )
        response.content_length = served.size
        try:
            await response.prepare(request)
            if served.hang:
                await self._stopping.wait()
                return response
            async for chunk in served.chunks():
                await response.write(chunk)  # waits while the client does not read
                served.bytes_sent += len(chunk)
            await response.write_eof()
            served.completed += 1
        except ConnectionError:
            pass  # the client stopped reading and closed the connection (as it should, at its limit)
        finally:
            served.active -= 1
            await self._notify()
        return response

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- gateway ---------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        await socket.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41_250}}))
        try:
            async for frame in socket:
                if frame.type != WSMsgType.TEXT:
                    break
                await self._on_frame(socket, json.loads(frame.data))
        finally:
            self._sockets.discard(socket)
            await self._notify()
        return socket

    async def _on_frame(self, socket: web.WebSocketResponse, payload: dict[str, Any]) -> None:
        op = payload.get("op")
        data = payload.get("d") or {}
        if op == 1:  # heartbeat
            await socket.send_str(json.dumps({"op": 11}))
        elif op == 2:  # identify
            if data.get("token") != self.token:
                await socket.close(code=4004)  # authentication failed
                return
            self.identifies += 1
            self.identify_payloads.append(data)
            self._log.clear()
            self._session_id = f"fake-session-{self.identifies}"
            self._sockets.add(socket)
            self.dispatch("READY", self._ready())
            members = tuple(
                member_payload(user_payload(user_id, name), roles)
                for user_id, (name, roles) in self.members.items()
            )
            for guild in (guild_payload(GUILD_ID, self.channel_ids, members),):
                self.dispatch("GUILD_CREATE", guild)
        elif op == 6:  # resume: replay what the client missed
            if data.get("token") != self.token or data.get("session_id") != self._session_id:
                await socket.send_str(json.dumps({"op": 9, "d": False}))
                return
            self.resumes += 1
            seen = int(data.get("seq") or 0)
            # Queued in order, before any dispatch that comes after this point.
            for frame in self._log[seen:]:
                self._spawn(self._send(socket, frame))
            self._sockets.add(socket)
            self.dispatch("RESUMED", {})
        await self._notify()

    def _ready(self) -> dict[str, Any]:
        identified = self.identify_payloads[-1] if self.identify_payloads else {}
        return {
            "v": 10,
            "user": self.bot_user,
            "guilds": [{"id": str(GUILD_ID), "unavailable": True}],
            "session_id": self._session_id,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(APPLICATION_ID), "flags": 0},
            "private_channels": [],
            "relationships": [],
            # Discord echoes the shard the client identified as (discord.py's AutoShardedClient
            # reads it); absent for an unsharded session.
            **({"shard": identified["shard"]} if "shard" in identified else {}),
        }

    async def _send(self, socket: web.WebSocketResponse, frame: dict[str, Any]) -> None:
        if not socket.closed:
            await socket.send_str(json.dumps(frame))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _json(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers={"Content-Type": _JSON, **(headers or {})}
    )
