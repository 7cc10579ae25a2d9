"""The Discord adapter: a discord.py `Client` that feeds addressed messages to the engine.

Receiving: `on_message` turns each message into a `ChatEvent` (`to_event`, pure) and hands it to
the engine at once, so the engine's per-channel order is the gateway's order; a worker per channel
then posts the replies one after another. After a dropped gateway connection discord.py RESUMEs and
the server replays what was missed. When the gateway starts a new session instead (the process
started, or an outage outlasted the resume window, where nothing is replayed), `backfill` (when the
composition root gives it the last answered message id per channel) fetches what the bot missed
and hands it to the engine as redelivered. It starts after the newest message the bot's posted
replies quote (Discord's own record of what was delivered) or, in channels without such a reply,
after the newest message the store has an answer for. So a
message stored but not answered, or answered but not posted, when the process was killed gets one
reply after the restart: the engine answers it now, or re-sends its stored answer.

Sending: a typing indicator while the reply is generated, the first text posted then edited at most
once per `edit_interval_s` (1.5 s), the final text split into messages of at most 2000 characters
with ``` code fences closed at the end of a part and reopened at the start of the next. The first
message replies to the user's (in DMs too: that quote is what backfill reads to know what was
delivered, and it shows which question an answer belongs to); no reply mentions anybody
(`AllowedMentions.none()`: a model must not ping @everyone). 429s are waited out by discord.py itself.

The token is only handed to `Client.login`; no log line names it, a URL or a library object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket

from adapters.splitting import split_reply
from bot.commands import parse_command
from bot.config import DiscordConfig
from bot.engine import ChatEngine
from bot.errors import ChinwagError
from bot.events import ChatEvent
from bot.reply import Reply

if TYPE_CHECKING:
    from bot.app import Services
    from bot.config import Settings

logger = logging.getLogger(__name__)

PLATFORM = "discord"
MESSAGE_LIMIT = 2000
# Text commands the bot answers in a guild channel without being mentioned; other bots' commands
# (`/play`…) are not ours.
TEXT_COMMANDS = frozenset({"help", "reset", "system", "temperature"})
_ANSWERED_TYPES = frozenset({discord.MessageType.default, discord.MessageType.reply})
# The library's own endpoints, restored when no override is configured (they are class attributes).
LIBRARY_API_BASE: str = discord.http.Route.BASE
LIBRARY_GATEWAY: yarl.URL = DiscordWebSocket.DEFAULT_GATEWAY
_FENCE = re.compile(r"[ \t]*```[ \t]*([^\s`]*)")
_CLOSE_FENCE = "\n```"
_SEEN_IDS = 10_000
# How far back (messages per channel) backfill looks for the bot's newest reply that quotes a message.
_ANCHOR_SCAN = 100
_MAX_BACKOFF_S = 30.0

LastSeen = Callable[[], Awaitable[Mapping[str, str]]]


# --- conversion (pure) -------------------------------------------------------------------------


def to_event(
    message: discord.Message,
    bot_user_id: int,
    admins: frozenset[int],
    channels: frozenset[int] = frozenset(),
) -> ChatEvent | None:
    """The `ChatEvent` for a new message addressed to the bot, else None.

    DMs: every message. Guild channels: messages that mention the bot, reply to one of its
    messages, or are one of our text commands (also after a leading mention: `<@bot> /reset`);
    every message in `channels`. The bot's mention is removed from the text. Bots (the bot itself
    included) and non-default message types (joins, pins, …) give None. Admins: the user of a DM,
    ids in `admins`, members with the Administrator or Manage Server permission.
    """
    author = message.author
    if author.bot or author.id == bot_user_id or message.type not in _ANSWERED_TYPES:
        return None
    direct = message.guild is None
    mentioned = (
        any(user.id == bot_user_id for user in message.mentions) or bot_user_id in message.raw_mentions
    )
    text = _strip_mention(message.content, bot_user_id) if mentioned else message.content.strip()
    if not direct and not (
        mentioned
        or _replies_to(message, bot_user_id)
        or _is_our_command(text)
        or message.channel.id in channels
    ):
        return None
    permissions = author.guild_permissions if isinstance(author, discord.Member) else None
    is_admin = (
        direct
        or author.id in admins
        or (permissions is not None and (permissions.administrator or permissions.manage_guild))
    )
    return ChatEvent(
        platform=PLATFORM,
        channel=str(message.channel.id),
        author_id=str(author.id),
        author_name=author.display_name,
        text=text,
        is_admin=is_admin,
        is_direct=direct,
        message_id=str(message.id),
    )


def _replies_to(message: discord.Message, bot_user_id: int) -> bool:
    reference = message.reference
    resolved = reference.resolved if reference is not None else None
    return isinstance(resolved, discord.Message) and resolved.author.id == bot_user_id


def _is_our_command(text: str) -> bool:
    command = parse_command(text)
    return command is not None and command.name in TEXT_COMMANDS


def _strip_mention(text: str, bot_user_id: int) -> str:
    """Remove every `<@id>` / `<@!id>` of the bot (and the spaces after it)."""
    return re.sub(rf"<@!?{bot_user_id}>[ \t]*", "", text).strip()


def discord_pieces(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """`text` as Discord messages of at most `limit` characters, blank ones dropped.

    Cut like `split_reply`; a part that ends inside a ``` code block gets a closing fence line
    ("\\n```") and the next part starts by reopening it with the same language ("```py\\n"). Apart
    from those added lines every character is kept, in order.
    """
    pieces: list[str] = []
    rest = text
    language: str | None = None  # the open fence's language tag; None outside a code block
    while rest:
        opening = "" if language is None else f"```{language}\n"
        if len(opening) + len(rest) <= limit:
            pieces.append(opening + rest)
            break
        budget = limit - len(opening) - len(_CLOSE_FENCE)
        chunk = split_reply(rest[: budget + 1], budget)[0]
        rest = rest[len(chunk) :]
        language = _fence_after(chunk, language)
        pieces.append(opening + chunk + ("" if language is None else _CLOSE_FENCE))
    return [piece for piece in pieces if piece.strip()]


def _fence_after(chunk: str, language: str | None) -> str | None:
    """The open fence's language after `chunk`, given the one open before it (None: none open)."""
    for line in chunk.split("\n"):
        match = _FENCE.match(line)
        if match is None or line.count("```") >= 2:
            continue  # no fence, or one that opens and closes on the same line
        language = match.group(1) if language is None else None
    return language


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

    async def setup_hook(self) -> None:
        await self._adapter._setup_commands(self)

    async def on_ready(self) -> None:
        self._adapter._on_ready()

    async def on_message(self, message: discord.Message) -> None:
        # discord.py runs each handler as a task, started in gateway order; nothing is awaited
        # before the engine gets the event, so the engine sees each channel's messages in order.
        self._adapter._on_message(message)


class _ShardedClient(_Client, discord.AutoShardedClient):
    """`_Client` over discord.py's `AutoShardedClient`: `discord.shard_count` set without
    `discord.shard_id` runs every shard in this process."""


class DiscordAdapter:
    """Receives Discord messages over the gateway and posts the engine's replies."""

    name = "discord"

    def __init__(
        self,
        config: DiscordConfig,
        engine: ChatEngine,
        *,
        channels: Iterable[int] = (),
        edit_interval_s: float = 1.5,
        first_post_delay_s: float = 0.5,
        typing_interval_s: float = 8.0,
        ready_timeout_s: float = 30.0,
        guild_ready_timeout_s: float = 2.0,
        drain_s: float = 10.0,
        slash_commands: bool = True,
        last_seen: LastSeen | None = None,
        backfill_max_age_s: float = 3600.0,
    ) -> None:
        if config.token is None or not config.token.get_secret_value().strip():
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
        self._channels = frozenset(channels)
        self._engine = engine
        self._edit_interval_s = edit_interval_s
        self._first_post_delay_s = first_post_delay_s
        self._typing_interval_s = typing_interval_s
        self._ready_timeout_s = ready_timeout_s
        self._guild_ready_timeout_s = guild_ready_timeout_s
        self._drain_s = drain_s
        self._slash_commands = slash_commands
        self._last_seen = last_seen
        self._backfill_max_age = timedelta(seconds=backfill_max_age_s)
        self._client: _Client | None = None
        self._runner: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._queues: dict[int, deque[_Job]] = {}
        self._workers: dict[int, asyncio.Task[None]] = {}
        # Message ids handled in this run: a backfilled message the gateway delivered too is
        # answered once (bounded: oldest forgotten first).
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._backfill: asyncio.Task[None] | None = None

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
        # Class attributes of the library: the only way to aim discord.py at a proxy or a fake.
        discord.http.Route.BASE = self._api_base or LIBRARY_API_BASE
        DiscordWebSocket.DEFAULT_GATEWAY = (
            yarl.URL(self._gateway_url) if self._gateway_url else LIBRARY_GATEWAY
        )
        intents = discord.Intents.default()
        intents.message_content = True
        self._ready = asyncio.Event()
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
        backfill, self._backfill = self._backfill, None
        if backfill is not None:
            backfill.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await backfill
        workers = set(self._workers.values())
        if workers:
            _, late = await asyncio.wait(workers, timeout=self._drain_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        self._workers.clear()
        self._queues.clear()
        if client is not None:
            await client.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            # A gateway loop that ended with an error was logged already.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner

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
                delay = min(_MAX_BACKOFF_S, 0.5 * 2**failures)
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
        """Run `_run_backfill` (when there is a `last_seen`), replacing one still running: the
        new one starts from fresher ids, and the seen-id set keeps either from answering a message
        the other (or the gateway) handed over already."""
        if self._last_seen is None or self._client is None:
            return
        if self._backfill is not None and not self._backfill.done():
            self._backfill.cancel()
        self._backfill = asyncio.create_task(self._run_backfill(), name="chinwag:discord:backfill")

    # --- receiving ---------------------------------------------------------------------------

    def _on_message(self, message: discord.Message, *, redelivered: bool = False) -> None:
        """Queue an addressed message for the engine (at once: the engine keeps the order)."""
        if self._client is None or self._client.user is None or self._already_seen(message.id):
            return
        event = to_event(message, self._client.user.id, self._admins, self._channels)
        if event is None:
            return
        if redelivered:
            event = replace(event, redelivered=True)
        try:
            reply = self._engine.handle(event)
        except ChinwagError as error:
            logger.warning("discord: message in %s not handled: %s", event.channel, error)
            return
        channel_id = message.channel.id
        self._queues.setdefault(channel_id, deque()).append(_Job(message, event, reply))
        if channel_id not in self._workers:
            self._workers[channel_id] = asyncio.create_task(
                self._work(channel_id), name=f"chinwag:discord:{channel_id}"
            )

    def _already_seen(self, message_id: int) -> bool:
        if message_id in self._seen:
            return True
        self._seen[message_id] = None
        while len(self._seen) > _SEEN_IDS:
            self._seen.popitem(last=False)
        return False

    async def _work(self, channel_id: int) -> None:
        """Post one channel's replies strictly in order; exits when the channel's queue is empty."""
        queue = self._queues[channel_id]
        try:
            while queue:
                job = queue[0]
                try:
                    await self._deliver(job)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # One reply that cannot be posted must not block its channel.
                    logger.exception("discord: could not post a reply in %d", channel_id)
                queue.popleft()
        finally:
            if self._workers.get(channel_id) is asyncio.current_task():
                del self._workers[channel_id]
            if not queue and self._queues.get(channel_id) is queue:
                del self._queues[channel_id]

    async def _run_backfill(self) -> None:
        """Hand the engine, as redelivered and oldest first, every message of the known channels
        after the channel's anchor (and newer than `backfill_max_age`). Messages handled in this
        run already are skipped; the engine answers a stored one once (its stored answer again, or
        a new one if none was stored)."""
        assert self._last_seen is not None
        try:
            last_seen = await self._last_seen()
        except ChinwagError as error:
            logger.warning("discord: no backfill (%s)", error)
            return
        oldest = discord.utils.time_snowflake(datetime.now(UTC) - self._backfill_max_age)
        for channel_key, message_id in last_seen.items():
            client = self._client
            if client is None or client.user is None:
                return
            try:
                channel = client.get_channel(int(channel_key)) or await client.fetch_channel(int(channel_key))
                if not isinstance(channel, discord.abc.Messageable) or not self._on_this_shard(channel):
                    continue
                anchor = await self._posted_anchor(channel, client.user.id, oldest)
                start = anchor if anchor is not None else int(message_id)
                after = discord.Object(max(start, oldest))
                async for message in channel.history(limit=None, after=after, oldest_first=True):
                    self._on_message(message, redelivered=True)
            except (discord.HTTPException, ValueError) as error:
                logger.warning(
                    "discord: could not backfill channel %s (%s)", channel_key, type(error).__name__
                )

    def _on_this_shard(self, channel: object) -> bool:
        """Whether this process's shard receives `channel`'s messages (always, unsharded): each
        process backfills only its own channels, so no missed message is answered twice."""
        if self._shard is None:
            return True
        shard_id, shard_count = self._shard
        guild = getattr(channel, "guild", None)
        return shard_for(guild.id if guild is not None else None, shard_count) == shard_id

    @staticmethod
    async def _posted_anchor(channel: discord.abc.Messageable, bot_user_id: int, oldest: int) -> int | None:
        """The id of the message the bot's newest reply in `channel` quotes, looking back at most
        `_ANCHOR_SCAN` messages and not before the snowflake `oldest`; None when there is none.

        Replies are posted in each channel's order and the first message of each quotes the user's,
        so every addressed message up to that one was answered on Discord and every
        later one was not, whatever the store says: the store may hold answers the killed process
        never posted. Raises `discord.HTTPException`."""
        async for message in channel.history(limit=_ANCHOR_SCAN, oldest_first=False):
            if message.id <= oldest:
                break
            reference = message.reference
            if message.author.id == bot_user_id and reference is not None and reference.message_id:
                return reference.message_id
        return None

    # --- answering ---------------------------------------------------------------------------

    async def _deliver(self, job: _Job) -> None:
        """Render a reply into the user's channel: typing, a streamed first message, then the
        split final text."""
        reply = job.reply
        typing = asyncio.create_task(self._keep_typing(job.message.channel, reply))
        reference: discord.MessageReference | None = job.message.to_reference(fail_if_not_exists=False)
        try:
            first, shown, shown_at = await self._stream(job.message.channel, reference, reply)
            if reply.silent:
                return
            pieces = discord_pieces(await reply.text())
            if first is not None and pieces:
                if pieces[0] != shown:
                    # The final edit keeps the pace too.
                    wait = shown_at + self._edit_interval_s - asyncio.get_running_loop().time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                if pieces[0] == shown or await self._try_edit(first, pieces[0]):
                    pieces = pieces[1:]
                    reference = None
                # else: the streamed message cannot be edited (deleted?): post the whole reply anew.
            for piece in pieces:
                await self._send(job.message.channel, piece, reference)
                reference = None  # only the first message quotes the user's
        finally:
            typing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await typing

    async def _stream(
        self, channel: discord.abc.Messageable, reference: discord.MessageReference | None, reply: Reply
    ) -> tuple[discord.Message | None, str, float]:
        """Show the reply while it is produced: the first text as a message, then edits at most
        every `edit_interval_s`. Returns that message (None if none was sent), its text and the
        loop time it was last changed."""
        changed = asyncio.Event()

        async def follow() -> None:
            async for _ in reply:
                changed.set()
            changed.set()

        reader = asyncio.create_task(follow())
        first: discord.Message | None = None
        shown = ""
        shown_at = 0.0
        loop = asyncio.get_running_loop()
        try:
            while True:
                await changed.wait()
                changed.clear()
                if reply.done:
                    break
                so_far = discord_pieces(reply.text_so_far())
                preview = so_far[0] if so_far else ""
                if not preview or preview == shown:
                    continue
                if first is None:
                    # Wait a moment first: a quick reply (a command, a short answer) is then
                    # posted once, complete, instead of as a message and an edit 1.5 s later.
                    await asyncio.wait({reader}, timeout=self._first_post_delay_s)
                    if reply.done:
                        break
                    preview = discord_pieces(reply.text_so_far())[0]
                    first = await self._send(channel, preview, reference)
                elif not await self._try_edit(first, preview):
                    break  # stop streaming into a message that cannot be edited; the end posts anew
                shown = preview
                shown_at = loop.time()
                # Discord allows about 5 edits per 5 s per channel; one per interval leaves room.
                await asyncio.wait({reader}, timeout=self._edit_interval_s)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        return first, shown, shown_at

    async def _send(
        self, channel: discord.abc.Messageable, text: str, reference: discord.MessageReference | None
    ) -> discord.Message:
        return await channel.send(
            content=text,
            reference=reference,  # type: ignore[arg-type]  # None means "not a reply"
            allowed_mentions=discord.AllowedMentions.none(),
            mention_author=False,
        )

    async def _try_edit(self, message: discord.Message, text: str) -> bool:
        """Set `message`'s text; False when Discord refuses (e.g. the message was deleted)."""
        try:
            await message.edit(content=text, allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException as error:
            logger.warning("discord: could not edit a reply (%s %s)", error.status, type(error).__name__)
            return False
        return True

    async def _keep_typing(self, channel: discord.abc.Messageable, reply: Reply) -> None:
        """Show "typing…" every `typing_interval_s` (Discord shows it ~10 s) until the reply is done."""
        while not reply.done:
            # Cosmetic: never fail a reply over a typing indicator.
            with contextlib.suppress(discord.HTTPException, aiohttp.ClientError, OSError):
                await channel.typing()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reply.text(), timeout=self._typing_interval_s)

    # --- slash commands ----------------------------------------------------------------------

    async def _setup_commands(self, client: _Client) -> None:
        """Register /help, /reset, /system, /temperature and sync them (called once logged in).
        A failed sync is logged: the text commands still work."""
        if not self._slash_commands:
            return
        tree = client.tree

        @tree.command(name="help", description="List the commands")
        async def help_command(interaction: discord.Interaction) -> None:
            await self._run_command(interaction, "/help")

        @tree.command(name="reset", description="Forget this conversation (admins)")
        async def reset_command(interaction: discord.Interaction) -> None:
            await self._run_command(interaction, "/reset")

        @tree.command(name="system", description="Show or set the system prompt")
        @app_commands.describe(text="The new system prompt (admins); empty shows the current one")
        async def system_command(interaction: discord.Interaction, text: str = "") -> None:
            await self._run_command(interaction, f"/system {text}".strip())

        @tree.command(name="temperature", description="Show or set the sampling temperature")
        @app_commands.describe(value="The new temperature, 0 to 2 (admins); empty shows the current one")
        async def temperature_command(interaction: discord.Interaction, value: str = "") -> None:
            await self._run_command(interaction, f"/temperature {value}".strip())

        if self._shard is not None and self._shard[0] != 0:
            return  # the commands are global: shard 0's process publishes them, once
        try:
            await tree.sync()
        except (discord.HTTPException, app_commands.CommandSyncFailure) as error:
            logger.warning("discord: could not publish the slash commands (%s)", type(error).__name__)

    async def _run_command(self, interaction: discord.Interaction, text: str) -> None:
        """Hand a slash command to the engine as the text command and answer the interaction."""
        direct = interaction.guild_id is None
        permissions = interaction.permissions
        event = ChatEvent(
            platform=PLATFORM,
            channel=str(interaction.channel_id),
            author_id=str(interaction.user.id),
            author_name=interaction.user.display_name,
            text=text,
            is_admin=direct
            or interaction.user.id in self._admins
            or permissions.administrator
            or permissions.manage_guild,
            is_direct=direct,
            message_id=str(interaction.id),
        )
        # Acknowledge at once (Discord wants an answer within 3 s; the channel may be busy with a
        # long reply) and post the engine's answer as the follow-up.
        await interaction.response.defer(thinking=True)
        try:
            reply = self._engine.handle(event)
            answer = await reply.text()
            if reply.silent:
                answer = ""
        except ChinwagError:
            answer = "Sorry, I'm shutting down. Please try again in a moment."
        await interaction.followup.send(
            discord_pieces(answer)[0] if answer.strip() else "(done)",
            allowed_mentions=discord.AllowedMentions.none(),
        )


# Optional `discord:` config keys passed to the adapter when the config model has them (see the
# adapter's keyword arguments for their meaning and defaults).
def shard_for(guild_id: int | None, shard_count: int) -> int:
    """The shard that receives a guild's events (Discord's formula); direct messages go to shard 0."""
    if guild_id is None:
        return 0
    return (guild_id >> 22) % shard_count


def create(settings: Settings, services: Services) -> DiscordAdapter | None:
    """The adapter for `settings.discord`, or None when no token is configured."""
    config = settings.discord
    if config.token is None or not config.token.get_secret_value().strip():
        return None
    engine = services.engine
    return DiscordAdapter(
        config,
        engine,
        channels=config.channels,
        edit_interval_s=config.edit_interval_s,
        first_post_delay_s=config.first_post_delay_s,
        typing_interval_s=config.typing_interval_s,
        ready_timeout_s=config.ready_timeout_s,
        drain_s=config.drain_s,
        slash_commands=config.slash_commands,
        last_seen=lambda: engine.last_platform_message_ids(PLATFORM),
        backfill_max_age_s=config.backfill_max_age_s,
    )
