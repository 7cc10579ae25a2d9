"""What a message's attachments become for the model: file texts, decoded images, and notices.

The contract is design.md §3 "Messages as people send them". Each attachment is one of two kinds:

- an image (the platform says so, an image/* type, or an image extension; SVG is text): without a
  vision model nothing is downloaded and the model reads `[image: NAME]`; with one it is downloaded
  up to `max_image_bytes` and decoded (`bot.attachment_images`);
- anything else is a candidate text file, judged by its content (`bot.attachment_text`): its first
  `max_text_bytes` become a `[file: NAME]` block, or a binary file gets a short notice.

Attachments are read concurrently (a download that hangs delays the others by nothing: each has
its own deadline in the adapter) and reported in their order. One that fails gets a notice and
the others are still read: nothing but cancellation escapes `read_attachments`.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Final

from bot.attachment_images import MAX_DECODED_PIXELS, TooManyPixels, UnreadableImage, decoded_image
from bot.attachment_text import text_of_file
from bot.config import ChatConfig
from bot.errors import AttachmentUnavailable
from bot.events import Attachment, Downloaded
from bot.ports import ImagePart
from bot.sizes import human_size, human_sizes

logger = logging.getLogger(__name__)

IMAGES_UNSEEN: Final = "I can't see images with this model, so I answered your words only."

_IMAGE_EXTENSIONS: Final = frozenset({"png", "jpg", "jpeg", "gif", "webp", "bmp"})
_MAX_NAME_CHARS: Final = 100
_MAX_KEPT_EXTENSION: Final = 10
_MAX_REASON_CHARS: Final = 200


@dataclass(frozen=True, slots=True)
class AttachmentLimits:
    """How much of a message's attachments is read (the `chat:` keys of the same meaning)."""

    max_text_bytes: int
    max_image_bytes: int
    max_image_side: int
    max_attachments: int

    @classmethod
    def from_config(cls, chat: ChatConfig) -> AttachmentLimits:
        return cls(
            max_text_bytes=chat.max_attachment_bytes,
            max_image_bytes=chat.max_image_bytes,
            max_image_side=chat.max_image_side,
            max_attachments=chat.max_attachments,
        )


@dataclass(frozen=True, slots=True)
class ReadAttachments:
    """What a message's attachments became.

    `attached` goes to `StoredMessage.attached` (see `bot.ports.with_attached`): the file blocks and
    image placeholders in attachment order, a blank line between; None when there is nothing.
    `images` are the decoded images (only when the model sees them). `notices` are short sentences
    for the user, told after the reply, in attachment order and without repeats."""

    attached: str | None
    images: tuple[ImagePart, ...]
    notices: tuple[str, ...]

    @property
    def readable(self) -> bool:
        """True when a file's text or a decoded image made it in (beyond the message's own text)."""
        # Exact: names never hold "[" (see `clean_name`), so "[file: " can only open a file block.
        return bool(self.images) or (self.attached is not None and "[file: " in self.attached)


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One attachment's part: a block for `attached`, a decoded image, notices."""

    block: str | None = None
    image: ImagePart | None = None
    notices: tuple[str, ...] = ()


async def read_attachments(
    attachments: Sequence[Attachment], limits: AttachmentLimits, *, see_images: bool
) -> ReadAttachments:
    """Read the first `limits.max_attachments` of `attachments` (see the module's docstring)."""
    chosen = list(attachments[: limits.max_attachments])
    outcomes = await asyncio.gather(*(_read_one(item, limits, see_images) for item in chosen))
    notices: list[str] = []
    if len(attachments) > len(chosen):
        notices.append(_not_all_read(len(attachments), len(chosen)))
    for outcome in outcomes:
        notices.extend(outcome.notices)
    blocks = [outcome.block for outcome in outcomes if outcome.block is not None]
    return ReadAttachments(
        attached="\n\n".join(blocks) or None,
        images=tuple(outcome.image for outcome in outcomes if outcome.image is not None),
        notices=tuple(dict.fromkeys(notices)),
    )


def clean_name(name: str) -> str:
    """A file name safe to show the model and the user: one line, no control or format characters
    (no bidi overrides), no brackets (they would close a `[file: NAME]` header), at most 100
    characters with the extension kept; "file" when nothing is left."""
    cleaned = _one_line(name).replace("[", "(").replace("]", ")")
    if len(cleaned) > _MAX_NAME_CHARS:
        suffix = PurePath(cleaned).suffix
        if len(suffix) > _MAX_KEPT_EXTENSION:
            suffix = ""
        cleaned = cleaned[: _MAX_NAME_CHARS - len(suffix) - 1] + "…" + suffix
    return cleaned or "file"


def is_image(attachment: Attachment) -> bool:
    """Whether `attachment` is read as an image (SVG is XML text, never an image here)."""
    mime_type = (attachment.mime_type or "").split(";", 1)[0].strip().lower()
    extension = PurePath(attachment.name).suffix.lower().lstrip(".")
    if mime_type == "image/svg+xml" or extension == "svg":
        return False
    return attachment.image or mime_type.startswith("image/") or extension in _IMAGE_EXTENSIONS


async def _read_one(attachment: Attachment, limits: AttachmentLimits, see_images: bool) -> _Outcome:
    name = clean_name(attachment.name)
    try:
        if not is_image(attachment):
            return await _read_text(attachment, name, limits)
        if not see_images:
            return _Outcome(block=_placeholder(name), notices=(IMAGES_UNSEEN,))
        return await _read_image(attachment, name, limits)
    except AttachmentUnavailable as error:
        return _Outcome(notices=(f"I couldn't download {name}: {_reason(error)}.",))
    except Exception as error:
        # One broken file must not cost the others. Only the type and the line reach the log: the
        # message of an error from a download may hold its URL, and a Telegram file URL the token.
        logger.error("reading an attachment failed: %s at %s", type(error).__name__, _where(error))
        return _Outcome(notices=(f"Something went wrong while I read {name}, so I left it out.",))


async def _read_text(attachment: Attachment, name: str, limits: AttachmentLimits) -> _Outcome:
    downloaded = await _download(attachment, limits.max_text_bytes)
    text = await asyncio.to_thread(text_of_file, downloaded.data, downloaded.complete)
    if text is None:
        return _Outcome(notices=(f"{name} isn't a text file, so I read only your message.",))
    if downloaded.complete:
        return _Outcome(block=f"[file: {name}]\n{text}\n[end of file]")
    limit = human_size(limits.max_text_bytes)
    return _Outcome(
        block=f"[file: {name}, first {limit}]\n{text}\n[end of file]",
        notices=(f"{name} is longer than {limit}: I read its first {limit}.",),
    )


async def _read_image(attachment: Attachment, name: str, limits: AttachmentLimits) -> _Outcome:
    limit = limits.max_image_bytes
    if attachment.size is not None and attachment.size > limit:
        return _Outcome(notices=(_too_large(name, attachment.size, limit),))  # never downloaded
    downloaded = await _download(attachment, limit)
    if not downloaded.complete:
        return _Outcome(notices=(_too_large(name, attachment.size, limit),))
    try:
        image = await asyncio.to_thread(decoded_image, downloaded.data, name, limits.max_image_side)
    except TooManyPixels as refused:
        return _Outcome(notices=(_too_many_pixels(name, refused),))
    except UnreadableImage:
        return _Outcome(notices=(f"I couldn't read {name} as an image.",))
    return _Outcome(block=_placeholder(name), image=image)


async def _download(attachment: Attachment, limit: int) -> Downloaded:
    """The download, held to `limit` even if an adapter's `Download` returned more."""
    downloaded = await attachment.download(limit)
    if len(downloaded.data) <= limit:
        return downloaded
    return Downloaded(downloaded.data[:limit], complete=False)


def _placeholder(name: str) -> str:
    return f"[image: {name}]"


def _too_large(name: str, size: int | None, limit: int) -> str:
    if size is None or size <= limit:  # the declared size was missing, or wrong
        return f"{name} is too large (the limit is {human_size(limit)})."
    shown_size, shown_limit = human_sizes(size, limit)
    return f"{name} is too large ({shown_size}; the limit is {shown_limit})."


def _too_many_pixels(name: str, refused: TooManyPixels) -> str:
    limit = f"the limit is {MAX_DECODED_PIXELS // 1_000_000} megapixels"
    if refused.width is None or refused.height is None:
        return f"{name} has too many pixels ({limit})."
    return f"{name} has too many pixels ({refused.width}×{refused.height}; {limit})."


def _not_all_read(sent: int, read: int) -> str:
    if read == 0:
        return "Reading attached files is turned off, so I read only your message."
    first = "the first one" if read == 1 else f"the first {read}"
    return f"You sent {sent} files; I read only {first}."


def _one_line(text: str) -> str:
    """`text` with control and format characters (newlines, NUL, bidi overrides) turned into
    spaces, runs of whitespace made one space, NFC."""
    characters = (" " if unicodedata.category(ch)[0] == "C" or ch in "\u2028\u2029" else ch for ch in text)
    return unicodedata.normalize("NFC", " ".join("".join(characters).split()))


def _reason(error: AttachmentUnavailable) -> str:
    reason = _one_line(str(error))[:_MAX_REASON_CHARS].rstrip(".")
    return reason or "no reason given"


def _where(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "an unknown place"
    return f"{PurePath(frames[-1].filename).name}:{frames[-1].lineno}"
