"""What the model sees for a stored question: its channel's recent history and settings.

In a channel that is not direct, user turns carry their author's cleaned display name (the model
reads `NAME: TEXT`); each author is named by their newest name, so a user renamed mid-conversation
is one person to the model. In member mode (`/context member`) the history is the asker's own
messages and the bot's replies to them, and the local model caches each member's context apart.
"""

from __future__ import annotations

from dataclasses import replace

from bot.config import ChatConfig, ModelConfig
from bot.events import ChatEvent
from bot.ports import (
    ChannelSettings,
    Conversation,
    ImagePart,
    Repository,
    SamplingSettings,
    StoredMessage,
    Turn,
    member_context_key,
    with_attached,
)
from bot.speakers import clean_speaker_name


def configured_sampling(model: ModelConfig) -> SamplingSettings:
    """The `model:` section's sampling settings (a channel may override its temperature)."""
    return SamplingSettings(
        temperature=model.temperature,
        top_p=model.top_p,
        top_k=model.top_k,
        max_new_tokens=model.max_new_tokens,
        repetition_penalty=model.repetition_penalty,
        stop=model.stop,
    )


class ConversationReader:
    """Reads a question's conversation from the repository, within the configured history budget,
    with the channel's own system prompt and temperature over the defaults."""

    def __init__(
        self, repository: Repository, chat: ChatConfig, system_prompt: str, sampling: SamplingSettings
    ) -> None:
        self._repository = repository
        self._chat = chat
        self._system_prompt = system_prompt
        self._sampling = sampling

    async def for_question(
        self,
        event: ChatEvent,
        question: StoredMessage,
        settings: ChannelSettings,
        images: tuple[ImagePart, ...] = (),
    ) -> tuple[Conversation, SamplingSettings]:
        """The prompt input for `question` (stored for `event`, with its decoded `images` when
        the backend sees them) and the sampling settings to answer it with, under the channel's
        `settings`. A user message is read with what its attachments became (`with_attached`).
        Raises `StorageError` when the database fails."""
        channel_key = event.channel_key
        member = event.author_id if self.context_mode(settings) == "member" else None
        earlier = await self._history_before(channel_key, question, member)
        system_prompt = settings.system_prompt if settings.system_prompt is not None else self._system_prompt
        sampling = self._sampling
        if settings.temperature is not None:
            sampling = replace(sampling, temperature=settings.temperature)
        names = {} if event.is_direct else _newest_names(earlier, event)
        history = [
            Turn(
                message.role,
                with_attached(message.content, message.attached),
                _speaker(message, names) if message.role == "user" else None,
            )
            for message in earlier
        ]
        conversation = Conversation(
            system_prompt=system_prompt,
            history=history,
            message=with_attached(question.content, question.attached),
            context_key=channel_key if member is None else member_context_key(channel_key, member),
            speaker=names.get(event.author_id),
            images=images,
        )
        return conversation, sampling

    def context_mode(self, settings: ChannelSettings) -> str:
        """The channel's history mode: its own `/context`, else `chat.group_context`."""
        return settings.context or self._chat.group_context

    async def _history_before(
        self, channel_key: str, new_message: StoredMessage, member_id: str | None
    ) -> list[StoredMessage]:
        """The channel's (or one member's) recent messages before `new_message` (lower ids only,
        also when it was stored long ago), oldest first, within the configured budget."""
        if self._chat.history_messages == 0:
            return []
        new_text = with_attached(new_message.content, new_message.attached)
        recent = await self._repository.recent_messages(
            channel_key,
            limit=self._chat.history_messages + 1,
            max_chars=self._chat.history_chars + len(new_text),
            max_id=new_message.id,
            member_id=member_id,
        )
        return [message for message in recent if message.id != new_message.id]


def _newest_names(history: list[StoredMessage], event: ChatEvent) -> dict[str, str]:
    """Author id -> cleaned display name, the newest one each author used (the asker's current
    name last), so a rename does not split one person in two."""
    names: dict[str, str] = {}
    for message in history:
        if message.role == "user" and message.author_id is not None and message.author_name:
            names[message.author_id] = clean_speaker_name(message.author_name, _fallback(message.author_id))
    names[event.author_id] = clean_speaker_name(event.author_name, _fallback(event.author_id))
    return names


def _speaker(message: StoredMessage, names: dict[str, str]) -> str | None:
    if not names:
        return None  # a direct chat: no names
    if message.author_id is None:
        return clean_speaker_name(message.author_name, "User")
    return names.get(message.author_id) or _fallback(message.author_id)


def _fallback(author_id: str) -> str:
    """The name of an author whose display name is empty once cleaned."""
    return f"User {author_id[-6:]}"
