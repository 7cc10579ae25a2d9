"""The core's ports: the types and interfaces the engine and the adapters need from the outside.

The core owns them and storage implements them (`storage/` imports nothing else from `bot/` but
this module and `bot.errors`). The composition root (`bot/app.py`) hands each adapter only the
narrow capability it needs from here: a `HistoryReader` for the web page, the Telegram
`UpdateInbox` and `ClaimRole`, `LastAnsweredIds` for Discord's backfill. No adapter ever gets the
database itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any, Final, Literal, Protocol

from bot.events import ChatEvent
from bot.reply import CutReason as _CutReason
from bot.reply import Reply

CutReason = _CutReason  # storage names it from here (it may import no other module of the core)

# --- conversations (what a backend answers) ----------------------------------------------------

Role = Literal["user", "assistant"]


def spoken(content: str, speaker: str | None) -> str:
    """A user turn as the model reads it: `NAME: TEXT` in a group (`speaker` set), else TEXT."""
    return content if speaker is None else f"{speaker}: {content}"


def with_attached(content: str, attached: str | None) -> str:
    """A user message as the model reads it: its text, then what its attachments became (file
    names and texts, `[image: NAME]` placeholders; see `bot.attachments`), a blank line between."""
    if not attached:
        return content
    return f"{content}\n\n{attached}" if content else attached


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image of the new message, decoded, resized and re-encoded (see `bot.attachments`).
    Only the newest message carries images; earlier turns keep an `[image: NAME]` placeholder."""

    name: str
    mime_type: str  # "image/jpeg" or "image/png"
    data: bytes
    width: int
    height: int

    @property
    def data_url(self) -> str:
        """`data:<mime>;base64,...`, as OpenAI content parts carry an image."""
        return f"data:{self.mime_type};base64,{base64.b64encode(self.data).decode('ascii')}"


@dataclass(frozen=True, slots=True)
class Turn:
    """One earlier message of a conversation. `speaker` is the cleaned display name of a user
    turn's author in a channel that is not direct (see `bot.speakers`); None otherwise."""

    role: Role
    content: str
    speaker: str | None = None

    @property
    def text(self) -> str:
        """What the model reads for this turn: `NAME: TEXT` for a named speaker, else TEXT."""
        return spoken(self.content, self.speaker) if self.role == "user" else self.content


@dataclass(frozen=True, slots=True)
class Conversation:
    """What the engine asks a backend to answer: the system prompt, earlier turns (oldest first)
    and the new user message (`speaker` its author's cleaned name in a group, else None)."""

    system_prompt: str
    history: Sequence[Turn]
    message: str
    context_key: str | None = None
    """The conversation's key; backends that keep per-conversation state (the local model's KV
    cache) key it by this: the channel key, or `member_context_key(...)` for one member's
    conversation in a channel in member mode. None: a stateless request."""
    speaker: str | None = None
    images: tuple[ImagePart, ...] = ()
    """The new message's images, for a backend that sees them (`bot.backends.base.sees_images`);
    `message` already holds their `[image: NAME]` placeholders."""

    @property
    def message_text(self) -> str:
        """The new message as the model reads it (`NAME: TEXT` in a group). The echo backend
        echoes `message` instead, without the name."""
        return spoken(self.message, self.speaker)


MEMBER_SEPARATOR = "#"  # never in a channel key: platform ids are digits, web ids [A-Za-z0-9_-]


def member_context_key(channel_key: str, member_id: str) -> str:
    """The context key of one member's own conversation in a channel in member mode."""
    return f"{channel_key}{MEMBER_SEPARATOR}{member_id}"


def within_channel(context_key: str, channel_key: str) -> bool:
    """True when `context_key` is the channel's own or one of its members' (`Backend.forget`
    of a channel drops them all)."""
    return context_key == channel_key or context_key.startswith(channel_key + MEMBER_SEPARATOR)


@dataclass(frozen=True, slots=True)
class SamplingSettings:
    """How to generate one reply. `temperature == 0` means greedy decoding; `top_k == 0` and
    `top_p == 1` switch those cuts off. Sampling applies them as `generate` does: repetition
    penalty, temperature, top-k, top-p."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    max_new_tokens: int = 256
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SamplingOverrides:
    """Per-request sampling values (e.g. from an OpenAI-style request); None keeps the configured one."""

    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    stop: tuple[str, ...] = ()

    def apply(self, base: SamplingSettings) -> SamplingSettings:
        """`base` with these overrides; `max_new_tokens` never above the configured maximum, and
        stop sequences added to the configured ones."""
        settings = base
        if self.temperature is not None:
            settings = replace(settings, temperature=self.temperature)
        if self.top_p is not None:
            settings = replace(settings, top_p=self.top_p)
        if self.max_new_tokens is not None:
            settings = replace(settings, max_new_tokens=min(self.max_new_tokens, base.max_new_tokens))
        if self.stop:
            settings = replace(settings, stop=(*base.stop, *self.stop))
        return settings


# --- stored history and settings ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message as stored; `id` grows with every append, so it orders a channel's history.

    `cut` is set on an assistant message whose text was cut short (see `CutReason`): `content` is
    what the model wrote until then, without the notice the user read after it."""

    id: int
    role: Role
    content: str
    author_id: str | None
    author_name: str | None
    platform_message_id: str | None
    created_at: datetime  # timezone-aware, UTC
    cut: CutReason | None = None
    member_id: str | None = None
    """Whose conversation in the channel the message belongs to: a user message's author, the
    asker of an assistant message (member mode reads one member's history by it, `/forget`
    deletes by it). None for messages stored without one."""
    attached: str | None = None
    """What a user message's attachments became (see `with_attached`); its own text stays in
    `content`, so an edit of the text replaces `content` and keeps this."""


ContextMode = Literal["shared", "member"]
"""`shared`: everyone in a channel shares one history; `member`: each author has their own."""
ListenMode = Literal["all", "mention"]
"""`all`: answer every message of a group channel; `mention`: only those addressed to the bot."""


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    """A channel's overrides; None means "use the configured default". `persona` names the preset
    (`personas:` in the config) the system prompt and temperature were last set from."""

    system_prompt: str | None = None
    temperature: float | None = None
    persona: str | None = None
    context: ContextMode | None = None
    listen: ListenMode | None = None


@dataclass(frozen=True, slots=True)
class TokenCharge:
    """What one reply cost its asker, recorded in the same transaction as the reply (so a reply
    is counted exactly once, whichever process wrote it)."""

    user_key: str  # "<platform>:<author id>"
    user_name: str | None
    tokens: int  # at least 1
    day: date  # the UTC day the reply was stored


@dataclass(frozen=True, slots=True)
class UsageEntry:
    """One user's tokens on one UTC day (in one channel, or in all of them)."""

    user_key: str
    user_name: str | None
    tokens: int


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What `/forget` deleted: how many messages, and the channels they were in (whose cached
    model context must be dropped too)."""

    deleted: int
    channel_keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MemberMessage:
    """A stored message with its channel, for a data export."""

    channel_key: str
    message: StoredMessage


class _Unset(enum.Enum):
    """Type of `UNSET`: "leave this setting as it is" (None already means "clear it")."""

    UNSET = enum.auto()

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset.UNSET


class Repository(Protocol):
    """What the engine needs from storage. `channel_key` is `"<platform>:<external id>"`.

    Every method is its own short transaction and raises `StorageError` when the database fails,
    `ValueError` for a malformed `channel_key` or a negative limit.
    """

    async def append_message(
        self,
        channel_key: str,
        role: Role,
        content: str,
        *,
        author_id: str | None = None,
        author_name: str | None = None,
        platform_message_id: str | None = None,
        cut: CutReason | None = None,
        member_id: str | None = None,
        charge: TokenCharge | None = None,
        attached: str | None = None,
    ) -> StoredMessage | None:
        """Store a message (creating the channel on first use). None when `platform_message_id`
        was already stored in this channel: a duplicate delivery, nothing changed. `cut`: an
        assistant message cut short, kept with the reason. `member_id`: see
        `StoredMessage.member_id` (a user message without one takes its `author_id`). `charge`:
        add these tokens to the user's usage in the same transaction (a reply's cost).
        `attached`: see `StoredMessage.attached`."""
        ...

    async def edit_message(
        self, channel_key: str, platform_message_id: str, content: str
    ) -> StoredMessage | None:
        """Replace the text (`content`) of the user message stored with `platform_message_id`,
        keeping its `attached`, id and place; the edited message, or None when no such user
        message is stored in the channel (never stored, deleted, forgotten, purged)."""
        ...

    async def delete_messages(self, channel_key: str, platform_message_ids: Sequence[str]) -> int:
        """Delete the user messages stored with these platform ids and, for each, the assistant
        message answering it (the channel's next message, when that is the assistant's), in one
        transaction. Ids not stored are skipped. Returns how many rows were deleted."""
        ...

    async def recent_messages(
        self,
        channel_key: str,
        *,
        limit: int,
        max_chars: int | None = None,
        max_id: int | None = None,
        member_id: str | None = None,
    ) -> list[StoredMessage]:
        """The newest `limit` messages, oldest first. With `max_chars`, the oldest are dropped until
        the texts the model reads (`with_attached(content, attached)`) total at most `max_chars`
        characters, but the newest one is always kept. With
        `max_id`, only messages whose id is at most `max_id` count (the history as it stood when
        that message was stored). With `member_id`, only that member's conversation (their
        messages and the replies to them), read through an index."""
        ...

    async def answer_to(
        self, channel_key: str, platform_message_id: str
    ) -> tuple[StoredMessage, StoredMessage | None] | None:
        """The stored message with `platform_message_id` and the assistant message answering it
        (the channel's next message, when that is the assistant's; else None). None when no such
        message is stored."""
        ...

    async def move_channel(self, old_key: str, new_key: str) -> None:
        """Move `old_key`'s messages and settings to `new_key` in one transaction (e.g. a group
        that got a new id). An existing `new_key` is merged: every message keeps its id, so the
        histories interleave in the order they were written; the new channel's settings win, the
        old ones fill those it has unset. An old message whose platform id the new channel already
        holds is kept without that id. The old channel is left empty with default settings.
        Nothing happens when `old_key` was never seen or equals `new_key`."""
        ...

    async def reset_channel(self, channel_key: str) -> int:
        """Delete the channel's messages (its settings stay); returns how many were deleted."""
        ...

    async def get_settings(self, channel_key: str) -> ChannelSettings:
        """The channel's settings; all None for a channel never seen (no row is created)."""
        ...

    async def set_settings(
        self,
        channel_key: str,
        *,
        system_prompt: str | _Unset | None = UNSET,
        temperature: float | _Unset | None = UNSET,
        persona: str | _Unset | None = UNSET,
        context: ContextMode | _Unset | None = UNSET,
        listen: ListenMode | _Unset | None = UNSET,
    ) -> ChannelSettings:
        """Change the given settings in one transaction (None clears one back to the default);
        returns them all.

        A temperature that is not a finite number, or a context or listen mode not in its
        Literal, raises `ValueError`."""
        ...

    async def message_count(self, channel_key: str) -> int:
        """How many messages the channel has stored."""
        ...

    async def last_platform_message_ids(self, platform: str) -> dict[str, str]:
        """For every channel of `platform`: external id -> the platform id of the newest stored user
        message (with a platform id) that is directly followed by an assistant message, i.e. the
        newest message known to be answered. Channels with no such message are left out.

        Adapters fetch what came after it when they (re)connect: that includes messages stored but
        never answered (a crash between storing a message and storing its answer), which they hand
        to the engine as redelivered. A message whose answer failed (a notice, nothing stored) and
        that was followed by an answered one is not named again."""
        ...

    async def tokens_used(self, user_key: str, day: date) -> int:
        """The tokens charged to `user_key` on the UTC `day`, over every channel (0 if none)."""
        ...

    async def top_usage(self, channel_key: str, day: date, limit: int) -> list[UsageEntry]:
        """The channel's users by tokens charged there on `day`, most first, at most `limit`."""
        ...

    async def forget_member(self, platform: str, member_id: str) -> Forgotten:
        """Delete every message whose `member_id` is `member_id` in every channel of `platform`
        (a user's messages and the bot's replies to them) in one transaction, and the user's name
        from the usage records (the counts stay: forgetting does not reset a quota)."""
        ...

    async def purge_older_than(self, cutoff: datetime, batch_size: int = 500) -> int:
        """Delete messages created before `cutoff` (timezone-aware), `batch_size` per short
        transaction so no write lock is held for long; returns how many. Usage records of days
        before `cutoff` go too."""
        ...

    async def member_messages(self, platform: str, member_id: str) -> list[MemberMessage]:
        """Every stored message whose `member_id` is `member_id` on `platform` (a data export),
        by channel, oldest first."""
        ...


# --- ordering across processes -----------------------------------------------------------------


class ChannelLocks(Protocol):
    """A mutual exclusion per channel key, shared by every process that uses the database."""

    def hold(self, channel_key: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Wait for the channel's lock and hold it for the `async with` block. Raises
        `StorageError` when the lock cannot be taken (database down, waited too long)."""
        ...


class LocalChannelLocks:
    """No lock across processes: for one process per database (SQLite), where the engine's own
    per-channel queue already orders each channel."""

    @contextlib.asynccontextmanager
    async def hold(self, channel_key: str) -> AsyncIterator[None]:
        """Returns at once."""
        yield


# --- narrow capabilities for adapters ------------------------------------------------------------


class HistoryReader(Protocol):
    """Read-only access to a channel's stored history (the web page shows it)."""

    async def recent_messages(
        self, channel_key: str, *, limit: int, max_chars: int | None = None, max_id: int | None = None
    ) -> list[StoredMessage]:
        """The newest `limit` messages, oldest first (see `Repository.recent_messages`)."""
        ...


@dataclass(frozen=True, slots=True)
class InboxItem:
    """A stored platform update: the platform's id and its payload (a JSON object)."""

    update_id: int
    payload: dict[str, Any]


InboxState = Literal["pending", "done"]


class UpdateInbox(Protocol):
    """A durable inbox of one platform's raw updates (Telegram): an update is committed here
    before it is confirmed to the platform and marked done once answered, so a crash loses none.
    Every method is one short transaction and raises `StorageError` when the database fails."""

    async def add(self, items: Sequence[InboxItem]) -> list[InboxItem]:
        """Store `items` as pending; return those that were new, in the given order."""
        ...

    async def pending(self) -> list[InboxItem]:
        """Every pending update, oldest update id first."""
        ...

    async def mark_done(self, update_id: int) -> None:
        """Record that `update_id` was handled (its reply sent, or nothing to answer)."""
        ...

    async def state(self, update_id: int) -> InboxState | None:
        """The update's state; None when it was never stored."""
        ...

    async def prune(self, older_than: timedelta) -> int:
        """Delete done updates received more than `older_than` ago; returns how many."""
        ...


class Claim(Protocol):
    """An exclusive role of this process among all processes on the database, held until
    `release()` or the process ends."""

    async def release(self) -> None:
        """Give the role up. Idempotent."""
        ...


ClaimRole = Callable[[str], Awaitable[Claim | None]]
"""Take the exclusive role with this name (it may be a secret: it is hashed) without waiting;
None when another process holds it. Raises `StorageError` when the database fails."""

LastAnsweredIds = Callable[[], Awaitable[Mapping[str, str]]]
"""For one platform's channels: channel id -> the platform id of the newest stored user message
that was answered (see `Repository.last_platform_message_ids`)."""


# --- what adapters ask of the engine ---------------------------------------------------------------


class ChatService(Protocol):
    """The engine as the adapters see it (`bot.engine.ChatEngine` implements it)."""

    def handle(self, event: ChatEvent) -> Reply:
        """Queue `event` (per channel, in call order) and return its reply at once."""
        ...

    def move_channel(self, old_key: str, new_key: str) -> asyncio.Task[None]:
        """Queue moving `old_key`'s history and settings to `new_key` (a group that got a new id)."""
        ...

    def complete(self, conversation: Conversation, overrides: SamplingOverrides, user_key: str) -> Reply:
        """Answer a stateless conversation (the caller sends the whole history)."""
        ...

    def stop(self, channel_key: str, reason: CutReason = CutReason.STOPPED) -> bool:
        """End the channel's running model reply now, keeping the text it has so far (stored, cut
        for `reason`). False when the channel has no reply being generated."""
        ...

    def edit(self, event: ChatEvent) -> asyncio.Task[bool]:
        """Queue an edit (in the channel's order, after the messages already queued): the stored
        user message `event.message_id` of `event.channel_key` gets `event.text` as its text. The
        edit is not answered. The task gives True when a stored message changed."""
        ...

    def delete(self, channel_key: str, platform_message_ids: Sequence[str]) -> asyncio.Task[int]:
        """Queue deleting these user messages of the channel and the bot's replies to them (in the
        channel's order). The task gives how many stored messages were deleted."""
        ...
