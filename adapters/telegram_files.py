"""Telegram files as attachments: which file of a message to offer, and how it is fetched.

A document is offered as sent (its name, its MIME type, its size; an image when that type is
image/*: a picture sent uncompressed, as a file). A photo arrives as several sizes of one picture:
the largest whose declared size fits `chat.max_image_bytes` is offered, else the smallest (the
core then refuses it by its size, before any download).

Nothing is downloaded until the engine asks: a `TelegramFileDownload` calls getFile (file_id ->
file_path) and streams `{base_file_url}/{file_path}` with `adapters.downloads.download_start`
through the adapter's one HTTP client, getFile and download within one deadline
(`chat.attachment_timeout_s`). The file URL holds the bot's token: it is never logged nor put in
an error, and errors are logged by type only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx
from telegram import Bot, File, Message, PhotoSize
from telegram.error import BadRequest, TelegramError

from adapters.downloads import SHUTTING_DOWN, download_start
from bot.errors import AttachmentUnavailable
from bot.events import Attachment, Download, Downloaded

logger = logging.getLogger(__name__)

FileDownloads = Callable[[str], Download]
"""The lazy download of a Telegram file, given its file_id."""

PHOTO_NAME = "photo.jpg"
PHOTO_MIME_TYPE = "image/jpeg"  # Telegram re-encodes every photo as a JPEG
DOCUMENT_NAME = "file"  # a document sent without a file name

Requester = Callable[[Callable[[], Awaitable[File]]], Awaitable[File]]
"""Runs one Bot API call under the adapter's retry policy (429s waited out, network errors retried)."""


@dataclass(frozen=True, slots=True)
class _NoDownload:
    async def __call__(self, limit: int) -> Downloaded:
        raise AttachmentUnavailable("files cannot be downloaded here")


def no_downloads(file_id: str) -> Download:
    """A `FileDownloads` that fetches nothing (for converting updates where no bot runs)."""
    return _NoDownload()


def file_base_url(base_url: str) -> str | None:
    """The file URL base that goes with a Bot API base URL, as Telegram and its local server lay
    them out: `http://HOST/bot` -> `http://HOST/file/bot` (a `{token}` placeholder after `bot` is
    kept). None when `base_url` does not end in such a `/bot` segment (the library's default
    file URL is kept then)."""
    head, separator, tail = base_url.rpartition("/bot")
    if not separator or tail not in ("", "{token}"):
        return None
    return f"{head}/file/bot{tail}"


def attachments_of(message: Message, files: FileDownloads, max_image_bytes: int) -> tuple[Attachment, ...]:
    """The files a message carries: its document, or its photo (one size of it, see the module)."""
    attachments: list[Attachment] = []
    document = message.document
    if document is not None:
        mime_type = document.mime_type or None
        attachments.append(
            Attachment(
                name=document.file_name or DOCUMENT_NAME,
                mime_type=mime_type,
                size=document.file_size,
                image=mime_type is not None and mime_type.lower().startswith("image/"),
                download=files(document.file_id),
            )
        )
    if message.photo:
        photo = choose_photo_size(message.photo, max_image_bytes)
        attachments.append(
            Attachment(
                name=PHOTO_NAME,
                mime_type=PHOTO_MIME_TYPE,
                size=photo.file_size,
                image=True,
                download=files(photo.file_id),
            )
        )
    return tuple(attachments)


def choose_photo_size(sizes: Sequence[PhotoSize], max_image_bytes: int) -> PhotoSize:
    """The largest size (by pixels) whose `file_size` is at most `max_image_bytes`; a size that
    declares none counts as fitting (the download enforces the limit anyway). When none fits, the
    smallest: the core refuses it by its declared size without downloading it."""
    if not sizes:
        raise ValueError("a photo has at least one size")

    def pixels(size: PhotoSize) -> int:
        return size.width * size.height

    fitting = [size for size in sizes if size.file_size is None or size.file_size <= max_image_bytes]
    if fitting:
        return max(fitting, key=pixels)
    return min(sizes, key=pixels)


@dataclass(frozen=True, slots=True)
class TelegramFiles:
    """Where the adapter's downloads come from: its bot (getFile and `base_file_url`), its HTTP
    client (shared, closed by the adapter at shutdown) and the deadline of one download."""

    bot: Bot
    client: httpx.AsyncClient
    timeout_s: float
    requester: Requester

    def download(self, file_id: str) -> Download:
        """The lazy download of `file_id` (a `FileDownloads`)."""
        return TelegramFileDownload(self, file_id)


@dataclass(frozen=True, slots=True)
class TelegramFileDownload:
    """getFile, then the file's first bytes streamed from Telegram's file URL (a `Download`)."""

    files: TelegramFiles
    file_id: str

    async def __call__(self, limit: int) -> Downloaded:
        """At most `limit` bytes of the file; `AttachmentUnavailable` with a reason a user may
        read when Telegram refuses the file (over 20 MB), the deadline passes or the download fails."""
        files = self.files
        if files.client.is_closed:  # before getFile: nothing to ask Telegram for
            raise AttachmentUnavailable(SHUTTING_DOWN)
        try:
            # One deadline for both: the download's own (as long) cannot pass before this one.
            async with asyncio.timeout(files.timeout_s):
                url = await self._file_url()
                return await download_start(files.client, url, limit, files.timeout_s)
        except TimeoutError:
            raise AttachmentUnavailable(f"the file did not arrive within {files.timeout_s:g} s") from None

    async def _file_url(self) -> str:
        """The file's download URL (it holds the token: never log it)."""
        bot = self.files.bot
        try:
            found = await self.files.requester(lambda: bot.get_file(self.file_id))
        except BadRequest as error:
            logger.info("telegram: getFile refused a file (%s)", type(error).__name__)
            if "too big" in error.message.lower():
                raise AttachmentUnavailable(
                    "Telegram lets bots download files of up to 20 MB, and this one is larger"
                ) from None
            raise AttachmentUnavailable("Telegram refused to hand out the file") from None
        except TelegramError as error:
            logger.info("telegram: getFile failed (%s)", type(error).__name__)
            raise AttachmentUnavailable("Telegram could not be reached for the file") from None
        path = found.file_path
        if not path:
            raise AttachmentUnavailable("Telegram gave no path for the file")
        # `Bot.get_file` turns the path into the whole URL, unless the path happens to name a file
        # on this machine (its local-server mode): then the URL is built here.
        base = bot.base_file_url
        return path if path.startswith(base) else f"{base}/{path.lstrip('/')}"
