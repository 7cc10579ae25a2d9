"""Discord's messages as `ChatEvent`s and replies as Discord-sized messages (pure functions)."""

from __future__ import annotations

import re
from collections.abc import Collection

import discord

from adapters.splitting import split_reply
from bot.commands import COMMAND_NAMES, parse_command
from bot.events import ChatEvent

PLATFORM = "discord"
MESSAGE_LIMIT = 2000
# Text commands the bot answers in a guild channel without being mentioned; other bots' commands
# (`/play`…) are not ours.
TEXT_COMMANDS = COMMAND_NAMES
_ANSWERED_TYPES = frozenset({discord.MessageType.default, discord.MessageType.reply})
_FENCE = re.compile(r"[ \t]*```[ \t]*([^\s`]*)")
_CLOSE_FENCE = "\n```"


def to_event(
    message: discord.Message,
    bot_user_id: int,
    admins: frozenset[int],
    channels: frozenset[int] = frozenset(),
) -> ChatEvent | None:
    """The `ChatEvent` for a new message from a person, else None.

    DMs: every message. Guild channels: every message too, `addressed` when it mentions the bot,
    replies to one of its messages, or is one of our text commands (also after a leading mention:
    `<@bot> /reset`), and every message in `channels`. The bot's mention is removed from the text.
    Bots (the bot itself included) and non-default message types (joins, pins, …) give None.
    Admins and staff: see `is_admin` and `is_staff`; `roles`: see `role_ids`.
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
    )


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
