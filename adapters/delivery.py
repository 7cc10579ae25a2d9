"""Streaming a `Reply` into a chat platform: the one delivery path of the chat adapters.

A platform supplies a `Sink` for each reply (post, edit, typing, its limits and error mapping);
`deliver` does the rest, the same for every platform: typing shown until the reply is done, the
first text posted and then edited at most once per `edit_interval_s` (the platform's edit budget),
the final text split into the platform's messages, the first of them quoting the user's message.

A reply that waits in the model's queue for more than `queue_notice_after_s` (no text yet) first
gets a placeholder, "⏳ #3 in line", edited as its place changes; its first text then edits that
placeholder into the reply (or the reply's notice, when it ends without text).
"""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol, TypeVar

from bot.reply import Reply

M = TypeVar("M")

QUEUE_NOTICE_AFTER_S = 2.0
"""How long a reply waits in the model's queue before its place in line is shown (all platforms)."""


def queue_notice(position: int) -> str:
    """What a reply shows while it waits in the model's queue at `position` (1: next)."""
    return f"⏳ #{position} in line"


class Sink(Protocol[M]):
    """Where one reply goes on a platform; `M` is the platform's posted-message object."""

    def pieces(self, text: str) -> list[str]:
        """`text` as the platform's messages: each within its limit, blank ones dropped."""
        ...

    async def send(self, text: str, *, quote: bool) -> M:
        """Post a message; with `quote`, as a reply to the user's message (where there is one)."""
        ...

    async def edit(self, message: M, text: str) -> bool:
        """Set `message`'s text; False when the platform refuses (e.g. the message was deleted)."""
        ...

    async def typing(self) -> None:
        """Show "typing…" once. Never raises a platform error: the indicator is cosmetic."""
        ...


@dataclass(frozen=True, slots=True)
class Pacing:
    """A platform's budget: at most one edit per `edit_interval_s`, typing renewed every
    `typing_interval_s`, and `first_post_delay_s` waited before the first post (so a quick reply
    is posted once, complete, instead of as a message and an edit). A reply waiting in the
    model's queue for `queue_notice_after_s` shows its place in line."""

    edit_interval_s: float
    typing_interval_s: float
    first_post_delay_s: float = 0.0
    queue_notice_after_s: float = QUEUE_NOTICE_AFTER_S


async def deliver(reply: Reply, sink: Sink[M], pacing: Pacing) -> None:
    """Render `reply` through `sink`: typing, its place in the model's queue while it waits there
    long, a streamed first message, then the split final text.

    A silent reply posts nothing. When the streamed message cannot be edited any more (deleted?),
    the whole reply is posted anew. Platform errors of `send` propagate.
    """
    typing = asyncio.create_task(keep_typing(reply, sink, pacing.typing_interval_s))
    try:
        placeholder = await _wait_in_line(reply, sink, pacing)
        streamed = await _stream(reply, sink, pacing, placeholder)  # apart: mypy would solve M as M | None
        first, shown, shown_at = streamed
        if reply.silent:
            return
        pieces = sink.pieces(await reply.text())
        quote = True
        if first is not None and pieces:
            if pieces[0] != shown:
                # The final edit keeps the pace too.
                wait = shown_at + pacing.edit_interval_s - asyncio.get_running_loop().time()
                if wait > 0:
                    await asyncio.sleep(wait)
            if pieces[0] == shown or await sink.edit(first, pieces[0]):
                pieces = pieces[1:]
                quote = False
            # else: the streamed message is gone: the reply is posted anew, quoting again.
        for piece in pieces:
            await sink.send(piece, quote=quote)
            quote = False  # only the first message of a reply quotes the user's
    finally:
        typing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await typing


_Streamed = tuple[M | None, str, float]
"""The streamed message (None when none was posted), its text, and the loop time it last changed."""


async def _wait_in_line(reply: Reply, sink: Sink[M], pacing: Pacing) -> _Streamed[M]:
    """Until the reply's first text or its end: once it has waited `queue_notice_after_s` in the
    model's queue, a placeholder with its place in line, posted as the reply's first message
    would be (quoting the user's), then edited as the place changes, at most every
    `edit_interval_s`. Returns it as the streamed message for `_stream` (None: none posted, or it
    cannot be edited any more), its text and the loop time it was last changed."""
    placeholder: M | None = None
    shown = ""
    shown_at = 0.0
    loop = asyncio.get_running_loop()
    async with aclosing(reply.places_in_line(pacing.queue_notice_after_s)) as places:
        async for place in places:
            if place is None:
                continue  # it left the queue: the placeholder stays until the first text
            notice = sink.pieces(queue_notice(place))[0]
            if placeholder is None:
                placeholder = await sink.send(notice, quote=True)
            elif not await sink.edit(placeholder, notice):
                return None, "", 0.0  # gone (deleted?): the reply is posted as if none was shown
            shown, shown_at = notice, loop.time()
            # The edit pace: the next place is read after it (or never, once text came).
            await reply.wait_for_text(pacing.edit_interval_s)
    return placeholder, shown, shown_at


async def _stream(reply: Reply, sink: Sink[M], pacing: Pacing, start: _Streamed[M]) -> _Streamed[M]:
    """Show the reply while it is produced: the first text as a message (or as an edit of the
    placeholder `start` holds), then edits at most every `edit_interval_s`. Returns that message
    (None if none was sent), its text and the loop time it was last changed."""
    changed = asyncio.Event()

    async def follow() -> None:
        async for _ in reply:
            changed.set()
        changed.set()

    reader = asyncio.create_task(follow())
    first, shown, shown_at = start
    loop = asyncio.get_running_loop()
    try:
        while True:
            await changed.wait()
            changed.clear()
            if reply.done:
                break
            preview = _preview(reply, sink)
            if not preview or preview == shown:
                if shown:
                    # Nothing new for the first message (it is full): look again at the edit pace,
                    # not at every chunk, since cutting a long reply into pieces (Telegram renders
                    # its Markdown) costs more than the chunk it would show.
                    await asyncio.wait({reader}, timeout=pacing.edit_interval_s)
                continue
            if first is None:
                if pacing.first_post_delay_s > 0:
                    await asyncio.wait({reader}, timeout=pacing.first_post_delay_s)
                    if reply.done:
                        break
                    preview = _preview(reply, sink)
                first = await sink.send(preview, quote=True)
            else:
                wait = shown_at + pacing.edit_interval_s - loop.time()
                if wait > 0:  # the placeholder was edited just now
                    await asyncio.wait({reader}, timeout=wait)
                    if reply.done:
                        break
                    preview = _preview(reply, sink)
                if not await sink.edit(first, preview):
                    break  # stop streaming into a message that cannot be edited; the end posts anew
            shown = preview
            shown_at = loop.time()
            await asyncio.wait({reader}, timeout=pacing.edit_interval_s)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return first, shown, shown_at


def _preview(reply: Reply, sink: Sink[M]) -> str:
    """The first message's worth of what the reply produced so far ("" before any text)."""
    so_far = sink.pieces(reply.text_so_far())
    return so_far[0] if so_far else ""


async def keep_typing(reply: Reply, sink: Sink[M], interval_s: float) -> None:
    """Show "typing…" every `interval_s` until the reply is done, from when the engine decided to
    respond (a group message it ignores shows none)."""
    await reply.wait_engaged()
    while not reply.done:
        await sink.typing()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reply.text(), timeout=interval_s)
