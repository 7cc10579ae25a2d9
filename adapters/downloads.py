"""Streamed, bounded downloads of attachments (Telegram files, Discord attachment URLs).

A file is read chunk by chunk and the download stops at the limit the engine asks for, so a 2 GB
file costs at most that limit in memory. The whole download (connect, headers, every chunk) has
one deadline: a server that hangs or trickles gets `AttachmentUnavailable` when it passes. The URL
is never logged nor put in an error: a Telegram file URL carries the bot's token.

The limit counts the bytes on the wire, which are the file's bytes: the request asks for no
compression (`Accept-Encoding: identity`) and the body is read raw. A compressed body would be
decompressed a network read at a time with no bound on the output: a 200 KB gzip response of
zeros took 270 MB to read "256 KB" of it. A server that compresses anyway gets refused.
"""

from __future__ import annotations

import asyncio
import logging

import httpx

from bot.errors import AttachmentUnavailable
from bot.events import Downloaded

logger = logging.getLogger(__name__)

SHUTTING_DOWN = "the bot is shutting down"
_CHUNK_BYTES = 64 * 1024
_UNCOMPRESSED = {"Accept-Encoding": "identity"}


async def download_start(client: httpx.AsyncClient, url: str, limit: int, timeout_s: float) -> Downloaded:
    """At most `limit` bytes from the start of the file at `url` (see `Downloaded`).

    Raises `AttachmentUnavailable` on a timeout (`timeout_s` for the whole download), an HTTP
    error status, a broken connection, or a client closed before or during the download (the
    adapter stopped while a reply was still reading a file)."""
    if limit < 0:
        raise ValueError("limit must not be negative")
    if client.is_closed:
        raise AttachmentUnavailable(SHUTTING_DOWN)
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_start(client, url, limit)
    except TimeoutError:
        raise AttachmentUnavailable(f"the download did not finish within {timeout_s:g} s") from None
    except RuntimeError:
        # httpx's answer to a client closed while the download ran.
        if not client.is_closed:
            raise
        raise AttachmentUnavailable(SHUTTING_DOWN) from None
    except httpx.HTTPStatusError as error:
        raise AttachmentUnavailable(f"the server answered {error.response.status_code}") from None
    except httpx.HTTPError as error:
        # The exception's text may hold the URL: only its type reaches the log and the user.
        logger.info("attachment download failed: %s", type(error).__name__)
        raise AttachmentUnavailable("the connection failed") from None


async def _read_start(client: httpx.AsyncClient, url: str, limit: int) -> Downloaded:
    chunks: list[bytes] = []
    received = 0
    async with client.stream("GET", url, headers=_UNCOMPRESSED, follow_redirects=True) as response:
        response.raise_for_status()
        if response.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
            raise AttachmentUnavailable("the server sent the file compressed")
        async for chunk in response.aiter_raw(_CHUNK_BYTES):
            room = limit - received
            if len(chunk) > room:
                # A byte past the limit: the file is longer. Leaving the block closes the
                # stream, so the rest is never read. Only what fits is kept: joined once below,
                # the data costs twice the limit at its peak, not three times.
                chunks.append(chunk[:room])
                return Downloaded(b"".join(chunks), complete=False)
            chunks.append(chunk)
            received += len(chunk)
    return Downloaded(b"".join(chunks), complete=True)
