"""The Telegram adapter: python-telegram-bot with our own durable polling loop.

Receiving: `_poll` calls `getUpdates`, commits every update to the inbox (`storage/inbox.py`) and
only then advances the offset, which confirms the batch to Telegram at the next call. A consumer
task per chat feeds the pending rows to the engine in order and marks each done once its reply was
sent; rows left pending by a crash are handled first at the next start, as redelivered events (the
engine resends an answer it stored already). So a `kill -9` loses no message, and sends one answer
twice only if it strikes between sending a reply and marking it done.

Sending: typing actions while the reply is generated, the first chunk sent then edited at most once
per second, the final text split into messages of at most 4096 characters; plain text only (no
parse_mode: a model's Markdown cannot break a reply). 429s are waited out and retried, a group
upgraded to a supergroup (`ChatMigrated`, or the migrate_to/from service messages) is followed to
its new id, and its history moves along.

The bot token is part of every request URL: the httpx loggers are kept at WARNING and no log line
names the bot object, a URL or a library error's text that could contain them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import warnings
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from telegram import Bot, BotCommand, Message, ReplyParameters, Update
from telegram.constants import ChatAction, ChatType, MessageEntityType, MessageLimit
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.ext import Application, ApplicationBuilder

from adapters.splitting import split_reply
from bot.commands import parse_command
from bot.config import TelegramConfig
from bot.engine import ChatEngine
from bot.errors import ChinwagError, StorageError
from bot.events import ChatEvent
from bot.ports import InboxItem
from bot.reply import Reply
from storage.db import Database
from storage.inbox import UpdateInbox
from storage.locks import Claim, claim_exclusive

if TYPE_CHECKING:
    from bot.app import Services
    from bot.config import Settings

logger = logging.getLogger(__name__)

PLATFORM = "telegram"
# Telegram's "Group" user: an anonymous group admin posts as it, with sender_chat = the group.
ANONYMOUS_ADMIN_ID = 1087968824
MESSAGE_LIMIT: int = MessageLimit.MAX_TEXT_LENGTH  # 4096
ALLOWED_UPDATES = ["message"]
COMMANDS = (
    BotCommand("help", "List the commands"),
    BotCommand("reset", "Forget this conversation (admins)"),
    BotCommand("system", "Show or set the system prompt"),
    BotCommand("temperature", "Show or set the sampling temperature"),
)
# Done inbox rows only guard against redelivery of unconfirmed updates, which Telegram keeps 24 h.
INBOX_RETENTION = timedelta(days=2)
_PRUNE_EVERY_S = 3600.0
_MAX_SEND_ATTEMPTS = 6
_MAX_BACKOFF_S = 30.0
# How much longer than the long-poll timeout a getUpdates answer may take before it counts as lost.
_READ_MARGIN_S = 10.0

_T = TypeVar("_T")
AdminLookup = Callable[[int, int], bool]


# --- conversion (pure) -------------------------------------------------------------------------


def to_event(
    update: Update,
    bot_username: str,
    admins: Collection[int],
    is_chat_admin: AdminLookup,
) -> ChatEvent | None:
    """The `ChatEvent` for a new text message addressed to the bot, else None.

    Private chats: every text message. Groups: messages that mention @bot_username, reply to one of
    the bot's messages, or start with a command (`/cmd`, `/cmd@bot_username`; `/cmd@OtherBot` is
    not ours). The mention is removed from the text, so `@Bot /reset` is the command `/reset`.
    Admins: the user of a private chat, ids in `admins`, an anonymous admin posting as the group,
    or whoever `is_chat_admin(chat_id, user_id)` says. Anything else (edits, media, service
    messages, other bots) gives None.
    """
    message = update.message
    if message is None or message.text is None:
        return None
    sender = message.from_user
    if sender is None:
        return None
    chat = message.chat
    anonymous_admin = (
        sender.id == ANONYMOUS_ADMIN_ID
        and message.sender_chat is not None
        and message.sender_chat.id == chat.id
    )
    if sender.is_bot and not anonymous_admin:
        return None  # other bots: answering them can loop forever
    direct = chat.type == ChatType.PRIVATE
    command_target = _command_target(message)
    if command_target and command_target.lower() != bot_username.lower():
        return None
    mentioned = _mentions(message, bot_username)
    if not direct and not (command_target is not None or mentioned or _replies_to_bot(message, bot_username)):
        return None
    text = _strip_mention(message.text, bot_username) if mentioned else message.text

    channel = str(chat.id)
    if message.is_topic_message and message.message_thread_id is not None:
        channel = f"{chat.id}:{message.message_thread_id}"
    if anonymous_admin and message.sender_chat is not None:
        author_name = message.sender_chat.title or "Anonymous admin"
    else:
        author_name = sender.full_name
    is_admin = direct or anonymous_admin or sender.id in admins or is_chat_admin(chat.id, sender.id)
    return ChatEvent(
        platform=PLATFORM,
        channel=channel,
        author_id=str(sender.id),
        author_name=author_name,
        text=text,
        is_admin=is_admin,
        is_direct=direct,
        message_id=str(message.message_id),
    )


def _command_target(message: Message) -> str | None:
    """For a command message (bot_command entity at offset 0): the bot it names ("" if none)."""
    entities = message.entities
    if not entities or entities[0].type != MessageEntityType.BOT_COMMAND or entities[0].offset != 0:
        return None
    command = message.parse_entity(entities[0])
    return command.partition("@")[2]


def _mentions(message: Message, bot_username: str) -> bool:
    wanted = f"@{bot_username}".lower()
    return any(
        text.lower() == wanted for text in message.parse_entities([MessageEntityType.MENTION]).values()
    )


def _replies_to_bot(message: Message, bot_username: str) -> bool:
    replied = message.reply_to_message
    author = replied.from_user if replied is not None else None
    return (
        author is not None
        and author.is_bot
        and author.username is not None
        and author.username.lower() == bot_username.lower()
    )


def _strip_mention(text: str, bot_username: str) -> str:
    """Remove every `@bot_username` (and the spaces after it); the rest is kept as written."""
    pattern = re.compile(rf"(?<![\w@])@{re.escape(bot_username)}(?!\w)[ \t]*", re.IGNORECASE)
    return pattern.sub("", text).strip()


def utf16_length(text: str) -> int:
    """The length Telegram measures: UTF-16 code units (an emoji outside the BMP counts 2)."""
    return len(text.encode("utf-16-le")) // 2


def telegram_pieces(text: str) -> list[str]:
    """`text` as Telegram messages: `split_reply` pieces of at most 4096 UTF-16 units, blank ones
    dropped (Telegram refuses an empty message and trims the whitespace anyway)."""
    pieces: list[str] = []
    for piece in split_reply(text, MESSAGE_LIMIT):
        # 4096 characters hold at most 8192 UTF-16 units: halving the limit always fits.
        parts = [piece] if utf16_length(piece) <= MESSAGE_LIMIT else split_reply(piece, MESSAGE_LIMIT // 2)
        pieces.extend(part for part in parts if part.strip())
    return pieces


def _chat_id_of(payload: dict[str, Any]) -> int:
    """The chat a raw update belongs to (0 when it has none): the unit of ordering."""
    for key in ("message", "edited_message", "channel_post", "my_chat_member"):
        body = payload.get(key)
        if isinstance(body, dict):
            chat = body.get("chat")
            if isinstance(chat, dict) and isinstance(chat.get("id"), int):
                return int(chat["id"])
    return 0


def _seconds(value: int | float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _retry_after_s(error: RetryAfter) -> float:
    with warnings.catch_warnings():  # the int form is deprecated in favour of timedelta (22.2+)
        warnings.simplefilter("ignore")
        return max(0.0, _seconds(error.retry_after))


# --- sending helpers ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Target:
    """Where a reply goes; `chat_id` changes when the group turns out to have migrated."""

    chat_id: int
    thread_id: int | None
    reply_to: int | None


class _AdminCache:
    """Chat administrators per group, kept `ttl_s` seconds, at most `max_chats` groups (LRU)."""

    def __init__(self, ttl_s: float, max_chats: int = 1024) -> None:
        self._ttl_s = ttl_s
        self._max_chats = max_chats
        self._entries: OrderedDict[int, tuple[float, frozenset[int]]] = OrderedDict()

    def fresh(self, chat_id: int) -> bool:
        entry = self._entries.get(chat_id)
        return entry is not None and entry[0] > asyncio.get_running_loop().time()

    def is_admin(self, chat_id: int, user_id: int) -> bool:
        entry = self._entries.get(chat_id)
        return entry is not None and user_id in entry[1]

    def store(self, chat_id: int, user_ids: frozenset[int]) -> None:
        self._entries[chat_id] = (asyncio.get_running_loop().time() + self._ttl_s, user_ids)
        self._entries.move_to_end(chat_id)
        while len(self._entries) > self._max_chats:
            self._entries.popitem(last=False)


# --- the adapter -------------------------------------------------------------------------------


class TelegramAdapter:
    """Receives Telegram messages through the durable inbox and posts the engine's replies."""

    name = "telegram"

    def __init__(
        self,
        config: TelegramConfig,
        engine: ChatEngine,
        database: Database,
        *,
        poll_timeout_s: int = 30,
        edit_interval_s: float = 1.0,
        typing_interval_s: float = 4.0,
        admin_cache_s: float = 300.0,
        drain_s: float = 10.0,
    ) -> None:
        if config.token is None or not config.token.get_secret_value().strip():
            raise ValueError("the Telegram adapter needs a token")
        self._token = config.token
        self._base_url = config.base_url
        self._admins = frozenset(config.admins)
        self._engine = engine
        self._inbox = UpdateInbox(database, PLATFORM)
        self._database = database
        self._claim: Claim | None = None
        self._poll_timeout_s = poll_timeout_s
        self._edit_interval_s = edit_interval_s
        self._typing_interval_s = typing_interval_s
        self._drain_s = drain_s
        self._chat_admins = _AdminCache(admin_cache_s)
        self._app: Application[Any, Any, Any, Any, Any, Any] | None = None
        self._username = ""
        self._poller: asyncio.Task[None] | None = None
        self._offset: int | None = None
        # chat id -> (update, recovered from a previous run) waiting for that chat's worker.
        self._queues: dict[int, deque[tuple[InboxItem, bool]]] = {}
        self._workers: dict[int, asyncio.Task[None]] = {}
        # Groups upgraded to supergroups: old chat id -> new one (history follows the new id).
        self._migrated: dict[int, int] = {}
        self._stopping = False

    @property
    def _bot(self) -> Bot:
        if self._app is None:
            raise RuntimeError("the Telegram adapter is not started")
        bot: Bot = self._app.bot
        return bot

    async def start(self) -> None:
        """Log in (getMe), drop any webhook, publish the commands, resume the inbox, start polling.

        Raises `ChinwagError` when Telegram refuses the token or cannot be reached; everything
        started so far is stopped again then.
        """
        for name in ("httpx", "httpcore"):  # they log request URLs, which contain the token
            logging.getLogger(name).setLevel(logging.WARNING)
        # python-telegram-bot logs its API URL (token included) at DEBUG when the bot is built.
        library = logging.getLogger("telegram")
        if library.getEffectiveLevel() < logging.INFO:
            library.setLevel(logging.INFO)
        # `_fetch_updates` calls getUpdates through `do_api_request` on purpose (see there).
        warnings.filterwarnings("ignore", message=r"Please use 'Bot\.get_updates'", category=UserWarning)
        self._stopping = False
        await self._claim_poller()
        builder = ApplicationBuilder().token(self._token.get_secret_value()).updater(None)
        if self._base_url:
            builder = builder.base_url(self._base_url)
        self._app = builder.build()
        try:
            await self._app.initialize()
            await self._app.start()
            bot = self._bot
            self._username = bot.username
            await self._request(None, bot.delete_webhook)
            try:
                await self._request(None, lambda: bot.set_my_commands(COMMANDS))
            except TelegramError as error:  # the menu is a convenience: answer messages anyway
                logger.warning("telegram: could not publish the command menu (%s)", type(error).__name__)
            with contextlib.suppress(StorageError):
                await self._inbox.prune(INBOX_RETENTION)
            pending = await self._inbox.pending()
        except InvalidToken:
            await self.stop()
            raise ChinwagError("telegram: the bot token was refused") from None
        except TelegramError as error:
            await self.stop()
            raise ChinwagError(f"telegram: cannot reach the Bot API ({type(error).__name__})") from None
        except BaseException:
            await self.stop()
            raise
        if pending:
            logger.info("telegram: answering %d message(s) left pending by the last run", len(pending))
        for item in pending:
            self._enqueue(item, recovered=True)
        self._poller = asyncio.create_task(self._poll(), name="chinwag:telegram:poll")
        logger.info("telegram: receiving as @%s", self._username)

    async def stop(self) -> None:
        """Stop polling, confirm what was stored, let in-flight replies finish for a while (the
        rest stays pending for the next start), then close the connection. Idempotent."""
        self._stopping = True
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        app = self._app
        if app is not None and self._offset is not None:
            # Everything below the offset is committed: confirm it so a restart doesn't fetch it again.
            with contextlib.suppress(TelegramError):
                await app.bot.do_api_request(
                    "get_updates", api_kwargs={"offset": self._offset, "timeout": 0, "limit": 1}
                )
        workers = set(self._workers.values())
        if workers:
            _, late = await asyncio.wait(workers, timeout=self._drain_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        self._workers.clear()
        self._queues.clear()
        self._app = None
        if app is not None:
            if app.running:
                await app.stop()
            await app.shutdown()
        claim, self._claim = self._claim, None
        if claim is not None:
            await claim.release()

    async def _claim_poller(self) -> None:
        """Become the one process that polls this bot. Telegram answers a second getUpdates poller
        with 409 Conflict, and the two would take each other's updates: on a shared PostgreSQL
        database a second process refuses to start the adapter instead (a session advisory lock
        keyed by a hash of the token, released when this process stops or dies)."""
        if self._claim is not None:
            return
        claim = await claim_exclusive(self._database, f"telegram-poller:{self._token.get_secret_value()}")
        if claim is None:
            raise ChinwagError(
                "telegram: another Chinwag process on this database already polls this bot; "
                "run the Telegram adapter in one process only (telegram.enabled: false elsewhere)"
            )
        self._claim = claim

    # --- receiving ---------------------------------------------------------------------------

    async def _poll(self) -> None:
        """Long-poll getUpdates; commit each batch to the inbox before confirming it."""
        failures = 0
        loop = asyncio.get_running_loop()
        next_prune = loop.time() + _PRUNE_EVERY_S
        while True:
            try:
                items = await self._fetch_updates()
                fresh = await self._inbox.add(items)
            except RetryAfter as error:
                await asyncio.sleep(_retry_after_s(error))
                continue
            except (InvalidToken, Forbidden):
                logger.error("telegram: the bot token was refused; receiving stopped")
                return
            except (TelegramError, StorageError) as error:
                # The offset did not move: Telegram hands the same updates out again.
                failures += 1
                delay = min(_MAX_BACKOFF_S, 0.5 * 2**failures)
                logger.warning(
                    "telegram: receiving failed (%s); retrying in %.1f s", type(error).__name__, delay
                )
                await asyncio.sleep(delay)
                continue
            except Exception:
                # A bug must not end receiving for good; the offset did not move, nothing is lost.
                failures += 1
                logger.exception("telegram: unexpected error while receiving")
                await asyncio.sleep(min(_MAX_BACKOFF_S, 0.5 * 2**failures))
                continue
            failures = 0
            if items:
                # Confirmed by the next getUpdates call, now that the batch is durable.
                self._offset = max(item.update_id for item in items) + 1
            for item in fresh:
                self._enqueue(item, recovered=False)
            if loop.time() > next_prune:
                next_prune = loop.time() + _PRUNE_EVERY_S
                with contextlib.suppress(StorageError):
                    await self._inbox.prune(INBOX_RETENTION)

    async def _fetch_updates(self) -> list[InboxItem]:
        """One getUpdates call, returning the raw JSON of each update.

        Raw, not `Bot.get_updates`: that parses the whole batch, so a single update the library
        cannot parse would fail every call and stall the bot; here it is stored, fails alone in
        the consumer, and is marked done.
        """
        parameters: dict[str, Any] = {"timeout": self._poll_timeout_s, "allowed_updates": ALLOWED_UPDATES}
        if self._offset is not None:
            parameters["offset"] = self._offset
        result = await self._bot.do_api_request(
            "get_updates", api_kwargs=parameters, read_timeout=self._poll_timeout_s + _READ_MARGIN_S
        )
        if not isinstance(result, list):
            raise TelegramError("getUpdates answered something other than a list")
        return [
            InboxItem(int(update["update_id"]), update)
            for update in result
            if isinstance(update, dict) and isinstance(update.get("update_id"), int)
        ]

    def _enqueue(self, item: InboxItem, *, recovered: bool) -> None:
        chat_id = _chat_id_of(item.payload)
        chat_id = self._migrated.get(chat_id, chat_id)
        self._queues.setdefault(chat_id, deque()).append((item, recovered))
        if chat_id not in self._workers:
            self._workers[chat_id] = asyncio.create_task(
                self._work(chat_id), name=f"chinwag:telegram:{chat_id}"
            )

    async def _work(self, chat_id: int) -> None:
        """Handle one chat's updates strictly in order; exits when the chat's queue is empty."""
        queue = self._queues[chat_id]
        try:
            while queue:
                item, recovered = queue[0]
                if not await self._process(item, recovered):
                    return  # shutting down: the row stays pending for the next start
                queue.popleft()
        finally:
            if self._workers.get(chat_id) is asyncio.current_task():
                del self._workers[chat_id]
            if not queue and self._queues.get(chat_id) is queue:
                del self._queues[chat_id]

    async def _process(self, item: InboxItem, recovered: bool) -> bool:
        """Answer one stored update and mark it done; False when it must stay pending."""
        try:
            update = Update.de_json(item.payload, self._bot)
            message = update.message
            if message is not None and message.migrate_to_chat_id is not None:
                await self._follow_migration(message.chat.id, message.migrate_to_chat_id)
            if message is not None and message.migrate_from_chat_id is not None:
                await self._follow_migration(message.migrate_from_chat_id, message.chat.id)
            event = await self._event_for(update)
            if event is not None and message is not None:
                await self._answer(message, event, recovered)
        except asyncio.CancelledError:
            raise
        except ChinwagError:
            if self._stopping:
                return False  # the engine is closing
            logger.exception("telegram: failed to handle update %d", item.update_id)
        except Exception:
            # Marked done anyway: an update that always fails must not block its chat forever.
            logger.exception("telegram: failed to handle update %d", item.update_id)
        try:
            await self._inbox.mark_done(item.update_id)
        except StorageError as error:
            logger.error("telegram: could not mark update %d done: %s", item.update_id, error)
        return True

    async def _event_for(self, update: Update) -> ChatEvent | None:
        """`to_event`, fetching the group's administrators first when a command needs them."""
        event = to_event(update, self._username, self._admins, self._chat_admins.is_admin)
        message = update.message
        if event is None or message is None:
            return None
        chat_id = message.chat.id
        if (
            not event.is_admin
            and not event.is_direct
            and parse_command(event.text) is not None
            and not self._chat_admins.fresh(chat_id)
        ):
            await self._refresh_admins(chat_id)
            event = to_event(update, self._username, self._admins, self._chat_admins.is_admin)
        if event is not None and chat_id in self._migrated:
            new_channel = str(self._migrated[chat_id]) + event.channel[len(str(chat_id)) :]
            event = replace(event, channel=new_channel)
        return event

    async def _refresh_admins(self, chat_id: int) -> None:
        try:
            members = await self._request(None, lambda: self._bot.get_chat_administrators(chat_id))
        except TelegramError as error:
            logger.warning(
                "telegram: could not read the administrators of %d (%s)", chat_id, type(error).__name__
            )
            return
        self._chat_admins.store(chat_id, frozenset(member.user.id for member in members))

    # --- answering ---------------------------------------------------------------------------

    async def _answer(self, message: Message, event: ChatEvent, recovered: bool) -> None:
        chat_id = self._migrated.get(message.chat.id, message.chat.id)
        target = _Target(
            chat_id=chat_id,
            thread_id=message.message_thread_id if message.is_topic_message else None,
            reply_to=None if event.is_direct or chat_id != message.chat.id else message.message_id,
        )
        if recovered:
            # The previous run may have stored this message (and its answer) and died before the
            # reply was sent: the engine then gives the stored answer again instead of silence.
            event = replace(event, redelivered=True)
        await self._deliver(target, self._engine.handle(event))

    async def _deliver(self, target: _Target, reply: Reply) -> None:
        """Render `reply` into `target`: typing, a streamed first message, then the split final text."""
        typing = asyncio.create_task(self._keep_typing(target, reply))
        try:
            first, shown, shown_at = await self._stream(target, reply)
            if reply.silent:
                return
            pieces = telegram_pieces(await reply.text())
            if first is not None and pieces:
                if pieces[0] != shown:
                    # The final edit keeps the pace too (one per `edit_interval_s` per chat).
                    wait = shown_at + self._edit_interval_s - asyncio.get_running_loop().time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                if pieces[0] == shown or await self._try_edit(target, first, pieces[0]):
                    pieces = pieces[1:]
                # else: the streamed message cannot be edited (deleted?): post the whole reply anew.
            for piece in pieces:
                await self._send(target, piece)
        finally:
            typing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await typing

    async def _stream(self, target: _Target, reply: Reply) -> tuple[Message | None, str, float]:
        """Show the reply while it is produced: the first text as a message, then edits at most
        every `edit_interval_s`. Returns that message (None if none was sent), its text and the
        loop time it was last changed."""
        changed = asyncio.Event()

        async def follow() -> None:
            async for _ in reply:
                changed.set()
            changed.set()

        reader = asyncio.create_task(follow())
        first: Message | None = None
        shown = ""
        shown_at = 0.0
        loop = asyncio.get_running_loop()
        try:
            while True:
                await changed.wait()
                changed.clear()
                if reply.done:
                    break
                so_far = telegram_pieces(reply.text_so_far())
                preview = so_far[0] if so_far else ""
                if not preview or preview == shown:
                    continue
                if first is None:
                    first = await self._send(target, preview)
                elif not await self._try_edit(target, first, preview):
                    break  # stop streaming into a message that cannot be edited; the end posts anew
                shown = preview
                shown_at = loop.time()
                # Telegram allows about one message or edit per second per chat.
                await asyncio.wait({reader}, timeout=self._edit_interval_s)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        return first, shown, shown_at

    async def _send(self, target: _Target, text: str) -> Message:
        def send() -> Awaitable[Message]:
            reply_parameters = (
                ReplyParameters(target.reply_to, allow_sending_without_reply=True)
                if target.reply_to is not None
                else None
            )
            return self._bot.send_message(
                chat_id=target.chat_id,
                text=text,
                message_thread_id=target.thread_id,
                reply_parameters=reply_parameters,
            )

        message = await self._request(target, send)
        target.reply_to = None  # only the first message of a reply quotes the user's
        return message

    async def _try_edit(self, target: _Target, message: Message, text: str) -> bool:
        """Set `message`'s text; False when Telegram refuses (e.g. the message was deleted)."""
        try:
            await self._request(target, lambda: self._edit(target, message, text))
        except BadRequest as error:
            if "not modified" in str(error).lower():
                return True
            logger.warning("telegram: could not edit a reply in %d (%s)", target.chat_id, error.message)
            return False
        return True

    async def _edit(self, target: _Target, message: Message, text: str) -> Message:
        edited = await self._bot.edit_message_text(
            chat_id=target.chat_id, message_id=message.message_id, text=text
        )
        return edited if isinstance(edited, Message) else message

    async def _keep_typing(self, target: _Target, reply: Reply) -> None:
        """Show "typing…" every `typing_interval_s` (Telegram shows it for 5 s) until the reply is done."""
        while not reply.done:
            # Cosmetic: never retry or fail a reply over a typing indicator.
            with contextlib.suppress(TelegramError):
                await self._bot.send_chat_action(
                    chat_id=target.chat_id, action=ChatAction.TYPING, message_thread_id=target.thread_id
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reply.text(), timeout=self._typing_interval_s)

    async def _request(self, target: _Target | None, call: Callable[[], Awaitable[_T]]) -> _T:
        """Run one Bot API call, waiting out 429s, retrying connection failures with backoff and
        following a migrated group (`target.chat_id` is updated). Timeouts are not retried: the
        message may have arrived, and a retry would post it twice."""
        for attempt in range(1, _MAX_SEND_ATTEMPTS + 1):
            last = attempt == _MAX_SEND_ATTEMPTS
            try:
                return await call()
            except RetryAfter as error:
                if last:
                    raise
                delay = _retry_after_s(error)
                logger.warning("telegram: rate limited; waiting %.1f s", delay)
                await asyncio.sleep(delay)
            except ChatMigrated as error:
                if target is None or last:
                    raise
                await self._follow_migration(target.chat_id, error.new_chat_id)
                target.chat_id = error.new_chat_id
                target.reply_to = None  # the user's message stayed in the old chat
            except (BadRequest, TimedOut):
                raise
            except NetworkError as error:
                if last:
                    raise
                delay = min(_MAX_BACKOFF_S, 0.5 * 2**attempt)
                logger.warning(
                    "telegram: request failed (%s); retrying in %.1f s", type(error).__name__, delay
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _follow_migration(self, old_chat_id: int, new_chat_id: int) -> None:
        """Send the group's later messages and replies to `new_chat_id` and move its history there.

        The move is queued in the engine behind the replies already under way in either chat,
        and before any message handled after this call. Basic groups have no forum topics, so only
        the chat's own channel moves. A failed move is logged and the reply still goes out (the
        next start moves it again when Telegram reports the migration again). Raises
        `ChinwagError` when the engine is closing.
        """
        if self._migrated.get(old_chat_id) == new_chat_id:
            return
        logger.info("telegram: group %d became supergroup %d", old_chat_id, new_chat_id)
        self._migrated[old_chat_id] = new_chat_id
        try:
            await self._engine.move_channel(f"{PLATFORM}:{old_chat_id}", f"{PLATFORM}:{new_chat_id}")
        except StorageError as error:
            logger.error(
                "telegram: could not move the history of %d to %d: %s", old_chat_id, new_chat_id, error
            )


def create(settings: Settings, services: Services) -> TelegramAdapter | None:
    """The adapter for `settings.telegram`, or None when no token is configured."""
    config = settings.telegram
    if config.token is None or not config.token.get_secret_value().strip():
        return None
    return TelegramAdapter(
        config,
        services.engine,
        services.database,
        poll_timeout_s=config.poll_timeout_s,
        edit_interval_s=config.edit_interval_s,
        typing_interval_s=config.typing_interval_s,
        admin_cache_s=config.admin_cache_s,
        drain_s=config.drain_s,
    )
