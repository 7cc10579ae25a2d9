"""The commands a community runs its channels with: `/persona`, `/context`, `/listen`, `/usage`,
`/forget`. Each returns the reply text; setting commands are for admins (`ChatEvent.is_admin`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from bot.config import PersonaConfig
from bot.events import ChatEvent
from bot.ports import ContextMode, ListenMode, Repository
from bot.quota import Quota

NOT_ALLOWED = "Sorry, only an admin is allowed to do that here."
DEFAULT_WORDS = frozenset({"default", "--default"})

CONTEXT_MEANING: dict[ContextMode, str] = {
    "shared": "everyone here shares one conversation with me",
    "member": "each member has their own conversation with me",
}
LISTEN_MEANING: dict[ListenMode, str] = {
    "all": "I answer every message here",
    "mention": "I answer messages that mention me, reply to me, or are commands",
}
PRIVACY_MODE_WARNING = (
    "\nBut Telegram only shows me the messages that mention me or reply to me while my privacy "
    "mode is on: the bot's owner must turn it off with @BotFather (/setprivacy, then Disable) and "
    "add me to this group again."
)


class CommunityCommands:
    """Handlers for the community commands of one engine."""

    def __init__(
        self,
        repository: Repository,
        personas: Mapping[str, PersonaConfig],
        quota: Quota,
        *,
        group_context: ContextMode,
        forget_context: Callable[[str], None],
    ) -> None:
        self._repository = repository
        self._personas = {name.lower(): (name, preset) for name, preset in personas.items()}
        self._quota = quota
        self._group_context = group_context
        self._forget_context = forget_context  # drops a channel's cached model context

    async def persona(self, argument: str, event: ChatEvent) -> str:
        """`/persona` lists; `/persona NAME` and `/persona default` (admins) switch."""
        if not argument:
            return await self._list_personas(event)
        if not event.is_admin:
            return NOT_ALLOWED
        if argument.lower() in DEFAULT_WORDS:
            await self._repository.set_settings(
                event.channel_key, system_prompt=None, temperature=None, persona=None
            )
            return "Persona back to the default: the configured system prompt and temperature."
        found = self._personas.get(argument.lower())
        if found is None:
            names = ", ".join(name for name, _ in self._personas.values()) or "none are configured"
            return f"Unknown persona {argument[:40]!r}. Personas: {names} (or /persona default)."
        name, preset = found
        await self._repository.set_settings(
            event.channel_key,
            system_prompt=preset.system_prompt,
            temperature=preset.temperature,
            persona=name,
        )
        described = f": {preset.description}" if preset.description else ""
        return f"Persona set to {name}{described}."

    async def _list_personas(self, event: ChatEvent) -> str:
        current = (await self._repository.get_settings(event.channel_key)).persona
        if not self._personas:
            return "No personas are configured (the personas: section of config.yaml)."
        lines = ["Personas:"]
        for name, preset in self._personas.values():
            # Plain lines, not a Markdown list: chat platforms render those with a gap.
            lines.append(name + (f": {preset.description}" if preset.description else ""))
        lines.append(f"This chat uses: {current or 'the default'}. /persona NAME switches (admins).")
        return "\n".join(lines)

    async def context(self, argument: str, event: ChatEvent) -> str:
        """`/context` shows the channel's history mode; `/context shared|member` (admins) sets it."""
        settings = await self._repository.get_settings(event.channel_key)
        if not argument:
            current = settings.context or self._group_context
            source = "this chat's" if settings.context is not None else "the default"
            return f"Context ({source}): {current}: {CONTEXT_MEANING[current]}."
        if not event.is_admin:
            return NOT_ALLOWED
        wanted = argument.lower()
        if wanted in DEFAULT_WORDS:
            await self._repository.set_settings(event.channel_key, context=None)
            return f"Context back to the default: {self._group_context}."
        if wanted not in CONTEXT_MEANING:
            return "Use /context shared or /context member."
        mode: ContextMode = "shared" if wanted == "shared" else "member"
        await self._repository.set_settings(event.channel_key, context=mode)
        return f"Context set to {mode}: {CONTEXT_MEANING[mode]}."

    async def listen(self, argument: str, event: ChatEvent) -> str:
        """`/listen` shows; `/listen all|mention` (admins; groups) sets when the bot answers."""
        if event.is_direct:
            return "In a private chat I answer every message; /listen is for groups and server channels."
        settings = await self._repository.get_settings(event.channel_key)
        if not argument:
            current = settings.listen or "mention"
            return f"Listening: {current}: {LISTEN_MEANING[current]}."
        if not event.is_admin:
            return NOT_ALLOWED
        wanted = argument.lower()
        if wanted not in LISTEN_MEANING and wanted not in DEFAULT_WORDS:
            return "Use /listen all or /listen mention."
        mode: ListenMode = "all" if wanted == "all" else "mention"
        await self._repository.set_settings(event.channel_key, listen=None if mode == "mention" else mode)
        text = f"Listening set to {mode}: {LISTEN_MEANING[mode]}."
        if mode == "all" and not event.sees_all_messages:
            text += PRIVACY_MODE_WARNING
        return text

    async def usage(self, argument: str, event: ChatEvent) -> str:
        """`/usage` shows the author's tokens today; `/usage all` (admins) the channel's top users."""
        if not argument:
            return await self._quota.usage_text(event)
        if argument.lower() != "all":
            return "Use /usage, or /usage all for this chat's top users (admins)."
        if not event.is_admin:
            return NOT_ALLOWED
        return await self._quota.top_text(event)

    async def forget(self, event: ChatEvent) -> str:
        """`/forget`: delete the author's messages on this platform, everywhere, and the replies."""
        forgotten = await self._repository.forget_member(event.platform, event.author_id)
        for channel_key in forgotten.channel_keys:
            self._forget_context(channel_key)
        if forgotten.deleted == 0:
            return f"I forgot 0 messages: I had nothing of yours stored on {event.platform}."
        noun = "message" if forgotten.deleted == 1 else "messages"
        chats = len(forgotten.channel_keys)
        return (
            f"Done: I forgot {forgotten.deleted} {noun} (yours and my replies to them) "
            f"in {chats} chat{'s' if chats != 1 else ''} on {event.platform}."
        )
