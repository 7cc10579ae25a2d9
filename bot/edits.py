"""Edits and deletes of stored user messages: the history stays true to what people wrote.

An edited message (Telegram `edited_message`, a Discord message edit) replaces its stored text;
the edit itself is not answered. A deleted message (Discord, the web page) leaves the history with
the bot's reply to it. Either way the model's cached contexts of the channel are dropped: their
prefix no longer matches the history (the next reply recomputes it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from bot.commands import parse_command
from bot.events import ChatEvent
from bot.ports import ChannelLocks, Repository
from bot.redact import redact
from bot.sanitize import clip, sanitize_text

logger = logging.getLogger(__name__)


class MessageEdits:
    """Applies edits and deletes to the repository (called in the channel's turn)."""

    def __init__(
        self,
        repository: Repository,
        locks: ChannelLocks,
        drop_contexts: Callable[[str], None],
        max_input_chars: int,
    ) -> None:
        self._repository = repository
        self._locks = locks
        self._drop_contexts = drop_contexts
        self._max_input_chars = max_input_chars

    async def edit(self, event: ChatEvent) -> bool:
        """Give the stored user message `event.message_id` the text `event.text` (cleaned and
        clipped as a new message would be). True when a stored message changed. An edit into a
        command or into blank text is not applied: commands are never stored, and a message
        emptied by its author (a caption removed) keeps its last words rather than vanishing
        half-way (deleting is the way to remove it). Raises `StorageError`."""
        if event.message_id is None:
            return False
        text, _ = clip(sanitize_text(event.text), self._max_input_chars)
        where = redact(event.channel_key)
        if not text.strip() or parse_command(text) is not None:
            logger.info("edit of message %s in %s not applied: blank or a command", event.message_id, where)
            return False
        async with self._locks.hold(event.channel_key):
            edited = await self._repository.edit_message(event.channel_key, event.message_id, text)
        if edited is None:
            logger.info("edit of message %s in %s: not stored here", event.message_id, where)
            return False
        self._drop_contexts(event.channel_key)
        logger.info("message %s in %s edited", event.message_id, where)
        return True

    async def delete(self, channel_key: str, platform_message_ids: Sequence[str]) -> int:
        """Delete these user messages and the bot's replies to them; how many stored messages went.
        Raises `StorageError`."""
        ids = [message_id for message_id in platform_message_ids if message_id]
        deleted = 0
        if ids:
            # Held like a reply's store: no process writes the channel between a question and its
            # answer, so "the next message" is the answer to delete with it. Any number of ids is
            # one call: the repository bounds its statements and dedupes itself.
            async with self._locks.hold(channel_key):
                deleted = await self._repository.delete_messages(channel_key, ids)
        if deleted:
            self._drop_contexts(channel_key)
        logger.info("%d stored messages deleted for %d ids in %s", deleted, len(ids), redact(channel_key))
        return deleted
