"""`ChatService` doubles for adapter tests: a forwarding base, and one that answers unaddressed
messages as the engine does in a channel that does not listen to everything.

The engine answers a group message that is not addressed to the bot only in a channel set to
`/listen all`, with a silent `ReplyStatus.IGNORED` reply that never engages (no typing, nothing
posted, nothing stored). Until the engine does, adapter tests put this double in front of the real
engine: it records every event the adapter hands over and answers the unaddressed ones that way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from bot.events import ChatEvent
from bot.ports import ChatService, Conversation, SamplingOverrides
from bot.reply import CutReason, Reply, ReplyStatus


class ForwardingService:
    """Hands everything to `engine`; a double overrides what it looks at or changes."""

    def __init__(self, engine: ChatService) -> None:
        self.engine = engine

    def handle(self, event: ChatEvent) -> Reply:
        return self.engine.handle(event)

    def edit(self, event: ChatEvent) -> asyncio.Task[bool]:
        return self.engine.edit(event)

    def delete(self, channel_key: str, platform_message_ids: Sequence[str]) -> asyncio.Task[int]:
        return self.engine.delete(channel_key, platform_message_ids)

    def move_channel(self, old_key: str, new_key: str) -> asyncio.Task[None]:
        return self.engine.move_channel(old_key, new_key)

    def complete(self, conversation: Conversation, overrides: SamplingOverrides, user_key: str) -> Reply:
        return self.engine.complete(conversation, overrides, user_key)

    def stop(self, channel_key: str, reason: CutReason = CutReason.STOPPED) -> bool:
        return self.engine.stop(channel_key, reason)


class IgnoresUnaddressed(ForwardingService):
    """Hands addressed events to `engine`; answers each unaddressed one with a silent IGNORED
    reply that is never engaged. With `hold`, those replies stay pending (and unengaged) until the
    event is set, as while the engine looks at the channel's settings."""

    def __init__(self, engine: ChatService, *, hold: asyncio.Event | None = None) -> None:
        super().__init__(engine)
        self.hold = hold
        self.events: list[ChatEvent] = []
        self.ignored: list[Reply] = []
        self._finishing: set[asyncio.Task[None]] = set()

    @property
    def unaddressed(self) -> list[ChatEvent]:
        """The events handed over with `addressed=False`, in order."""
        return [event for event in self.events if not event.addressed]

    def handle(self, event: ChatEvent) -> Reply:
        self.events.append(event)
        if event.addressed:
            return self.engine.handle(event)
        reply = Reply(engaged=False)
        self.ignored.append(reply)
        task = asyncio.get_running_loop().create_task(self._ignore(reply))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        return reply

    async def _ignore(self, reply: Reply) -> None:
        if self.hold is not None:
            await self.hold.wait()
        await reply.finish(ReplyStatus.IGNORED)
