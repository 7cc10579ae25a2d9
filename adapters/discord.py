"""The Discord adapter: a discord.py `Client` that feeds addressed messages to the engine.

Receiving: `on_message` turns each message into a `ChatEvent` (`to_event`, pure, in
`discord_events.py`) and hands it to the engine at once, so the engine's per-channel order is the
gateway's order; a worker per channel then posts the replies one after another. Guild messages
that do not mention the bot, reply to it or run one of its commands go to the engine too, marked
`addressed=False` (it answers them only in a channel set to `/listen all`; a silent reply posts
nothing and shows no typing), with the author's role ids and whether they are staff. After a dropped
gateway connection discord.py RESUMEs and the server replays what was missed. When the gateway
starts a new session instead, `discord_backfill.py` (when the composition root gives the last
answered message id per channel) fetches what the bot missed and hands the addressed messages
over as redelivered. So a
message stored but not answered, or answered but not posted, when the process was killed gets one
reply after the restart: the engine answers it now, or re-sends its stored answer. Slash commands:
`discord_commands.py`.

Files sent with a message become the event's attachments; the engine downloads them when it needs
them, streamed from the attachment URL by `discord_files.py` (never discord.py's `Attachment.read()`,
which reads a whole file into memory). Edits and deletes: `on_raw_message_edit`,
`on_raw_message_delete` and `on_raw_bulk_message_delete` fire also for messages discord.py no longer
caches (the plain `on_message_edit`/`on_message_delete` do not); a person's text edit goes to
`engine.edit` (not answered), deleted ids to `engine.delete` with the channel's key, which drops
them and the bot's replies to them from the history (ids the engine never stored are ignored
there). The guild and DM message intents of `Intents.default()` carry these events; message
content is needed for the edited text in guilds. A MESSAGE_UPDATE discord.py cannot build a message
from (an old-style partial update without `content`, e.g. a link preview) is dropped before its
parser: that parser would raise and end the gateway connection.

Sending: `adapters.delivery` streams each reply through a `DiscordSink`: a typing indicator while
the reply is generated, the first text posted (after `first_post_delay_s`) then edited at most once
per `edit_interval_s` (1.5 s), the final text split into messages of at most 2000 characters with
``` code fences closed at the end of a part and reopened at the start of the next. The first
message replies to the user's (in DMs too: that quote is what backfill reads to know what was
delivered, and it shows which question an answer belongs to); no reply mentions anybody
(`AllowedMentions.none()`: a model must not ping @everyone). 429s are waited out by discord.py itself.

The token is only handed to `Client.login`; no log line names it, a URL or a library object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket

from adapters.base import has_token
from adapters.channel_workers import ChannelWorkers
from adapters.delivery import Pacing, deliver
from adapters.discord_backfill import Backfill, SeenIds, shard_for
from adapters.discord_commands import answer_command, setup_commands
from adapters.discord_events import (
    MESSAGE_LIMIT,
    PLATFORM,
    TEXT_COMMANDS,
    channel_key,
    discord_pieces,
    edit_event,
    to_event,
)
from adapters.discord_files import AttachmentFetcher
from bot.backoff import Backoff
from bot.config import DiscordConfig
from bot.errors import ChinwagError
from bot.events import ChatEvent
from bot.ports import ChatService, LastAnsweredIds
from bot.reply import Reply

logger = logging.getLogger(__name__)

# The library's own endpoints, restored when no override is configured (they are class attributes).
LIBRARY_API_BASE: str = discord.http.Route.BASE
LIBRARY_GATEWAY: yarl.URL = DiscordWebSocket.DEFAULT_GATEWAY
_BACKOFF = Backoff()
# What discord.py's Message needs from a MESSAGE_UPDATE (it raises KeyError without them).
_WHOLE_MESSAGE_KEYS = frozenset({"id", "channel_id", "type", "content", "author"})


# --- the adapter -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Job:
    """One addressed message and the engine's reply to it, waiting for its channel's worker."""

    message: discord.Message
    event: ChatEvent
    reply: Reply


class _Client(discord.Client):
    """Forwards the gateway events the adapter needs; the adapter keeps all the state."""

    def __init__(self, adapter: DiscordAdapter, **options: Any) -> None:
        super().__init__(**options)
        self._adapter = adapter
        self.tree: app_commands.CommandTree[_Client] = app_commands.CommandTree(self)
        _skip_partial_updates(self._connection.parsers)

    async def setup_hook(self) -> None:
        await self._adapter._setup_commands(self)

    async def on_ready(self) -> None:
        self._adapter._on_ready()

    async def on_message(self, message: discord.Message) -> None:
        # discord.py runs each handler as a task, started in gateway order; nothing is awaited
        # before the engine gets the event, so the engine sees each channel's messages in order.
        self._adapter._on_message(message)

    async def on_raw_message_edit(self, update: discord.RawMessageUpdateEvent) -> None:
        # Like on_message: straight to the engine, so an edit keeps its place in the channel's order.
        self._adapter._on_edit(update)

    async def on_raw_message_delete(self, deleted: discord.RawMessageDeleteEvent) -> None:
        self._adapter._on_delete(deleted.channel_id, [deleted.message_id])

    async def on_raw_bulk_message_delete(self, deleted: discord.RawBulkMessageDeleteEvent) -> None:
        self._adapter._on_delete(deleted.channel_id, sorted(deleted.message_ids))


def _skip_partial_updates(parsers: dict[str, Callable[[Any], None]]) -> None:
    """Drop the MESSAGE_UPDATEs discord.py cannot parse instead of letting them end the connection.

    discord.py (2.5+) builds a whole `Message` from every MESSAGE_UPDATE, as Discord sends whole
    messages now; an update without `content` or `author` (an embed-only update, as Discord used
    to send for link previews) makes its parser raise KeyError inside the gateway loop, which then
    ends the connection and a new session starts. Such an update edits no text: it is skipped."""
    parse = parsers["MESSAGE_UPDATE"]

    def parse_whole_messages(data: Any) -> None:
        if isinstance(data, dict) and data.keys() >= _WHOLE_MESSAGE_KEYS:
            parse(data)
        else:
            logger.debug("discord: a partial message update skipped")

    parsers["MESSAGE_UPDATE"] = parse_whole_messages


class _ShardedClient(_Client, discord.AutoShardedClient):
    """`_Client` over discord.py's `AutoShardedClient`: `discord.shard_count` set without
    `discord.shard_id` runs every shard in this process."""


class DiscordAdapter:
    """Receives Discord messages over the gateway and posts the engine's replies."""

    name = "discord"

    def __init__(
        self,
        config: DiscordConfig,
        engine: ChatService,
        *,
        last_seen: LastAnsweredIds | None = None,
        guild_ready_timeout_s: float = 2.0,
        attachment_timeout_s: float = 30.0,
    ) -> None:
        """Every tuning value comes from `config` (`discord:`); `last_seen` enables backfill (see
        adapters/discord_backfill.py); `guild_ready_timeout_s` is discord.py's wait for the guilds
        after READY (tests shorten it); `attachment_timeout_s` (`chat.attachment_timeout_s`)
        bounds each attachment download."""
        if not has_token(config.token):
            raise ValueError("the Discord adapter needs a token")
        self._token = config.token
        # Sharding over processes: None, or (this process's shard, the shard count).
        self._shard = (
            (config.shard_id, config.shard_count)
            if config.shard_id is not None and config.shard_count is not None
            else None
        )
        # All shards in this process (discord.py's AutoShardedClient): the shard count, or None.
        self._all_shards = config.shard_count if config.shard_id is None else None
        self._api_base = config.api_base
        self._gateway_url = config.gateway_url
        self._admins = frozenset(config.admins)
        self._channels = frozenset(config.channels)
        self._engine = engine
        # Discord allows about 5 edits per 5 s per channel; one per `edit_interval_s` leaves room.
        self._pacing = Pacing(config.edit_interval_s, config.typing_interval_s, config.first_post_delay_s)
        self._ready_timeout_s = config.ready_timeout_s
        self._guild_ready_timeout_s = guild_ready_timeout_s
        self._drain_s = config.drain_s
        self._slash_commands = config.slash_commands
        self._attachment_timeout_s = attachment_timeout_s
        self._files: AttachmentFetcher | None = None
        # The engine's edit and delete tasks, kept until done (their failures are logged).
        self._changes: set[asyncio.Task[Any]] = set()
        self._client: _Client | None = None
        self._runner: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._workers: ChannelWorkers[int, _Job] = ChannelWorkers(self._post, name=PLATFORM)
        # Message ids handled in this run: a backfilled message the gateway delivered too is
        # answered once.
        self._seen = SeenIds()
        self._backfill = (
            Backfill(
                last_seen,
                lambda message: self._on_message(message, redelivered=True),
                max_age_s=config.backfill_max_age_s,
                shard=self._shard,
            )
            if last_seen is not None
            else None
        )

    @property
    def bot_user_id(self) -> int:
        """The bot's own user id (after `start`)."""
        if self._client is None or self._client.user is None:
            raise RuntimeError("the Discord adapter is not started")
        return self._client.user.id

    async def start(self) -> None:
        """Log in, sync the slash commands, connect the gateway; return once READY.

        Raises `ChinwagError` when the token is refused, the API cannot be reached or READY does
        not come within `ready_timeout_s`; everything started so far is stopped again then.
        Calling it while started does nothing.
        """
        if self._client is not None:
            return
        for name in ("httpx", "httpcore"):  # they log request URLs: attachment URLs are signed
            logging.getLogger(name).setLevel(logging.WARNING)
        # Class attributes of the library: the only way to aim discord.py at a proxy or a fake.
        discord.http.Route.BASE = self._api_base or LIBRARY_API_BASE
        DiscordWebSocket.DEFAULT_GATEWAY = (
            yarl.URL(self._gateway_url) if self._gateway_url else LIBRARY_GATEWAY
        )
        intents = discord.Intents.default()
        intents.message_content = True
        self._ready = asyncio.Event()
        self._files = AttachmentFetcher(self._attachment_timeout_s)
        shard_options: dict[str, int] = {}
        if self._shard is not None:
            # One shard per process: the gateway sends this process the events of the guilds
            # with (guild_id >> 22) % shard_count == shard_id, and direct messages to shard 0.
            shard_options = {"shard_id": self._shard[0], "shard_count": self._shard[1]}
        client_class = _ShardedClient if self._all_shards is not None else _Client
        if self._all_shards is not None:
            # Every shard in this process, one gateway connection each.
            shard_options = {"shard_count": self._all_shards}
        self._client = client_class(
            self,
            intents=intents,
            allowed_mentions=discord.AllowedMentions.none(),
            guild_ready_timeout=self._guild_ready_timeout_s,
            **shard_options,
        )
        try:
            async with asyncio.timeout(self._ready_timeout_s):
                await self._client.login(self._token.get_secret_value())
                self._runner = asyncio.create_task(self._run(self._client), name="chinwag:discord:gateway")
                ready = asyncio.create_task(self._ready.wait())
                await asyncio.wait({ready, self._runner}, return_when=asyncio.FIRST_COMPLETED)
                if not ready.done():
                    ready.cancel()
                    raise ChinwagError("discord: the gateway connection ended before READY")
        except discord.LoginFailure:
            await self.stop()
            raise ChinwagError("discord: the bot token was refused") from None
        except TimeoutError:
            await self.stop()
            raise ChinwagError(f"discord: not ready within {self._ready_timeout_s:g} s") from None
        except (discord.HTTPException, aiohttp.ClientError, OSError) as error:
            await self.stop()
            raise ChinwagError(f"discord: cannot reach the API ({type(error).__name__})") from None
        except BaseException:
            await self.stop()
            raise
        logger.info("discord: receiving as user %d", self.bot_user_id)
        self._start_backfill()

    async def stop(self) -> None:
        """Stop receiving, let queued replies finish for `drain_s` (then cancel them), close the
        client. Idempotent."""
        client, self._client = self._client, None
        if self._backfill is not None:
            await self._backfill.stop()
        await self._workers.drain(self._drain_s)
        if client is not None:
            await client.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            # A gateway loop that ended with an error was logged already.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner
        # Last: the replies drained above may still have been reading files.
        files, self._files = self._files, None
        if files is not None:
            await files.aclose()

    async def _run(self, client: _Client) -> None:
        """The gateway loop. discord.py reconnects and RESUMEs by itself; an event it cannot
        parse ends its loop, so that is logged and the loop entered again (with backoff) until the
        client is closed. Only the error's type is logged: a library error's text could name a URL."""
        failures = 0
        while not client.is_closed():
            try:
                await client.connect(reconnect=True)
            except asyncio.CancelledError:
                raise
            except discord.PrivilegedIntentsRequired:
                logger.error("discord: the Message Content intent is not enabled for this bot")
                raise
            except Exception as error:
                if client.is_closed():
                    logger.error("discord: the gateway connection ended (%s)", type(error).__name__)
                    raise
                if client.ws is not None:
                    # The library left the old socket open: close it, or events arrive twice.
                    with contextlib.suppress(Exception):
                        await client.ws.close(code=4000)
                failures += 1
                delay = _BACKOFF.delay(failures)
                logger.error(
                    "discord: the gateway loop failed (%s); reconnecting in %.1f s",
                    type(error).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
            else:
                return

    def _on_ready(self) -> None:
        """READY: a new gateway session (never sent after a RESUME, whose events are replayed).
        The first one is `start`'s; every later one follows an outage nothing was replayed for,
        so it fetches what was missed."""
        if self._ready.is_set():
            logger.info("discord: new gateway session; fetching missed messages")
            self._start_backfill()
        self._ready.set()

    def _start_backfill(self) -> None:
        """Fetch what was missed (when there is a `last_seen`), replacing a backfill still running."""
        if self._backfill is not None and self._client is not None:
            self._backfill.start(self._client)

    # --- receiving ---------------------------------------------------------------------------

    def _on_message(self, message: discord.Message, *, redelivered: bool = False) -> None:
        """Queue a person's message for the engine (at once: the engine keeps the order); the
        engine decides about an unaddressed one. A backfill hands over only addressed messages."""
        if self._client is None or self._client.user is None:
            return
        fetch = self._files.download if self._files is not None else None
        event = to_event(message, self._client.user.id, self._admins, self._channels, fetch)
        if event is None or (redelivered and not event.addressed):
            return
        if not self._seen.first_time(message.id):
            return
        if redelivered:
            event = replace(event, redelivered=True)
        try:
            reply = self._engine.handle(event)
        except ChinwagError as error:
            logger.warning("discord: message in %s not handled: %s", event.channel, error)
            return
        self._workers.put(message.channel.id, _Job(message, event, reply))

    def _on_edit(self, update: discord.RawMessageUpdateEvent) -> None:
        """A person edited a message: the engine gives the stored one its new text (an edit is
        not answered; an id the engine never stored changes nothing)."""
        if self._client is None or self._client.user is None:
            return
        event = edit_event(update, self._client.user.id, self._admins, self._channels)
        if event is None:
            return
        try:
            task = self._engine.edit(event)
        except ChinwagError as error:
            logger.warning("discord: edit in %s not handled: %s", event.channel, error)
            return
        self._keep(task, "edit")

    def _on_delete(self, channel_id: int, message_ids: Sequence[int]) -> None:
        """Messages were deleted: they and the bot's replies to them leave the channel's history
        (the engine ignores ids it never stored, e.g. the bot's own or other bots' messages)."""
        if self._client is None or not message_ids:
            return
        try:
            task = self._engine.delete(
                channel_key(channel_id), [str(message_id) for message_id in message_ids]
            )
        except ChinwagError as error:
            logger.warning("discord: delete in %s not handled: %s", channel_id, error)
            return
        self._keep(task, "delete")

    def _keep(self, task: asyncio.Task[Any], what: str) -> None:
        """Hold the engine's task until it is done, and log (its type only) if it failed."""
        self._changes.add(task)

        def done(finished: asyncio.Task[Any]) -> None:
            self._changes.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                logger.warning("discord: %s failed (%s)", what, type(finished.exception()).__name__)

        task.add_done_callback(done)

    async def _post(self, channel_id: int, job: _Job) -> bool:
        """Post one reply into its channel (a `ChannelWorkers` job)."""
        reference = job.message.to_reference(fail_if_not_exists=False)
        await deliver(job.reply, DiscordSink(job.message.channel, reference), self._pacing)
        return True

    async def _setup_commands(self, client: _Client) -> None:
        """Register the slash commands (called once logged in); shard 0's process publishes them."""
        if self._slash_commands:
            publish = self._shard is None or self._shard[0] == 0
            await setup_commands(client.tree, self._run_command, publish=publish)

    async def _run_command(self, interaction: discord.Interaction, text: str) -> None:
        await answer_command(interaction, text, self._engine, self._admins)


class DiscordSink:
    """One reply's way into a Discord channel (a `adapters.delivery.Sink`)."""

    def __init__(self, channel: discord.abc.Messageable, reference: discord.MessageReference | None) -> None:
        self._channel = channel
        self._reference = reference

    def pieces(self, text: str) -> list[str]:
        return discord_pieces(text)

    async def send(self, text: str, *, quote: bool) -> discord.Message:
        return await self._channel.send(
            content=text,
            reference=self._reference if quote else None,  # type: ignore[arg-type]  # None: not a reply
            allowed_mentions=discord.AllowedMentions.none(),
            mention_author=False,
        )

    async def edit(self, message: discord.Message, text: str) -> bool:
        try:
            await message.edit(content=text, allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException as error:
            logger.warning("discord: could not edit a reply (%s %s)", error.status, type(error).__name__)
            return False
        return True

    async def typing(self) -> None:
        # Cosmetic: never fail a reply over a typing indicator.
        with contextlib.suppress(discord.HTTPException, aiohttp.ClientError, OSError):
            await self._channel.typing()


def create(
    config: DiscordConfig,
    engine: ChatService,
    last_answered: LastAnsweredIds,
    *,
    attachment_timeout_s: float = 30.0,
) -> DiscordAdapter | None:
    """The adapter for `config` (`discord:`), or None when no token is configured. `last_answered`
    names, per channel, the last message the store has an answer for (the backfill's fallback);
    `attachment_timeout_s` is `chat.attachment_timeout_s`."""
    if not has_token(config.token):
        return None
    return DiscordAdapter(config, engine, last_seen=last_answered, attachment_timeout_s=attachment_timeout_s)


__all__ = [
    "MESSAGE_LIMIT",
    "PLATFORM",
    "TEXT_COMMANDS",
    "DiscordAdapter",
    "DiscordSink",
    "create",
    "discord_pieces",
    "shard_for",
    "to_event",
]
