"""Discord backfill: after a new gateway session, hand the engine what the bot missed.

A new session (the process started, or an outage outlasted the resume window) replays nothing, so
the backfill reads each known channel's history after its anchor: the newest message the bot's
posted replies quote (Discord's own record of what was delivered) or, in channels without such a
reply, the newest message the store has an answer for. Each message goes to the adapter as
redelivered; `SeenIds` keeps a message that both the gateway and a backfill hand over from being
answered twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import discord

from bot.errors import ChinwagError
from bot.ports import LastAnsweredIds

logger = logging.getLogger(__name__)

# How far back (messages per channel) backfill looks for the bot's newest reply that quotes a message.
_ANCHOR_SCAN = 100
_SEEN_IDS = 10_000

HandOver = Callable[[discord.Message], None]
"""Gives one missed message to the adapter (as redelivered)."""


def shard_for(guild_id: int | None, shard_count: int) -> int:
    """The shard that receives a guild's events (Discord's formula); direct messages go to shard 0."""
    if guild_id is None:
        return 0
    return (guild_id >> 22) % shard_count


class SeenIds:
    """Message ids handled in this run, the oldest forgotten first beyond `capacity`."""

    def __init__(self, capacity: int = _SEEN_IDS) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[int, None] = OrderedDict()

    def first_time(self, message_id: int) -> bool:
        """True the first time `message_id` is offered (and remembers it), False after that."""
        if message_id in self._ids:
            return False
        self._ids[message_id] = None
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
        return True


class Backfill:
    """Runs one backfill at a time over the channels `last_answered` names.

    `shard`: None, or (this process's shard, the shard count) when the shards are spread over
    processes: each process then backfills only its own channels, so no missed message is
    answered twice.
    """

    def __init__(
        self,
        last_answered: LastAnsweredIds,
        hand_over: HandOver,
        *,
        max_age_s: float,
        shard: tuple[int, int] | None,
    ) -> None:
        self._last_answered = last_answered
        self._hand_over = hand_over
        self._max_age = timedelta(seconds=max_age_s)
        self._shard = shard
        self._task: asyncio.Task[None] | None = None

    def start(self, client: discord.Client) -> None:
        """Start a backfill, replacing one still running: the new one starts from fresher ids, and
        the seen ids keep either from answering a message the other (or the gateway) handed over."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = asyncio.create_task(self._run(client), name="chinwag:discord:backfill")

    async def stop(self) -> None:
        """Cancel a running backfill. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, client: discord.Client) -> None:
        """Hand over, oldest first, every message of the known channels after the channel's
        anchor (and newer than `max_age`). The engine answers a stored one once (its stored answer
        again, or a new one if none was stored)."""
        try:
            last_answered = await self._last_answered()
        except ChinwagError as error:
            logger.warning("discord: no backfill (%s)", error)
            return
        oldest = discord.utils.time_snowflake(datetime.now(UTC) - self._max_age)
        for channel_key, message_id in last_answered.items():
            if client.is_closed() or client.user is None:
                return
            try:
                channel = client.get_channel(int(channel_key)) or await client.fetch_channel(int(channel_key))
                if not isinstance(channel, discord.abc.Messageable) or not self._on_this_shard(channel):
                    continue
                anchor = await posted_anchor(channel, client.user.id, oldest)
                start = anchor if anchor is not None else int(message_id)
                after = discord.Object(max(start, oldest))
                async for message in channel.history(limit=None, after=after, oldest_first=True):
                    self._hand_over(message)
            except (discord.HTTPException, ValueError) as error:
                logger.warning(
                    "discord: could not backfill channel %s (%s)", channel_key, type(error).__name__
                )

    def _on_this_shard(self, channel: object) -> bool:
        """Whether this process's shard receives `channel`'s messages (always, unsharded)."""
        if self._shard is None:
            return True
        shard_id, shard_count = self._shard
        guild = getattr(channel, "guild", None)
        return shard_for(guild.id if guild is not None else None, shard_count) == shard_id


async def posted_anchor(channel: discord.abc.Messageable, bot_user_id: int, oldest: int) -> int | None:
    """The id of the message the bot's newest reply in `channel` quotes, looking back at most
    `_ANCHOR_SCAN` messages and not before the snowflake `oldest`; None when there is none.

    Replies are posted in each channel's order and the first message of each quotes the user's,
    so every addressed message up to that one was answered on Discord and every later one was not,
    whatever the store says: the store may hold answers the killed process never posted. Raises
    `discord.HTTPException`."""
    async for message in channel.history(limit=_ANCHOR_SCAN, oldest_first=False):
        if message.id <= oldest:
            break
        reference = message.reference
        if message.author.id == bot_user_id and reference is not None and reference.message_id:
            return reference.message_id
    return None
