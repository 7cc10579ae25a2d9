"""How the engine words what happened to a message's attachments (see `bot.attachments`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from bot.attachments import IMAGES_UNSEEN, ReadAttachments

NO_ATTACHMENTS: Final = ReadAttachments(attached=None, images=(), notices=())

IMAGES_ONLY_UNSEEN: Final = "I can't see images with this model: tell me in words what you'd like to know."
"""Said instead of `IMAGES_UNSEEN` when a message held images and no words at all."""


def notices_text(notices: Sequence[str]) -> str:
    """The notices as they follow a reply: one parenthesised paragraph."""
    return "\n\n(" + " ".join(notices) + ")"


def without_text(notices: Sequence[str]) -> str:
    """The whole reply to a message with no words and nothing readable attached: why ("" when
    nothing was attached)."""
    return " ".join(IMAGES_ONLY_UNSEEN if notice == IMAGES_UNSEEN else notice for notice in notices)
