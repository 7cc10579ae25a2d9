"""Telegram's updates as `ChatEvent`s and replies as Telegram-sized messages (pure functions)."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any

from telegram import Message, Update
from telegram.constants import ChatType, MessageEntityType, MessageLimit

from adapters.splitting import split_reply
from bot.events import ChatEvent

PLATFORM = "telegram"
# Telegram's "Group" user: an anonymous group admin posts as it, with sender_chat = the group.
ANONYMOUS_ADMIN_ID = 1087968824
MESSAGE_LIMIT: int = MessageLimit.MAX_TEXT_LENGTH  # 4096

AdminLookup = Callable[[int, int], bool]


def to_event(
    update: Update,
    bot_username: str,
    admins: Collection[int],
    is_chat_admin: AdminLookup,
    *,
    sees_all_messages: bool = True,
) -> ChatEvent | None:
    """The `ChatEvent` for a new text message from a person, else None.

    Private chats: every text message. Groups: every text message too, `addressed` when it
    mentions @bot_username, replies to one of the bot's messages, or starts with a command (`/cmd`,
    `/cmd@bot_username`); `/cmd@OtherBot` is not ours and gives None. The mention is removed from
    the text, so `@Bot /reset` is the command `/reset`. Edits, media, service messages and other
    bots give None.

    Staff (`is_staff`): ids in `admins`, an anonymous admin posting as the group, or whoever
    `is_chat_admin(chat_id, user_id)` says (groups only). Admins (`is_admin`): staff, and the user
    of a private chat. `sees_all_messages` (getMe's `can_read_all_group_messages`: False in privacy
    mode) is passed on for group messages; a private chat delivers everything.
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
    addressed = direct or command_target is not None or mentioned or _replies_to_bot(message, bot_username)
    text = _strip_mention(message.text, bot_username) if mentioned else message.text

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
