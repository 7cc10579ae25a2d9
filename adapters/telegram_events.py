"""Telegram's updates as `ChatEvent`s and replies as Telegram-sized messages (pure functions)."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import Any

from telegram import Message, MessageEntity, Update
from telegram.constants import ChatType, MessageEntityType, MessageLimit

from adapters.splitting import split_reply
from adapters.telegram_files import FileDownloads, attachments_of, no_downloads
from bot.config import ChatConfig
from bot.events import ChatEvent

PLATFORM = "telegram"
# Telegram's "Group" user: an anonymous group admin posts as it, with sender_chat = the group.
ANONYMOUS_ADMIN_ID = 1087968824
MESSAGE_LIMIT: int = MessageLimit.MAX_TEXT_LENGTH  # 4096

AdminLookup = Callable[[int, int], bool]

# What `to_event` offers photos up to without the adapter's limits: `chat.max_image_bytes`' default.
DEFAULT_MAX_IMAGE_BYTES: int = ChatConfig().max_image_bytes


def to_event(
    update: Update,
    bot_username: str,
    admins: Collection[int],
    is_chat_admin: AdminLookup,
    *,
    sees_all_messages: bool = True,
    files: FileDownloads = no_downloads,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> ChatEvent | None:
    """The `ChatEvent` for a new message from a person: text, or a document or photo with its
    caption (possibly empty) as the text and the file in `attachments` (fetched through `files`
    when the engine asks, see `telegram_files`); else None.

    Private chats: every such message. Groups: every one too, `addressed` when it (or its caption)
    mentions @bot_username, replies to one of the bot's messages, or starts with a command (`/cmd`,
    `/cmd@bot_username`); `/cmd@OtherBot` is not ours and gives None. The mention is removed from
    the text, so `@Bot /reset` is the command `/reset`. Edits (see `to_edit`), stickers, voice,
    video, service messages and other bots give None.

    Staff (`is_staff`): ids in `admins`, an anonymous admin posting as the group, or whoever
    `is_chat_admin(chat_id, user_id)` says (groups only). Admins (`is_admin`): staff, and the user
    of a private chat. `sees_all_messages` (getMe's `can_read_all_group_messages`: False in privacy
    mode) is passed on for group messages; a private chat delivers everything.
    """
    message = update.message
    if message is None:
        return None
    attachments = attachments_of(message, files, max_image_bytes)
    if message.text is None and not attachments:
        return None
    event = _event_of(message, bot_username, admins, is_chat_admin, sees_all_messages=sees_all_messages)
    return None if event is None else replace(event, attachments=attachments)


def to_edit(
    update: Update, bot_username: str, admins: Collection[int], is_chat_admin: AdminLookup
) -> ChatEvent | None:
    """For an `edited_message` from a person: the event whose `message_id` names the edited
    message and whose `text` is its new text or caption (the mention removed, as `to_event` did
    when the message came); None for any other update. The edit of a document's or photo's
    caption is one too; a replaced file is not looked at (only the text is kept up to date)."""
    message = update.edited_message
    if message is None or (message.text is None and message.caption is None and not _has_file(message)):
        return None
    return _event_of(message, bot_username, admins, is_chat_admin, sees_all_messages=True)


def _has_file(message: Message) -> bool:
    return message.document is not None or bool(message.photo)


def _event_of(
    message: Message,
    bot_username: str,
    admins: Collection[int],
    is_chat_admin: AdminLookup,
    *,
    sees_all_messages: bool,
) -> ChatEvent | None:
    """The event of a person's message, its text being its text or else its caption ("" if none)."""
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
    written = _Written.of(message)
    command_target = _command_target(written)
    if command_target and command_target.lower() != bot_username.lower():
        return None
    mentioned = _mentions(written, bot_username)
    addressed = direct or command_target is not None or mentioned or _replies_to_bot(message, bot_username)
    text = _strip_mention(written.text, bot_username) if mentioned else written.text

    channel = str(chat.id)
    if message.is_topic_message and message.message_thread_id is not None:
        channel = f"{chat.id}:{message.message_thread_id}"
    if anonymous_admin and message.sender_chat is not None:
        author_name = message.sender_chat.title or "Anonymous admin"
    else:
        author_name = sender.full_name
    is_staff = anonymous_admin or sender.id in admins or (not direct and is_chat_admin(chat.id, sender.id))
    return ChatEvent(
        platform=PLATFORM,
        channel=channel,
        author_id=str(sender.id),
        author_name=author_name,
        text=text,
        is_admin=direct or is_staff,
        is_direct=direct,
        # Qualified by the chat: a supergroup numbers its messages from 1 again, and a group upgraded
        # to one moves its history into the new chat's channel, where the two numberings meet. The
        # old group's redelivered updates (mapped to the new channel) still find their stored copy.
        message_id=f"{chat.id}:{message.message_id}",
        is_staff=is_staff,
        addressed=addressed,
        sees_all_messages=direct or sees_all_messages,
    )


@dataclass(frozen=True, slots=True)
class _Written:
    """What the person wrote: a message's text and its entities, or else its caption and the
    caption's entities (a document or photo). Entity offsets count UTF-16 units of that text."""

    message: Message
    text: str
    entities: tuple[MessageEntity, ...]
    caption: bool

    @classmethod
    def of(cls, message: Message) -> _Written:
        if message.text is not None:
            return cls(message, message.text, tuple(message.entities), caption=False)
        return cls(message, message.caption or "", tuple(message.caption_entities), caption=True)

    def parse(self, entity: MessageEntity) -> str:
        if self.caption:
            return self.message.parse_caption_entity(entity)
        return self.message.parse_entity(entity)

    def parse_all(self, kind: str) -> dict[MessageEntity, str]:
        if self.caption:
            return self.message.parse_caption_entities([kind])
        return self.message.parse_entities([kind])


def _command_target(written: _Written) -> str | None:
    """For a command (bot_command entity at offset 0): the bot it names ("" if none)."""
    entities = written.entities
    if not entities or entities[0].type != MessageEntityType.BOT_COMMAND or entities[0].offset != 0:
        return None
    return written.parse(entities[0]).partition("@")[2]


def _mentions(written: _Written, bot_username: str) -> bool:
    wanted = f"@{bot_username}".lower()
    return any(text.lower() == wanted for text in written.parse_all(MessageEntityType.MENTION).values())


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


def telegram_parts(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """`text` cut into parts of at most `limit` UTF-16 units whose concatenation is exactly `text`:
    `split_reply` at `limit` characters, and a part still over `limit` units cut again at
    `limit // 2` characters (`limit` characters hold at most `2 * limit` units, so half fits)."""
    parts: list[str] = []
    for piece in split_reply(text, limit):
        parts.extend([piece] if utf16_length(piece) <= limit else split_reply(piece, max(1, limit // 2)))
    return parts


def telegram_pieces(text: str) -> list[str]:
    """`text` as plain Telegram messages: its `telegram_parts`, blank ones dropped (Telegram
    refuses an empty message and trims the whitespace anyway)."""
    return [part for part in telegram_parts(text) if part.strip()]


def chat_id_of(payload: dict[str, Any]) -> int:
    """The chat whose order a raw update takes its place in (0 when it has none).

    A group's upgrade notice (`migrate_to_chat_id`, posted in the old group) is ordered with the
    new supergroup: the new group's next messages then wait until the history has moved there.
    """
    for key in ("message", "edited_message", "channel_post", "my_chat_member"):
        body = payload.get(key)
        if isinstance(body, dict):
            if isinstance(body.get("migrate_to_chat_id"), int):
                return int(body["migrate_to_chat_id"])
            chat = body.get("chat")
            if isinstance(chat, dict) and isinstance(chat.get("id"), int):
                return int(chat["id"])
    return 0
