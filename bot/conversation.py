"""What the model sees for a stored question: its channel's recent history and settings."""

from __future__ import annotations

from dataclasses import replace

from bot.config import ChatConfig, ModelConfig
from bot.ports import Conversation, Repository, SamplingSettings, StoredMessage, Turn


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
        self, channel_key: str, question: StoredMessage
    ) -> tuple[Conversation, SamplingSettings]:
        """The prompt input for `question` and the sampling settings to answer it with.
        Raises `StorageError` when the database fails."""
        history = await self._history_before(channel_key, question)
        settings = await self._repository.get_settings(channel_key)
        system_prompt = settings.system_prompt if settings.system_prompt is not None else self._system_prompt
        sampling = self._sampling
        if settings.temperature is not None:
            sampling = replace(sampling, temperature=settings.temperature)
        conversation = Conversation(
            system_prompt=system_prompt, history=history, message=question.content, context_key=channel_key
        )
        return conversation, sampling

    async def _history_before(self, channel_key: str, new_message: StoredMessage) -> list[Turn]:
        """The channel's recent turns before `new_message` (lower ids only, also when it was
        stored long ago), oldest first, within the configured budget."""
        if self._chat.history_messages == 0:
            return []
        recent = await self._repository.recent_messages(
            channel_key,
            limit=self._chat.history_messages + 1,
            max_chars=self._chat.history_chars + len(new_message.content),
            max_id=new_message.id,
        )
        return [Turn(message.role, message.content) for message in recent if message.id != new_message.id]
