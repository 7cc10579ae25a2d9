"""Discord's slash commands: one per `bot.commands.COMMANDS` entry, answered through the engine."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import discord
from discord import app_commands

from adapters.discord_events import PLATFORM, discord_pieces, is_admin, is_staff, role_ids
from bot.commands import COMMANDS, CommandSpec
from bot.errors import ChinwagError
from bot.events import ChatEvent
from bot.ports import ChatService

logger = logging.getLogger(__name__)

RunCommand = Callable[[discord.Interaction, str], Awaitable[None]]
"""Answers an interaction as the given text command (`/system TEXT`)."""


async def setup_commands(tree: app_commands.CommandTree[Any], run: RunCommand, *, publish: bool) -> None:
    """Register a slash command per listed command and, when `publish`, sync them (the commands
    are global: one process publishes them). A failed sync is logged: the text commands still work."""
    for spec in COMMANDS:
        tree.add_command(_slash_command(spec, run))
    if not publish:
        return
    try:
        await tree.sync()
    except (discord.HTTPException, app_commands.CommandSyncFailure) as error:
        logger.warning("discord: could not publish the slash commands (%s)", type(error).__name__)


def _slash_command(spec: CommandSpec, run: RunCommand) -> app_commands.Command[Any, Any, None]:
    """`spec` as a slash command: its optional argument becomes an optional string option."""
    if spec.argument is None:

        async def bare(interaction: discord.Interaction) -> None:
            await run(interaction, f"/{spec.name}")

        return app_commands.Command(name=spec.name, description=spec.menu_text, callback=bare)

    async def with_argument(interaction: discord.Interaction, argument: str = "") -> None:
        await run(interaction, f"/{spec.name} {argument}".strip())

    # Discord shows (and sends) the option under the spec's name, e.g. `text` or `value`.
    callback = app_commands.describe(argument=spec.argument_summary)(with_argument)
    callback = app_commands.rename(argument=spec.argument)(callback)
    return app_commands.Command(name=spec.name, description=spec.menu_text, callback=callback)


async def answer_command(
    interaction: discord.Interaction, text: str, engine: ChatService, admins: Collection[int]
) -> None:
    """Hand a slash command to the engine as the text command and answer the interaction."""
    direct = interaction.guild_id is None
    user = interaction.user
    permissions = None if direct else interaction.permissions
    event = ChatEvent(
        platform=PLATFORM,
        channel=str(interaction.channel_id),
        author_id=str(user.id),
        author_name=user.display_name,
        text=text,
        is_admin=is_admin(user.id, direct=direct, admins=admins, permissions=permissions),
        is_direct=direct,
        message_id=str(interaction.id),
        is_staff=is_staff(user.id, admins=admins, permissions=permissions),
        roles=role_ids(user if isinstance(user, discord.Member) else None),
    )
    # Acknowledge at once (Discord wants an answer within 3 s; the channel may be busy with a
    # long reply) and post the engine's answer as the follow-up.
    await interaction.response.defer(thinking=True)
    try:
        reply = engine.handle(event)
        answer = await reply.text()
        if reply.silent:
            answer = ""
    except ChinwagError:
        answer = "Sorry, I'm shutting down. Please try again in a moment."
    await interaction.followup.send(
        discord_pieces(answer)[0] if answer.strip() else "(done)",
        allowed_mentions=discord.AllowedMentions.none(),
    )
