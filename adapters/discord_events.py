"""Discord's messages (and their edits) as `ChatEvent`s and replies as Discord-sized messages
(pure functions)."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection

import discord

from adapters.splitting import split_reply
from bot.commands import COMMAND_NAMES, parse_command
from bot.events import Attachment, ChatEvent, Download

PLATFORM = "discord"
MESSAGE_LIMIT = 2000
# Text commands the bot answers in a guild channel without being mentioned; other bots' commands
# (`/play`…) are not ours.
TEXT_COMMANDS = COMMAND_NAMES
_ANSWERED_TYPES = frozenset({discord.MessageType.default, discord.MessageType.reply})
_FENCE = re.compile(r"[ \t]*```[ \t]*([^\s`]*)")
_CLOSE_FENCE = "\n```"

FetchUrl = Callable[[str], Download]
"""The `Download` of the file at an attachment's URL (see adapters/discord_files.py)."""


def to_event(
    message: discord.Message,
    bot_user_id: int,
    admins: frozenset[int],
    channels: frozenset[int] = frozenset(),
    fetch: FetchUrl | None = None,
) -> ChatEvent | None:
    """The `ChatEvent` for a new message from a person, else None.

    DMs: every message. Guild channels: every message too, `addressed` when it mentions the bot,
    replies to one of its messages, or is one of our text commands (also after a leading mention:
    `<@bot> /reset`), and every message in `channels`. The bot's mention is removed from the text.
    Bots (the bot itself included) and non-default message types (joins, pins, …) give None.
    Admins and staff: see `is_admin` and `is_staff`; `roles`: see `role_ids`.
    The message's files become `attachments` (see `attachments_of`) when `fetch` is given; a
    message with files and no text is an event too (its `text` is then empty).
    """
    author = message.author
    if author.bot or author.id == bot_user_id or message.type not in _ANSWERED_TYPES:
        return None
    direct = message.guild is None
    mentioned = (
        any(user.id == bot_user_id for user in message.mentions) or bot_user_id in message.raw_mentions
    )
    text = _strip_mention(message.content, bot_user_id) if mentioned else message.content.strip()
    addressed = (
        direct
        or mentioned
        or _replies_to(message, bot_user_id)
        or _is_our_command(text)
        or message.channel.id in channels
    )
    member = author if isinstance(author, discord.Member) and not direct else None
    permissions = member.guild_permissions if member is not None else None
    return ChatEvent(
        platform=PLATFORM,
        channel=str(message.channel.id),
        author_id=str(author.id),
        author_name=author.display_name,
        text=text,
        is_admin=is_admin(author.id, direct=direct, admins=admins, permissions=permissions),
        is_direct=direct,
        message_id=str(message.id),
        is_staff=is_staff(author.id, admins=admins, permissions=permissions),
        roles=role_ids(member),
        addressed=addressed,
        attachments=attachments_of(message, fetch) if fetch is not None else (),
    )


def attachments_of(message: discord.Message, fetch: FetchUrl) -> tuple[Attachment, ...]:
    """The message's files, not downloaded: the name, type and size are Discord's claims (the
    download enforces the limits itself), an `image/*` type marks an image, and `fetch` streams
    the file from its URL when the engine asks for it."""
    return tuple(
        Attachment(
            name=attachment.filename,
            mime_type=attachment.content_type,
            size=attachment.size,
            image=(attachment.content_type or "").startswith("image/"),
            download=fetch(attachment.url),
        )
        for attachment in message.attachments
    )


def edit_event(
    update: discord.RawMessageUpdateEvent,
    bot_user_id: int,
    admins: frozenset[int],
    channels: frozenset[int] = frozenset(),
) -> ChatEvent | None:
    """The `ChatEvent` that gives a person's edited message its new text (`message_id` = the
    edited message, `text` = its new text, mention removed as in `to_event`), else None.

    Not every MESSAGE_UPDATE is a text edit: Discord also sends one when it adds a link preview
    (an embed), pins a message, or when the bot edits its own streamed reply. Only an update with
    `content` and an `edited_timestamp` (set by a person's edit, not by an unfurl) whose text
    differs from the cached message (when discord.py still has it) counts. Messages of bots and
    service messages give None, as in `to_event`."""
    data = update.data
    if "content" not in data or data.get("edited_timestamp") is None:
        return None
    cached = update.cached_message
    if cached is not None and cached.content == update.message.content:
        return None
    return to_event(update.message, bot_user_id, admins, channels)


def channel_key(channel_id: int) -> str:
    """The engine's name of a Discord channel's history (a thread has its own: its id is the
    channel id of its messages), as `ChatEvent.channel_key` makes it."""
    return f"{PLATFORM}:{channel_id}"


def is_staff(user_id: int, *, admins: Collection[int], permissions: discord.Permissions | None) -> bool:
    """Discord's staff: ids in `discord.admins`, and guild members with the Administrator or Manage
    Server permission (`permissions`: None outside a guild). The user of a DM is not, by that."""
    return user_id in admins or (
        permissions is not None and (permissions.administrator or permissions.manage_guild)
    )


def is_admin(
    user_id: int, *, direct: bool, admins: Collection[int], permissions: discord.Permissions | None
) -> bool:
    """Discord's admin rule: staff (see `is_staff`), and the user of a DM in their own DM."""
    return direct or is_staff(user_id, admins=admins, permissions=permissions)


def role_ids(member: discord.Member | None) -> tuple[str, ...]:
    """The member's guild role ids as strings, lowest role first, without @everyone (every member
    has it; its id is the guild's). Empty outside a guild.

    discord.py resolves `Member.roles` from the role ids of the message's `member` object against
    the guild's role cache (filled by GUILD_CREATE and the role events of the guilds intent) and
    adds @everyone; a role the cache does not know is left out."""
    if member is None:
        return ()
    return tuple(str(role.id) for role in member.roles if not role.is_default())


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
