"""A fake Telegram Bot API server (aiohttp on 127.0.0.1) for running the real python-telegram-bot.

It answers what the library calls (getMe, deleteWebhook, getUpdates, sendMessage, editMessageText,
sendChatAction, getChatAdministrators, setMyCommands, getFile) with objects carrying every field the
library requires, keeps updates until they are confirmed (real offset semantics, bounded long
polling), records every call, and injects faults on demand (429 with retry_after, 500, a migrated
group). Tests push user messages with `push_message`, which adds the entities the real server would,
documents and photos with `push_document` / `push_photo` (files registered with `add_file`), and
edits with `push_edit`.

Files: getFile answers a registered file's path and size, or 400 "Bad Request: file is too big"
for one declared over 20 MB, as Telegram does. `GET /file/bot<token>/<file_path>` streams the body in
chunks and records on the file how many bytes it actually wrote (a client that stops reading
early leaves the rest unsent); a file added with `hang=True` sends its headers and then nothing.

Text sent with `parse_mode: HTML` is checked like Telegram checks it (`telegram_html_text`): only
Telegram's tags, properly nested and closed, `<`, `>` and `&` escaped outside them; a message that
fails is answered 400 "can't parse entities" and recorded in `refused`. A message's `text` is what
its user sees (the markup parsed away); `markup` is what the bot sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from aiohttp import web

BOT_ID = 7_000_001
BOT_USERNAME = "ChinwagTestBot"
ANONYMOUS_ADMIN_ID = 1087968824

# Form fields the library JSON-encodes (every non-string value); strings arrive as they are.
_JSON_FIELDS = frozenset(
    {
        "chat_id",
        "message_id",
        "offset",
        "limit",
        "timeout",
        "allowed_updates",
        "reply_parameters",
        "commands",
        "message_thread_id",
        "drop_pending_updates",
        "disable_notification",
        "link_preview_options",
        "entities",
    }
)
_MENTION = re.compile(r"@[A-Za-z0-9_]{3,}")
# Telegram's limit for bots' downloads: getFile refuses larger files.
GET_FILE_LIMIT = 20 * 1024 * 1024
_CHUNK_BYTES = 64 * 1024
# How long a hanging download holds its connection at most (the server's exit releases it sooner).
_HANG_S = 60.0


@dataclass
class FakeFile:
    """A file users can send: `content` repeated `repeat` times is its body (so a 50 MB file takes
    64 KB of memory); `declared_size` is what getFile and the message claim (None: no claim).
    `bytes_sent` counts what the download route wrote to the socket, `downloads` its requests,
    `downloads_ended` those it finished serving (all sent, or the client went away)."""

    file_id: str
    file_path: str
    content: bytes
    repeat: int = 1
    declared_size: int | None = None
    hang: bool = False
    bytes_sent: int = 0
    downloads: int = 0
    downloads_ended: int = 0

    @property
    def size(self) -> int:
        """The body's real length in bytes."""
        return len(self.content) * self.repeat

    def chunks(self) -> AsyncIterator[bytes]:
        """The body in pieces of at most 64 KB."""
        return _chunks(self.content, self.repeat)


async def _chunks(content: bytes, repeat: int) -> AsyncIterator[bytes]:
    for _ in range(repeat):
        for start in range(0, len(content), _CHUNK_BYTES):
            yield content[start : start + _CHUNK_BYTES]


@dataclass
class SentMessage:
    """A message the bot sent: its current text as its user sees it (after edits), the markup and
    parse mode that text was sent with, and every version of both."""

    chat_id: int
    message_id: int
    text: str
    reply_to: int | None
    thread_id: int | None
    parse_mode: str | None
    markup: str = ""
    versions: list[str] = field(default_factory=list)
    markups: list[tuple[str, str | None]] = field(default_factory=list)  # (markup, parse_mode)


@dataclass
class Call:
    """One request the bot made: the method name, its decoded parameters and when it came."""

    method: str
    params: dict[str, Any]
    at: float


@dataclass
class _Fault:
    status: int
    description: str
    parameters: dict[str, Any] | None
    remaining: int


class FakeTelegram:
    """The fake server. Use `async with FakeTelegram() as fake:` and `fake.base_url`."""

    def __init__(
        self,
        *,
        token: str = "123456:TEST-token",
        max_long_poll_s: float = 1.0,
        can_read_all_group_messages: bool = False,
    ) -> None:
        self.token = token
        self.max_long_poll_s = max_long_poll_s
        # getMe's flag: False is privacy mode (a real server then delivers only the group messages
        # addressed to the bot; this fake delivers whatever a test pushes either way).
        self.can_read_all_group_messages = can_read_all_group_messages
        self.calls: list[Call] = []
        self.sent: list[SentMessage] = []
        self.commands: list[dict[str, Any]] = []
        self.admins: dict[int, set[int]] = {}
        self.migrated: dict[int, int] = {}
        self.confirmed_up_to = 0  # the highest offset a getUpdates call confirmed with
        self.handed_out: list[int] = []  # update ids, every time getUpdates returned them
        self.get_updates_calls = 0
        self._updates: list[dict[str, Any]] = []
        self._next_update_id = 100
        self._next_message_id: dict[int, int] = {}
        self._faults: dict[str, list[_Fault]] = {}
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.on_get_updates: Callable[[list[int]], None] | None = None
        # Called with every request before it is answered (e.g. to kill the bot at a chosen moment).
        self.on_call: Callable[[Call], None] | None = None
        # Calls refused with "can't parse entities", with the reason given.
        self.refused: list[tuple[Call, str]] = []
        self._refuse_markup_with: str | None = None
        self.files: dict[str, FakeFile] = {}
        self._files_by_path: dict[str, FakeFile] = {}
        self._release_hangs = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> FakeTelegram:
        app = web.Application()
        app.router.add_post("/{bot_token}/{method}", self._dispatch)
        app.router.add_get("/file/{bot_token}/{file_path:.+}", self._download)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release_hangs.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        """What `ApplicationBuilder.base_url` takes (the token is appended without a slash)."""
        return f"http://127.0.0.1:{self.port}/bot"

    # --- driving it from a test ------------------------------------------------------------

    def push_message(
        self,
        chat_id: int,
        text: str,
        *,
        user_id: int | None = None,
        first_name: str = "Alice",
        last_name: str | None = None,
        chat_type: str | None = None,
        reply_to: SentMessage | None = None,
        thread_id: int | None = None,
        sender_chat_id: int | None = None,
        edited: bool = False,
    ) -> dict[str, Any]:
        """Queue an update with a user's text message, entities included; returns the update.

        A positive `chat_id` is a private chat with that user; a negative one a group
        (`-100…`: a supergroup; `thread_id` makes it a forum topic message). The sender's full
        name is `first_name`, then `last_name` when given.
        """
        message = self._user_message(
            chat_id,
            user_id=user_id,
            first_name=first_name,
            last_name=last_name,
            chat_type=chat_type,
            reply_to=reply_to,
            thread_id=thread_id,
            sender_chat_id=sender_chat_id,
        )
        message["text"] = text
        entities = _entities(text)
        if entities:
            message["entities"] = entities
        return self.push_update({"edited_message" if edited else "message": message})

    def push_document(
        self,
        chat_id: int,
        file: FakeFile,
        *,
        file_name: str | None = None,
        mime_type: str | None = None,
        caption: str = "",
        **sender: Any,
    ) -> dict[str, Any]:
        """Queue a message with a document (`file`; its declared size, when it has one) and an
        optional caption (with its entities); `sender` as for `push_message`. Returns the update."""
        document: dict[str, Any] = {"file_id": file.file_id, "file_unique_id": f"unique-{file.file_id}"}
        if file_name is not None:
            document["file_name"] = file_name
        if mime_type is not None:
            document["mime_type"] = mime_type
        if file.declared_size is not None:
            document["file_size"] = file.declared_size
        return self._push_media(chat_id, {"document": document}, caption, sender)

    def push_photo(
        self, chat_id: int, sizes: list[tuple[FakeFile, int, int]], *, caption: str = "", **sender: Any
    ) -> dict[str, Any]:
        """Queue a message with a photo: its sizes as `(file, width, height)`, smallest first as
        Telegram sends them, and an optional caption. Returns the update."""
        photo = []
        for file, width, height in sizes:
            size: dict[str, Any] = {
                "file_id": file.file_id,
                "file_unique_id": f"unique-{file.file_id}",
                "width": width,
                "height": height,
            }
            if file.declared_size is not None:
                size["file_size"] = file.declared_size
            photo.append(size)
        return self._push_media(chat_id, {"photo": photo}, caption, sender)

    def push_edit(self, original: dict[str, Any], text: str) -> dict[str, Any]:
        """Queue the edit of a pushed message (its update): its text, or its caption when it has
        a file, becomes `text` (entities recomputed). Returns the new update."""
        message = {key: value for key, value in original["message"].items() if "entities" not in key}
        field_name = "text" if "text" in message else "caption"
        message[field_name] = text
        entities = _entities(text)
        if entities:
            message["entities" if field_name == "text" else "caption_entities"] = entities
        message["edit_date"] = int(time.time())
        return self.push_update({"edited_message": message})

    def add_file(
        self,
        content: bytes,
        *,
        repeat: int = 1,
        declared_size: int | None = -1,
        hang: bool = False,
        extension: str = "bin",
    ) -> FakeFile:
        """Register a file users can send: its body is `content` repeated `repeat` times.
        `declared_size` is the size getFile and the message claim: by default the real one, None
        for no claim, or any number (over 20 MB, getFile refuses the file). `hang`: the download
        sends its headers, then nothing."""
        number = len(self.files) + 1
        file = FakeFile(
            file_id=f"file-{number}",
            file_path=f"documents/file_{number}.{extension}",
            content=content,
            repeat=repeat,
            hang=hang,
        )
        file.declared_size = file.size if declared_size == -1 else declared_size
        self.files[file.file_id] = file
        self._files_by_path[file.file_path] = file
        return file

    def _push_media(
        self, chat_id: int, media: dict[str, Any], caption: str, sender: dict[str, Any]
    ) -> dict[str, Any]:
        message = self._user_message(chat_id, **sender)
        message.update(media)
        if caption:
            message["caption"] = caption
            entities = _entities(caption)
            if entities:
                message["caption_entities"] = entities
        return self.push_update({"message": message})

    def _user_message(
        self,
        chat_id: int,
        *,
        user_id: int | None = None,
        first_name: str = "Alice",
        last_name: str | None = None,
        chat_type: str | None = None,
        reply_to: SentMessage | None = None,
        thread_id: int | None = None,
        sender_chat_id: int | None = None,
    ) -> dict[str, Any]:
        """A user's message without its content (text, caption, file)."""
        if chat_type is None:
            chat_type = (
                "private" if chat_id > 0 else "supergroup" if str(chat_id).startswith("-100") else "group"
            )
        user_id = user_id if user_id is not None else (chat_id if chat_id > 0 else 42)
        chat: dict[str, Any] = {"id": chat_id, "type": chat_type}
        if chat_type == "private":
            chat["first_name"] = first_name
        else:
            chat["title"] = f"Group {chat_id}"
            if thread_id is not None:
                chat["is_forum"] = True
        message: dict[str, Any] = {
            "message_id": self._new_message_id(chat_id),
            "date": int(time.time()),
            "chat": chat,
            "from": {"id": user_id, "is_bot": user_id == ANONYMOUS_ADMIN_ID, "first_name": first_name},
        }
        if last_name is not None:
            message["from"]["last_name"] = last_name
        if reply_to is not None:
            message["reply_to_message"] = {
                "message_id": reply_to.message_id,
                "date": int(time.time()),
                "chat": chat,
                "from": {"id": BOT_ID, "is_bot": True, "first_name": "Chinwag", "username": BOT_USERNAME},
                "text": reply_to.text,
            }
        if thread_id is not None:
            message["message_thread_id"] = thread_id
            message["is_topic_message"] = True
        if sender_chat_id is not None:
            message["sender_chat"] = {"id": sender_chat_id, "type": chat_type, "title": chat.get("title", "")}
        return message

    def push_update(self, body: dict[str, Any]) -> dict[str, Any]:
        """Queue a raw update (the update_id is added)."""
        update = {"update_id": self._next_update_id, **body}
        self._next_update_id += 1
        self._updates.append(update)
        asyncio.get_running_loop().create_task(self._notify())
        return update

    def fail_next(
        self, method: str, times: int = 1, *, status: int = 429, retry_after: int = 1, description: str = ""
    ) -> None:
        """Answer the next `times` calls of `method` with an error (429 carries `retry_after`)."""
        parameters = {"retry_after": retry_after} if status == 429 else None
        text = description or (
            f"Too Many Requests: retry after {retry_after}" if status == 429 else "Internal"
        )
        self._faults.setdefault(method, []).append(_Fault(status, text, parameters, times))

    def refuse_formatting_with(self, marker: str | None) -> None:
        """From now on refuse every formatted text (any parse_mode) that contains `marker`, as
        Telegram refuses markup it cannot parse; None stops refusing."""
        self._refuse_markup_with = marker

    def migrate(self, old_chat_id: int, new_chat_id: int) -> None:
        """From now on, sending to `old_chat_id` fails with migrate_to_chat_id = `new_chat_id`."""
        self.migrated[old_chat_id] = new_chat_id

    def delete(self, message: SentMessage) -> None:
        """A user (or admin) deletes one of the bot's messages: editing it fails from now on."""
        self.sent.remove(message)

    def texts(self, chat_id: int) -> list[str]:
        """The current texts of the bot's messages in a chat, in the order they were sent."""
        return [message.text for message in self.sent if message.chat_id == chat_id]

    def calls_to(self, method: str) -> list[Call]:
        """The recorded calls of one method."""
        return [call for call in self.calls if call.method == method]

    @property
    def unconfirmed(self) -> list[int]:
        """Ids of updates the bot has not confirmed yet."""
        return [update["update_id"] for update in self._updates]

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until `condition()` holds (checked after each call the bot makes); TimeoutError else."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(condition)

    # --- the API -------------------------------------------------------------------------

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _new_message_id(self, chat_id: int) -> int:
        self._next_message_id[chat_id] = self._next_message_id.get(chat_id, 0) + 1
        return self._next_message_id[chat_id]

    async def _dispatch(self, request: web.Request) -> web.Response:
        if request.match_info["bot_token"] != f"bot{self.token}":
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        form = await request.post()
        params: dict[str, Any] = {}
        for key, value in form.items():
            text = value if isinstance(value, str) else ""
            params[key] = json.loads(text) if key in _JSON_FIELDS else text
        call = Call(method, params, time.monotonic())
        self.calls.append(call)
        if self.on_call is not None:
            self.on_call(call)
        try:
            response = await self._answer(method, params)
            if response.status == 400 and _ENTITY_ERROR in (response.text or ""):
                self.refused.append((call, response.text or ""))
            return response
        finally:
            await self._notify()

    async def _answer(self, method: str, params: dict[str, Any]) -> web.Response:
        faults = self._faults.get(method)
        if faults:
            fault = faults[0]
            fault.remaining -= 1
            if fault.remaining <= 0:
                faults.pop(0)
            return _error(fault.status, fault.description, fault.parameters)
        chat_id = params.get("chat_id")
        if isinstance(chat_id, int) and chat_id in self.migrated:
            return _error(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                {"migrate_to_chat_id": self.migrated[chat_id]},
            )
        match method:
            case "getMe":
                return _ok(
                    {
                        "id": BOT_ID,
                        "is_bot": True,
                        "first_name": "Chinwag",
                        "username": BOT_USERNAME,
                        "can_join_groups": True,
                        "can_read_all_group_messages": self.can_read_all_group_messages,
                        "supports_inline_queries": False,
                    }
                )
            case "deleteWebhook" | "sendChatAction":
                return _ok(True)
            case "setMyCommands":
                self.commands = list(params.get("commands", []))
                return _ok(True)
            case "getUpdates":
                return _ok(await self._get_updates(params))
            case "sendMessage":
                return self._send_message(params)
            case "editMessageText":
                return self._edit_message(params)
            case "getFile":
                return self._get_file(params)
            case "getChatAdministrators":
                return _ok(
                    [_administrator(user_id) for user_id in sorted(self.admins.get(chat_id or 0, set()))]
                )
            case _:
                return _error(404, "Not Found: method not found")

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        self.get_updates_calls += 1
        offset = params.get("offset")
        if isinstance(offset, int) and offset > 0:
            # Calling with an offset confirms every update below it.
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
            self.confirmed_up_to = max(self.confirmed_up_to, offset)
        limit = int(params.get("limit") or 100)
        wait = min(float(params.get("timeout") or 0), self.max_long_poll_s)
        if not self._updates and wait > 0:
            try:
                async with asyncio.timeout(wait), self._changed:
                    await self._changed.wait_for(lambda: bool(self._updates))
            except TimeoutError:
                pass
        batch = self._updates[:limit]
        ids = [u["update_id"] for u in batch]
        self.handed_out.extend(ids)
        if ids and self.on_get_updates is not None:
            self.on_get_updates(ids)
        return batch

    def _get_file(self, params: dict[str, Any]) -> web.Response:
        file = self.files.get(str(params.get("file_id", "")))
        if file is None:
            return _error(400, "Bad Request: invalid file_id")
        if file.declared_size is not None and file.declared_size > GET_FILE_LIMIT:
            return _error(400, "Bad Request: file is too big")
        result: dict[str, Any] = {
            "file_id": file.file_id,
            "file_unique_id": f"unique-{file.file_id}",
            "file_path": file.file_path,
        }
        if file.declared_size is not None:
            result["file_size"] = file.declared_size
        return _ok(result)

    async def _download(self, request: web.Request) -> web.StreamResponse:
        """The file route: the body streamed in chunks, each counted once written to the socket."""
        if request.match_info["bot_token"] != f"bot{self.token}":
            return web.Response(status=401, text="Unauthorized")
        file = self._files_by_path.get(request.match_info["file_path"])
        if file is None:
            return web.Response(status=404, text="Not Found")
        file.downloads += 1
        self.calls.append(Call("download", {"file_path": file.file_path}, time.monotonic()))
        await self._notify()
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = file.size
        await response.prepare(request)
        if file.hang:
            # Headers sent, then silence, until the test ends (or `_HANG_S` passes).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release_hangs.wait(), _HANG_S)
            return response
        try:
            async for chunk in file.chunks():
                await response.write(chunk)  # waits while the client does not read
                file.bytes_sent += len(chunk)
            await response.write_eof()
        except ConnectionError:
            pass  # the client stopped reading: the rest is never sent
        finally:
            file.downloads_ended += 1
            await self._notify()
        return response

    def _shown(self, params: dict[str, Any]) -> tuple[str, str | None] | web.Response:
        """The text a message shows and its parse mode, or the error Telegram answers it with."""
        text = str(params.get("text", ""))
        parse_mode = params.get("parse_mode") or None
        if parse_mode is not None:
            if self._refuse_markup_with is not None and self._refuse_markup_with in text:
                return _error(400, f"Bad Request: {_ENTITY_ERROR}: refused on request of the test")
            if parse_mode != "HTML":
                return _error(400, f"Bad Request: unsupported parse_mode {parse_mode}")
            try:
                text = telegram_html_text(text)
            except ValueError as error:
                return _error(400, f"Bad Request: {_ENTITY_ERROR}: {error}")
        if not text.strip():
            return _error(400, "Bad Request: message text is empty")
        if len(text.encode("utf-16-le")) // 2 > 4096:  # Telegram counts UTF-16 units of the shown text
            return _error(400, "Bad Request: message is too long")
        return text, parse_mode

    def _send_message(self, params: dict[str, Any]) -> web.Response:
        shown = self._shown(params)
        if isinstance(shown, web.Response):
            return shown
        text, parse_mode = shown
        chat_id = int(params["chat_id"])
        reply = params.get("reply_parameters") or {}
        markup = str(params["text"])
        message = SentMessage(
            chat_id=chat_id,
            message_id=self._new_message_id(chat_id),
            text=text,
            reply_to=reply.get("message_id"),
            thread_id=params.get("message_thread_id"),
            parse_mode=parse_mode,
            markup=markup,
            versions=[text],
            markups=[(markup, parse_mode)],
        )
        self.sent.append(message)
        return _ok(_message_json(message))

    def _edit_message(self, params: dict[str, Any]) -> web.Response:
        chat_id = int(params["chat_id"])
        message_id = int(params["message_id"])
        for message in self.sent:
            if message.chat_id == chat_id and message.message_id == message_id:
                shown = self._shown(params)
                if isinstance(shown, web.Response):
                    return shown
                text, parse_mode = shown
                markup = str(params["text"])
                if (markup, parse_mode) == (message.markup, message.parse_mode):
                    return _error(400, "Bad Request: message is not modified")
                message.text, message.markup, message.parse_mode = text, markup, parse_mode
                message.versions.append(text)
                message.markups.append((markup, parse_mode))
                return _ok(_message_json(message))
        return _error(400, "Bad Request: message to edit not found")


def _entities(text: str) -> list[dict[str, Any]]:
    """The entities Telegram adds: a bot_command at offset 0, mentions anywhere (UTF-16 offsets)."""
    entities: list[dict[str, Any]] = []
    command = re.match(r"/[A-Za-z0-9_]+(@[A-Za-z0-9_]+)?", text)
    if command:
        entities.append({"type": "bot_command", "offset": 0, "length": len(command.group(0))})
    for mention in _MENTION.finditer(text):
        if command and mention.start() < command.end():
            continue
        offset = len(text[: mention.start()].encode("utf-16-le")) // 2
        entities.append({"type": "mention", "offset": offset, "length": len(mention.group(0))})
    return entities


_ENTITY_ERROR = "can't parse entities"
# Telegram's HTML tags, and the attributes each may (and `a` must) carry.
_TAGS = {
    "b": (),
    "strong": (),
    "i": (),
    "em": (),
    "u": (),
    "ins": (),
    "s": (),
    "strike": (),
    "del": (),
    "a": ("href",),
    "code": ("class",),
    "pre": (),
    "blockquote": ("expandable",),
    "tg-spoiler": (),
    "span": ("class",),
}
_CODE_TAGS = frozenset({"code", "pre"})
_NAMED_ENTITIES = frozenset({"lt", "gt", "amp", "quot"})


def telegram_html_text(markup: str) -> str:
    """The text a message sent with `parse_mode: HTML` shows, checked as Telegram checks it:
    only Telegram's tags, each closed in order; `<`, `>`, `&` escaped outside tags (only the
    entities &lt; &gt; &amp; &quot; and numeric ones); `a` with an href; `code` with a class only
    directly in `pre`; code and pre holding no other tag and inside none but a block quote; no
    link in a link, no quote in a quote. Raises ValueError naming what is wrong."""
    parser = _TelegramHtml()
    parser.feed(markup)
    parser.close()
    if parser.error is None and parser.stack:
        parser.error = f"can't find end tag corresponding to start tag {parser.stack[-1]}"
    if parser.error is not None:
        raise ValueError(parser.error)
    return "".join(parser.text)


class _TelegramHtml(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.text: list[str] = []
        self.stack: list[str] = []
        self.error: str | None = None

    def _fail(self, reason: str) -> None:
        if self.error is None:
            self.error = reason

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        reason = self._refusal(tag, dict(attrs))
        if reason is None:
            self.stack.append(tag)
        else:
            self._fail(reason)

    def _refusal(self, tag: str, attributes: dict[str, str | None]) -> str | None:
        """Why Telegram refuses this start tag here; None when it takes it."""
        allowed = _TAGS.get(tag)
        if allowed is None:
            return f'unsupported start tag "{tag}"'
        if any(name not in allowed for name in attributes):
            return f'unsupported attribute in tag "{tag}"'
        if tag == "a" and not attributes.get("href"):
            return "a link without href"
        if tag == "span" and attributes.get("class") != "tg-spoiler":
            return "span without class tg-spoiler"
        language = attributes.get("class") if tag == "code" else None  # only a code block has one
        if language is not None and (self.stack[-1:] != ["pre"] or not language.startswith("language-")):
            return "code with a class outside pre"
        inside = self.stack[-1] if self.stack else None
        if inside in _CODE_TAGS and not (inside == "pre" and tag == "code"):
            return f'"{tag}" inside "{inside}"'
        if tag in _CODE_TAGS and any(open_ not in ("blockquote", "pre") for open_ in self.stack):
            return f'"{tag}" inside formatting'
        if tag in self.stack and tag in ("a", "blockquote"):
            return f'nested "{tag}"'
        return None

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._fail(f'unsupported self-closing tag "{tag}"')

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self._fail(f'unmatched end tag "{tag}"')
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        for character in "<>&":
            if character in data:
                self._fail(f'unescaped "{character}" in text')
        self.text.append(data)

    def handle_entityref(self, name: str) -> None:
        if name not in _NAMED_ENTITIES:
            self._fail(f'unsupported entity "&{name};"')
        self.text.append({"lt": "<", "gt": ">", "amp": "&", "quot": '"'}.get(name, ""))

    def handle_charref(self, name: str) -> None:
        try:
            code = int(name[1:], 16) if name[:1] in "xX" else int(name)
            self.text.append(chr(code))
        except (ValueError, OverflowError):
            self._fail(f'bad character reference "&#{name};"')

    def handle_comment(self, data: str) -> None:
        self._fail("a comment")

    def handle_decl(self, decl: str) -> None:
        self._fail("a declaration")

    def handle_pi(self, data: str) -> None:
        self._fail("a processing instruction")

    def unknown_decl(self, data: str) -> None:
        self._fail("a declaration")


def _message_json(message: SentMessage) -> dict[str, Any]:
    chat: dict[str, Any] = {"id": message.chat_id, "type": "private" if message.chat_id > 0 else "supergroup"}
    if message.chat_id < 0:
        chat["title"] = f"Group {message.chat_id}"
    body: dict[str, Any] = {
        "message_id": message.message_id,
        "date": int(time.time()),
        "chat": chat,
        "from": {"id": BOT_ID, "is_bot": True, "first_name": "Chinwag", "username": BOT_USERNAME},
        "text": message.text,
    }
    if message.thread_id is not None:
        body["message_thread_id"] = message.thread_id
    return body


def _administrator(user_id: int) -> dict[str, Any]:
    return {
        "status": "administrator",
        "user": {"id": user_id, "is_bot": False, "first_name": f"Admin {user_id}"},
        "can_be_edited": False,
        "is_anonymous": False,
        "can_manage_chat": True,
        "can_delete_messages": True,
        "can_manage_video_chats": True,
        "can_restrict_members": True,
        "can_promote_members": False,
        "can_change_info": True,
        "can_invite_users": True,
        "can_post_stories": False,
        "can_edit_stories": False,
        "can_delete_stories": False,
    }


def _ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _error(status: int, description: str, parameters: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=status)
