"""Discord attachments, fetched from their URLs: one HTTP client per adapter, streamed downloads.

The engine reads an attachment only when it needs it (`bot.events.Download`), at most the limit it
asks for. discord.py's `Attachment.read()` would read the whole file into memory whatever its
size, so the adapter streams the URL itself with `adapters.downloads.download_start` (which stops
at the limit and has one deadline for the whole download). Attachment URLs are signed and
short-lived: they are never logged, nor kept in a `repr`. No credentials are sent: Discord's CDN
needs none, and the bot token must not reach any other host.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from adapters.downloads import download_start
from bot.events import Download, Downloaded


class AttachmentFetcher:
    """Owns the adapter's HTTP client for attachments; `download(url)` gives a file's `Download`."""

    def __init__(self, timeout_s: float) -> None:
        """`timeout_s` (`chat.attachment_timeout_s`) bounds each whole download."""
        self._timeout_s = timeout_s
        # The deadline of `download_start` covers the whole download; httpx's own timeouts only
        # keep a single stalled read from outliving it.
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), follow_redirects=True)

    def download(self, url: str) -> Download:
        """The lazy download of the file at `url` (nothing is fetched until it is called)."""
        return _UrlDownload(self, url)

    async def fetch(self, url: str, limit: int) -> Downloaded:
        """At most `limit` bytes of the file at `url`. Raises `AttachmentUnavailable` (also once
        the adapter stopped: a reply still reading a file then says the file was unavailable)."""
        return await download_start(self._client, url, limit, self._timeout_s)

    async def aclose(self) -> None:
        """Close the HTTP client (idempotent)."""
        await self._client.aclose()


@dataclass(frozen=True, slots=True)
class _UrlDownload:
    """A `bot.events.Download` of one attachment URL."""

    fetcher: AttachmentFetcher
    url: str = field(repr=False)  # signed: not for logs

    async def __call__(self, limit: int) -> Downloaded:
        return await self.fetcher.fetch(self.url, limit)
