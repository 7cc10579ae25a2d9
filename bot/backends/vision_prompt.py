"""Prompts for a local image-text-to-text model, on the prompt side (torch-free).

Such a model is prompted through its processor's chat template, which differs from a text
tokenizer's in one way: a message's content is a list of parts (`{"type": "text", "text": ...}`,
`{"type": "image"}`), not a string. `ProcessorTemplate` makes a processor look like the tokenizer
`bot.prompts` expects, so `ProcessorChatFormat` fits the conversation exactly as the text formats
do (oldest turns first, the message cut in the middle, control tokens typed by users kept as
text), counting the text's tokens. The prompt keeps the fitted messages
(`PreparedPrompt.messages`): the worker renders them once more with the images
(`bot.backends.vision_inputs`), whose tokens the fitting has reserved room for beforehand.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.prompts import ChatTemplateFormat


def text_parts(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with string contents as a processor's chat template takes them: lists of parts."""
    return [
        {**m, "content": [{"type": "text", "text": m["content"]}]} if isinstance(m["content"], str) else m
        for m in messages
    ]


class ProcessorTemplate:
    """A processor (transformers' `ProcessorMixin`: a tokenizer, an image processor, a chat
    template) as a `bot.prompts.PromptTokenizer`: text goes through its tokenizer, chat messages
    through its chat template with their contents as parts. Not thread-safe (the tokenizer is not)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self._tokenizer = processor.tokenizer

    @property
    def chat_template(self) -> Any:
        """The processor's template (None when it has none); not its tokenizer's."""
        return getattr(self.processor, "chat_template", None)

    @property
    def name_or_path(self) -> str:
        return str(getattr(self._tokenizer, "name_or_path", ""))

    def encode(self, text: str, **kwargs: Any) -> list[int]:
        return list(self._tokenizer.encode(text, **kwargs))

    def decode(self, token_ids: list[int], **kwargs: Any) -> Any:
        return self._tokenizer.decode(token_ids, **kwargs)

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> Any:
        """The processor's `apply_chat_template` on `conversation` with parts for contents; token
        ids come back as one flat list (the processor answers a batch of one)."""
        tokenize = bool(kwargs.get("tokenize", False))
        rendered = self.processor.apply_chat_template(text_parts(conversation), **kwargs)
        if tokenize and not kwargs.get("return_dict"):
            ids = list(rendered)
            return list(ids[0]) if ids and isinstance(ids[0], list | tuple) else ids
        return rendered


class ProcessorChatFormat(ChatTemplateFormat):
    """`ChatTemplateFormat` on a processor's chat template, keeping the fitted messages for the
    worker (see the module docstring). Takes the processor (a copy of its own: it tokenizes on the
    prompt side while the worker generates)."""

    keeps_messages = True

    def __init__(self, processor: Any) -> None:
        super().__init__(ProcessorTemplate(processor))
