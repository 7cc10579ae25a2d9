"""The Telegram adapter: python-telegram-bot with our own durable polling loop.

Receiving: `_poll` calls `getUpdates`, commits every update to the inbox (`storage/inbox.py`) and
only then advances the offset, which confirms the batch to Telegram at the next call. A consumer
task per chat feeds the pending rows to the engine in order and marks each done once its reply was
sent; rows left pending by a crash are handled first at the next start, as redelivered events (the
engine resends an answer it stored already). So a `kill -9` loses no message, and sends one answer
twice only if it strikes between sending a reply and marking it done.

Every text message of a person becomes an event, and so does a document or photo (its caption is
the text, possibly empty; the file is fetched only when the engine reads it, see
`telegram_files.py`), in groups too: one that does not mention the bot,
reply to it or run a command is marked `addressed=False`, and the engine decides whether to answer
it (`/listen all`); a silent reply posts nothing and shows no typing. Each group event says whether
its author is staff (a configured admin, an anonymous admin, or one of the chat's administrators,
read with getChatAdministrators at most once per chat per `admin_cache_s`) and whether the bot
sees all group messages (getMe's `can_read_all_group_messages`, False in privacy mode).

Edits (`edited_message`) take the same path through the inbox, in their chat's order: the edited
message was handled before the edit is passed to the engine (`ChatService.edit`), which replaces
the stored text and answers nothing. Files come from `base_file_url` (derived from `base_url`:
`http://HOST/bot` -> `http://HOST/file/bot`) through one HTTP client the adapter owns.

Sending: `adapters.delivery` streams each reply through a `TelegramSink` (`telegram_sending.py`):
typing while the reply is generated, the first chunk sent then edited at most once per second, the
final text split into messages showing at most 4096 UTF-16 units, the model's Markdown rendered as
Telegram HTML (`telegram_format.py`; plain text where Telegram refuses it). A group upgraded to a supergroup
(`ChatMigrated`, or the migrate_to/from service messages) is followed to its new id, and its
history moves along. Conversion from updates to `ChatEvent`s is in `telegram_events.py`.

The bot token is part of every request URL: the httpx loggers are kept at WARNING and no log line
names the bot object, a URL or a library error's text that could contain them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any, TypeVar

import httpx
from telegram import Bot, BotCommand, Message, Update
from telegram.error import Forbidden, InvalidToken, RetryAfter, TelegramError
from telegram.ext import Application, ApplicationBuilder

from adapters.base import has_token
from adapters.channel_workers import ChannelWorkers
from adapters.delivery import Pacing, deliver
from adapters.telegram_events import (
    ANONYMOUS_ADMIN_ID,
    MESSAGE_LIMIT,
    PLATFORM,
    chat_id_of,
    telegram_pieces,
    to_edit,
    to_event,
    utf16_length,
)
from adapters.telegram_files import TelegramFiles, file_base_url
from adapters.telegram_sending import BACKOFF, Target, TelegramSink, request, retry_after_s
from bot.commands import COMMANDS
from bot.config import ChatConfig, TelegramConfig
from bot.errors import ChinwagError, StorageError
from bot.events import ChatEvent
from bot.ports import ChatService, Claim, ClaimRole, InboxItem, UpdateInbox

logger = logging.getLogger(__name__)

# Edits too: they replace the stored text of the message they change.
ALLOWED_UPDATES = ["message", "edited_message"]
MENU = tuple(BotCommand(spec.name, spec.menu_text) for spec in COMMANDS)
# Done inbox rows only guard against redelivery of unconfirmed updates, which Telegram keeps 24 h.
INBOX_RETENTION = timedelta(days=2)
_PRUNE_EVERY_S = 3600.0
# How much longer than the long-poll timeout a getUpdates answer may take before it counts as lost.
_READ_MARGIN_S = 10.0

# The `telegram:` keys that tune the adapter, each passed as the keyword argument of its name.
_T = TypeVar("_T")


# --- the adapter -------------------------------------------------------------------------------


class _AdminCache:
    """Chat administrators per group, kept `ttl_s` seconds, at most `max_chats` groups (LRU)."""

    def __init__(self, ttl_s: float, max_chats: int = 1024) -> None:
        self.ttl_s = ttl_s
        self._max_chats = max_chats
        self._entries: OrderedDict[int, tuple[float, frozenset[int]]] = OrderedDict()

    def fresh(self, chat_id: int) -> bool:
        entry = self._entries.get(chat_id)
        return entry is not None and entry[0] > asyncio.get_running_loop().time()

    def is_admin(self, chat_id: int, user_id: int) -> bool:
        return user_id in self.known(chat_id)

    def known(self, chat_id: int) -> frozenset[int]:
        """The chat's administrators as last read, fresh or not (none when never read)."""
        entry = self._entries.get(chat_id)
        return entry[1] if entry is not None else frozenset()

    def store(self, chat_id: int, user_ids: frozenset[int]) -> None:
        self._entries[chat_id] = (asyncio.get_running_loop().time() + self.ttl_s, user_ids)
        self._entries.move_to_end(chat_id)
        while len(self._entries) > self._max_chats:
            self._entries.popitem(last=False)


class TelegramAdapter:
    """Receives Telegram messages through the durable inbox and posts the engine's replies."""

    name = "telegram"

    def __init__(
        self,
        config: TelegramConfig,
        engine: ChatService,
        inbox: UpdateInbox,
        claim_role: ClaimRole,
        *,
        chat: ChatConfig | None = None,
    ) -> None:
        """Every tuning value comes from `config` (`telegram:`); the attachment limits the adapter
        applies (which photo size to offer, the download deadline) from `chat` (`chat:`)."""
        if not has_token(config.token):
            raise ValueError("the Telegram adapter needs a token")
        chat = chat or ChatConfig()
        self._token = config.token
        self._base_url = config.base_url
        self._max_image_bytes = chat.max_image_bytes
        self._attachment_timeout_s = chat.attachment_timeout_s
        # Downloads of files (closed at stop); None while stopped.
        self._files: TelegramFiles | None = None
        self._admins = frozenset(config.admins)
        self._engine = engine
        self._inbox = inbox
        self._claim_role = claim_role
        self._claim: Claim | None = None
        self._poll_timeout_s = config.poll_timeout_s
        self._pacing = Pacing(
            edit_interval_s=config.edit_interval_s, typing_interval_s=config.typing_interval_s
        )
        self._drain_s = config.drain_s
        self._chat_admins = _AdminCache(config.admin_cache_s)
        self._app: Application[Any, Any, Any, Any, Any, Any] | None = None
        self._username = ""
        # getMe's can_read_all_group_messages: False in privacy mode, where Telegram delivers only
        # the group messages addressed to the bot (`/listen all` warns about it).
        self._sees_all_messages = True
        self._poller: asyncio.Task[None] | None = None
        self._offset: int | None = None
        # Per chat, in order: (update, recovered from a previous run).
        self._workers: ChannelWorkers[int, tuple[InboxItem, bool]] = ChannelWorkers(
            self._process, name=PLATFORM
        )
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
            files_url = file_base_url(self._base_url)
            if files_url is not None:
                builder = builder.base_file_url(files_url)
        self._app = builder.build()
        self._files = TelegramFiles(
            bot=self._app.bot,
            client=httpx.AsyncClient(timeout=httpx.Timeout(self._attachment_timeout_s)),
            timeout_s=self._attachment_timeout_s,
            requester=lambda call: self._request(None, call),
        )
        try:
            await self._app.initialize()
            await self._app.start()
            bot = self._bot
            self._username = bot.username
            self._sees_all_messages = bool(bot.can_read_all_group_messages)
            await self._request(None, bot.delete_webhook)
            try:
                await self._request(None, lambda: bot.set_my_commands(MENU))
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
        await self._workers.drain(self._drain_s)
        files, self._files = self._files, None
        if files is not None:
            await files.client.aclose()
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
        claim = await self._claim_role(f"telegram-poller:{self._token.get_secret_value()}")
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
                await asyncio.sleep(retry_after_s(error))
                continue
            except (InvalidToken, Forbidden):
                logger.error("telegram: the bot token was refused; receiving stopped")
                return
            except (TelegramError, StorageError) as error:
                # The offset did not move: Telegram hands the same updates out again.
                failures += 1
                delay = BACKOFF.delay(failures)
                logger.warning(
                    "telegram: receiving failed (%s); retrying in %.1f s", type(error).__name__, delay
                )
                await asyncio.sleep(delay)
                continue
            except Exception:
                # A bug must not end receiving for good; the offset did not move, nothing is lost.
                failures += 1
                logger.exception("telegram: unexpected error while receiving")
                await asyncio.sleep(BACKOFF.delay(failures))
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
        chat_id = chat_id_of(item.payload)
        self._workers.put(self._migrated.get(chat_id, chat_id), (item, recovered))

    async def _process(self, chat_id: int, job: tuple[InboxItem, bool]) -> bool:
        """Answer one stored update of `chat_id` and mark it done; False when it must stay pending."""
        item, recovered = job
        try:
            update = Update.de_json(item.payload, self._bot)
            if update.edited_message is not None:
                await self._apply_edit(update, chat_id)
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
        """`to_event`, knowing the group's administrators: every group message needs them (staff
        pass the access lists and quotas), so they are read when the cache has none fresh for the
        chat, at most once per chat per `admin_cache_s` (a chat's updates are handled one at a time)."""
        event = self._to_event(update)
        message = update.message
        if event is None or message is None:
            return None
        chat_id = message.chat.id
        if not event.is_staff and not event.is_direct and not self._chat_admins.fresh(chat_id):
            await self._refresh_admins(chat_id)
            event = self._to_event(update)
        return None if event is None else self._in_current_chat(event, chat_id)

    def _in_current_chat(self, event: ChatEvent, chat_id: int) -> ChatEvent:
        """`event` in the channel its chat's history lives in now (a migrated group's new id)."""
        if chat_id not in self._migrated:
            return event
        new_channel = str(self._migrated[chat_id]) + event.channel[len(str(chat_id)) :]
        return replace(event, channel=new_channel)

    def _to_event(self, update: Update) -> ChatEvent | None:
        files = self._files
        if files is None:
            raise ChinwagError("telegram: the adapter is stopped")
        return to_event(
            update,
            self._username,
            self._admins,
            self._chat_admins.is_admin,
            sees_all_messages=self._sees_all_messages,
            files=files.download,
            max_image_bytes=self._max_image_bytes,
        )

    async def _apply_edit(self, update: Update, chat_id: int) -> None:
        """Pass an edited message's new text to the engine, which replaces the stored text and
        answers nothing. Called in the chat's order, so the edited message was handled before."""
        message = update.edited_message
        event = to_edit(update, self._username, self._admins, self._chat_admins.is_admin)
        if event is None or message is None:
            return
        event = self._in_current_chat(event, message.chat.id)
        if not await self._engine.edit(event):
            # Not stored: a message the bot never kept (unaddressed chatter it ignored, one older
            # than the history it keeps, or one sent before the bot joined). Nothing to change.
            logger.info(
                "telegram: the edit of message %s in chat %d changed nothing (not stored)",
                event.message_id,
                chat_id,
            )

    async def _refresh_admins(self, chat_id: int) -> None:
        """Read the chat's administrators into the cache. A failure is logged and remembered for
        `admin_cache_s` like an answer (the administrators known before, if any, still count): the
        message is handled anyway, its author not staff unless known to be, and the next message
        does not ask again at once."""
        try:
            members = await self._request(None, lambda: self._bot.get_chat_administrators(chat_id))
        except TelegramError as error:
            logger.warning(
                "telegram: could not read the administrators of %d (%s); asking again in %g s",
                chat_id,
                type(error).__name__,
                self._chat_admins.ttl_s,
            )
            self._chat_admins.store(chat_id, self._chat_admins.known(chat_id))
            return
        self._chat_admins.store(chat_id, frozenset(member.user.id for member in members))

    # --- answering ---------------------------------------------------------------------------

    async def _answer(self, message: Message, event: ChatEvent, recovered: bool) -> None:
        chat_id = self._migrated.get(message.chat.id, message.chat.id)
        target = Target(
            chat_id=chat_id,
            thread_id=message.message_thread_id if message.is_topic_message else None,
            reply_to=None if event.is_direct or chat_id != message.chat.id else message.message_id,
        )
        if recovered:
            # The previous run may have stored this message (and its answer) and died before the
            # reply was sent: the engine then gives the stored answer again instead of silence.
            event = replace(event, redelivered=True)
        # Telegram allows about one message or edit per second per chat: `edit_interval_s`.
        sink = TelegramSink(self._bot, target, self._follow_migration)
        await deliver(self._engine.handle(event), sink, self._pacing)

    async def _request(self, target: Target | None, call: Callable[[], Awaitable[_T]]) -> _T:
        """`telegram_sending.request`, following migrations with this adapter."""
        return await request(call, target, self._follow_migration)

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


def create(
    config: TelegramConfig,
    engine: ChatService,
    inbox: UpdateInbox,
    claim_role: ClaimRole,
    *,
    chat: ChatConfig | None = None,
) -> TelegramAdapter | None:
    """The adapter for `config` (`telegram:`, attachment limits from `chat:`), or None when no
    token is configured."""
    if not has_token(config.token):
        return None
    return TelegramAdapter(config, engine, inbox, claim_role, chat=chat)


__all__ = [
    "ANONYMOUS_ADMIN_ID",
    "MESSAGE_LIMIT",
    "PLATFORM",
    "TelegramAdapter",
    "create",
    "telegram_pieces",
    "to_event",
    "utf16_length",
]
