"""What a message's attachments become for the model (provisional: superseded by the attach branch)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import charset_normalizer
from PIL import Image, ImageOps

from bot.config import ChatConfig
from bot.errors import AttachmentUnavailable
from bot.events import Attachment
from bot.ports import ImagePart
from bot.sanitize import sanitize_text

IMAGES_UNSEEN: Final = "I can't see images with this model, so I answered your words only."


@dataclass(frozen=True, slots=True)
class AttachmentLimits:
    max_text_bytes: int
    max_image_bytes: int
    max_image_side: int
    max_attachments: int

    @classmethod
    def from_config(cls, chat: ChatConfig) -> AttachmentLimits:
        return cls(chat.max_attachment_bytes, chat.max_image_bytes, chat.max_image_side, chat.max_attachments)


@dataclass(frozen=True, slots=True)
class ReadAttachments:
    attached: str | None
    images: tuple[ImagePart, ...]
    notices: tuple[str, ...]
    readable: bool = False


def _is_image(attachment: Attachment) -> bool:
    return attachment.image or (attachment.mime_type or "").startswith("image/")


def _decode_image(name: str, data: bytes, side: int) -> ImagePart:
    with Image.open(io.BytesIO(data)) as image:
        image.seek(0)
        frame = ImageOps.exif_transpose(image).convert("RGB")
    frame.thumbnail((side, side))
    out = io.BytesIO()
    frame.save(out, "JPEG", quality=85)
    return ImagePart(name, "image/jpeg", out.getvalue(), frame.width, frame.height)


async def read_attachments(
    attachments: Sequence[Attachment], limits: AttachmentLimits, *, see_images: bool
) -> ReadAttachments:
    blocks: list[str] = []
    images: list[ImagePart] = []
    notices: list[str] = []
    readable = False
    for attachment in attachments[: limits.max_attachments]:
        name = attachment.name
        try:
            if _is_image(attachment):
                blocks.append(f"[image: {name}]")
                if not see_images:
                    if IMAGES_UNSEEN not in notices:
                        notices.append(IMAGES_UNSEEN)
                    continue
                got = await attachment.download(limits.max_image_bytes)
                images.append(await asyncio.to_thread(_decode_image, name, got.data, limits.max_image_side))
                readable = True
                continue
            got = await attachment.download(limits.max_text_bytes)
            best = charset_normalizer.from_bytes(got.data).best()
            if b"\x00" in got.data[:4096] or best is None:
                notices.append(f"{name} isn't a text file, so I read only your message.")
                continue
            blocks.append(f"[file: {name}]\n{sanitize_text(str(best))}\n[end of file]")
            readable = True
        except AttachmentUnavailable as error:
            notices.append(f"I couldn't download {name}: {error}.")
        except OSError:
            notices.append(f"I couldn't read {name} as an image.")
    return ReadAttachments("\n\n".join(blocks) or None, tuple(images), tuple(notices), readable)
