"""Files sent with a chat API message: `{"name", "type", "data"}` objects with base64 data.

The bytes arrive inside the request body, so an attachment's `Download` only hands back what was
received: at most the limit the engine asks for, `complete` False when the file is longer (the
same answer a streamed platform download gives). The request body's own cap
(`web.max_upload_bytes`, adapters/web_http.py `BodySizeLimit`) bounds what a request can carry
before any of this runs.

Checks that need the content (base64 that does not decode, a name that is empty once cleaned, a
type that is not a MIME type) raise `BadAttachment`, which the route answers with 400; the JSON
shape itself (a missing field, a number where a string belongs) is pydantic's 422, as everywhere in
the chat API.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from bot.events import Attachment, Downloaded

MAX_NAME_CHARS = 255
# type/subtype as RFC 6838 allows them (parameters such as "; charset=utf-8" are cut off first).
_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")


class AttachmentIn(BaseModel):
    """One file of `POST /api/channels/{id}/messages`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=1024, description="the file's name, e.g. notes.txt")
    type: str | None = Field(
        default=None, max_length=255, description="its MIME type, e.g. text/plain or image/png; may be empty"
    )
    data: str = Field(description="its bytes, base64 (standard alphabet, padded)")


class BadAttachment(ValueError):
    """An attachment the request cannot carry; the message says which one and why (never its data)."""


@dataclass(frozen=True, slots=True)
class ReceivedFile:
    """The `Download` of a file that came with the request: its bytes are here already."""

    data: bytes = field(repr=False)

    async def __call__(self, limit: int) -> Downloaded:
        if limit < 0:
            raise ValueError("limit must not be negative")
        return Downloaded(self.data[:limit], complete=len(self.data) <= limit)


def clean_name(raw: str) -> str:
    """The name as shown and as the model reads it: the last path component (a client may send
    `C:\\fakepath\\x.txt` or `../../x.txt`), without control characters, at most 255 characters."""
    last = re.split(r"[\\/]", raw)[-1]
    printable = "".join(ch for ch in last if unicodedata.category(ch)[0] != "C")
    return printable.strip()[:MAX_NAME_CHARS]


def clean_type(raw: str | None) -> str | None:
    """The MIME type without parameters, lower case; None when not given. Raises `ValueError`
    when it is not shaped like one."""
    if raw is None or not raw.strip():
        return None
    essence = raw.split(";", 1)[0].strip().lower()
    if not _MIME_TYPE.fullmatch(essence):
        raise ValueError("not a MIME type such as text/plain or image/png")
    return essence


def decode_data(raw: str) -> bytes:
    """Base64 (standard alphabet, padded; line breaks allowed) to bytes. Raises `ValueError`."""
    try:
        return base64.b64decode("".join(raw.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("data is not valid base64") from None


def to_attachments(files: Sequence[AttachmentIn], max_count: int) -> tuple[Attachment, ...]:
    """The engine's `Attachment`s of a request's files. Raises `BadAttachment` for more than
    `max_count` files or for one that fails a check above."""
    if len(files) > max_count:
        allowed = f"at most {max_count} files per message" if max_count else "attachments are switched off"
        raise BadAttachment(f"too many attachments ({len(files)}): {allowed}")
    attachments: list[Attachment] = []
    for index, item in enumerate(files):
        where = f"attachments[{index}]"
        name = clean_name(item.name)
        if not name:
            raise BadAttachment(f"{where}.name: the file needs a name")
        try:
            mime_type = clean_type(item.type)
        except ValueError as error:
            raise BadAttachment(f"{where}.type: {error}") from None
        try:
            data = decode_data(item.data)
        except ValueError as error:
            raise BadAttachment(f"{where} ({name}): {error}") from None
        attachments.append(
            Attachment(
                name=name,
                mime_type=mime_type,
                size=len(data),
                image=mime_type is not None and mime_type.startswith("image/"),
                download=ReceivedFile(data),
            )
        )
    return tuple(attachments)
