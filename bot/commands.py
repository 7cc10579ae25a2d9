"""Chat commands: the list, parsing, and `/reset`, `/help`, `/system`, `/temperature`; the
community commands (`/persona`, `/context`, `/listen`, `/usage`, `/forget`) are in `bot.community`."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from bot.community import DEFAULT_WORDS, NOT_ALLOWED, CommunityCommands
from bot.events import ChatEvent
from bot.ports import Repository

MAX_SYSTEM_PROMPT_CHARS = 4000
MIN_TEMPERATURE = 0.0
MAX_TEMPERATURE = 2.0
_COMMAND = re.compile(r"/(\S+)(?:\s+(.*))?", re.DOTALL)


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One command as the /help text and the platforms' command menus show it."""

    name: str
    summary: str
    """One line for a command menu (Telegram's menu, Discord's slash commands)."""
    usage: str
    """The command's line in /help, after `/name: `."""
    argument: str | None = None
    """The optional argument's name (a Discord slash-command option); None: no argument."""
    argument_summary: str = ""
    admin_only: bool = False
    """Only admins may run it at all (for the setting commands only setting is restricted)."""

    @property
    def menu_text(self) -> str:
        """The menu description, naming who may run it."""
        return f"{self.summary} (admins)" if self.admin_only else self.summary

    @property
    def help_line(self) -> str:
        """The command's line in /help."""
        return f"/{self.name}: {self.usage}" + (" (admins only)" if self.admin_only else "")


COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("help", "List the commands", "show this list"),
    CommandSpec("reset", "Forget this conversation", "forget this conversation", admin_only=True),
    CommandSpec(
        "system",
        "Show or set the system prompt",
        "show the system prompt; /system TEXT sets it for this chat, /system default restores it "
        "(setting: admins only)",
        argument="text",
        argument_summary="The new system prompt (admins); empty shows the current one",
    ),
    CommandSpec(
        "temperature",
        "Show or set the sampling temperature",
        "show the sampling temperature; /temperature X sets it (0 = deterministic, up to 2), "
        "/temperature default restores it (setting: admins only)",
        argument="value",
        argument_summary="The new temperature, 0 to 2 (admins); empty shows the current one",
    ),
    CommandSpec(
        "persona",
        "List or switch personas",
        "list the personas; /persona NAME switches this chat to one, /persona default restores "
        "the default (switching: admins only)",
        argument="name",
        argument_summary="The persona to switch to (admins); empty lists them",
    ),
    CommandSpec(
        "context",
        "Show or set shared or per-member history",
        "show whether this chat shares one conversation; /context shared or /context member "
        "sets it (setting: admins only)",
        argument="mode",
        argument_summary="shared or member (admins); empty shows the current mode",
    ),
    CommandSpec(
        "listen",
        "Show or set when I answer in a group",
        "show when I answer here; /listen all answers every message, /listen mention only "
        "mentions and replies (setting: admins only)",
        argument="mode",
        argument_summary="all or mention (admins); empty shows the current mode",
    ),
    CommandSpec(
        "usage",
        "Show your tokens today",
        "show your tokens today and the daily limit; /usage all shows this chat's top users (admins only)",
        argument="scope",
        argument_summary="all: this chat's top users (admins); empty: your own usage",
    ),
    CommandSpec(
        "forget",
        "Delete your messages",
        "delete your messages on this platform, in every chat, and my replies to them",
    ),
)
"""Every command the bot lists: /help, Telegram's menu and Discord's commands are derived from it."""

COMMAND_NAMES = frozenset(spec.name for spec in COMMANDS)
"""The listed commands' names (aliases such as /clear are understood but not listed)."""

HELP_TEXT = "\n".join(
    ["Commands:", *(spec.help_line for spec in COMMANDS), "Anything else is a message to the model."]
)

RESET_COMMANDS = frozenset({"reset", "clear"})
"""Command names that clear a channel's conversation."""


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed command: its lower-case name without the slash, and the rest of the line."""

    name: str
    argument: str


def parse_command(text: str) -> Command | None:
    """Parse `/name[@BotName] [argument]`; return None for text that is not a command.

    The argument is everything after the first run of whitespace, line breaks inside it kept (a
    multi-line `/system` prompt).
    """
    match = _COMMAND.match(text.strip())
    if match is None:
        return None
    name = match.group(1).split("@", 1)[0].lower()
    if not name or not name.replace("_", "").isascii() or not name.replace("_", "").isalnum():
        return None
    return Command(name=name, argument=(match.group(2) or "").strip())


@dataclass(frozen=True, slots=True)
class Defaults:
    """The configured values a channel falls back to."""

    system_prompt: str
    temperature: float


class CommandHandler:
    """Answers commands against the repository; returns the reply text."""

    def __init__(self, repository: Repository, defaults: Defaults, community: CommunityCommands) -> None:
        self._repository = repository
        self._defaults = defaults
        self._community = community

    async def handle(self, command: Command, event: ChatEvent) -> str:
        """Run `command` for `event`'s channel. Setting commands are refused for non-admins."""
        match command.name:
            case "help" | "start":
                return HELP_TEXT
            case "reset" | "clear":
                return await self._reset(event)
            case "system":
                return await self._system(command.argument, event)
            case "temperature" | "temp":
                return await self._temperature(command.argument, event)
            case "persona":
                return await self._community.persona(command.argument, event)
            case "context":
                return await self._community.context(command.argument, event)
            case "listen":
                return await self._community.listen(command.argument, event)
            case "usage":
                return await self._community.usage(command.argument, event)
            case "forget":
                return await self._community.forget(event)
            case _:
                return f"Unknown command /{command.name}. Send /help to see what I understand."

    async def _reset(self, event: ChatEvent) -> str:
        if not event.is_admin:
            return NOT_ALLOWED
        deleted = await self._repository.reset_channel(event.channel_key)
        noun = "message" if deleted == 1 else "messages"
        return f"Conversation reset: {deleted} {noun} cleared. Let's start fresh."

    async def _system(self, argument: str, event: ChatEvent) -> str:
        if not argument:
            settings = await self._repository.get_settings(event.channel_key)
            current = settings.system_prompt
            source = "the default" if current is None else "this chat's"
            if current is not None and settings.persona is not None:
                source = f"persona {settings.persona}"
            prompt = current if current is not None else self._defaults.system_prompt
            return f"System prompt ({source}):\n{prompt}"
        if not event.is_admin:
            return NOT_ALLOWED
        if argument.lower() in DEFAULT_WORDS:
            await self._repository.set_settings(event.channel_key, system_prompt=None, persona=None)
            return "System prompt restored to the default."
        if len(argument) > MAX_SYSTEM_PROMPT_CHARS:
            return (
                f"That system prompt is too long ({len(argument)} characters, "
                f"at most {MAX_SYSTEM_PROMPT_CHARS})."
            )
        # A prompt of one's own is no longer the persona's.
        await self._repository.set_settings(event.channel_key, system_prompt=argument, persona=None)
        return "System prompt updated for this chat."

    async def _temperature(self, argument: str, event: ChatEvent) -> str:
        if not argument:
            settings = await self._repository.get_settings(event.channel_key)
            current = settings.temperature
            value = current if current is not None else self._defaults.temperature
            source = "this chat's" if current is not None else "the default"
            if current is not None and settings.persona is not None:
                source = f"persona {settings.persona}"
            return f"Temperature ({source}): {value:g}"
        if not event.is_admin:
            return NOT_ALLOWED
        if argument.lower() in DEFAULT_WORDS:
            await self._repository.set_settings(event.channel_key, temperature=None)
            return f"Temperature restored to the default ({self._defaults.temperature:g})."
        try:
            value = float(argument.replace(",", "."))
        except ValueError:
            value = math.nan
        if not MIN_TEMPERATURE <= value <= MAX_TEMPERATURE:  # also false for NaN
            return (
                f"Temperature must be a number from {MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g}, "
                "e.g. /temperature 0.7"
            )
        await self._repository.set_settings(event.channel_key, temperature=value)
        return f"Temperature set to {value:g} for this chat."


__all__ = [
    "COMMANDS",
    "COMMAND_NAMES",
    "HELP_TEXT",
    "NOT_ALLOWED",
    "Command",
    "CommandHandler",
    "CommandSpec",
    "Defaults",
    "parse_command",
]
