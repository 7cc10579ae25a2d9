"""The chat adapters' one retry loop for a platform API call (429s and transient failures).

The platform decides per error what to do (`RetryDelay`): wait out a rate limit for the time the
platform asks, back off exponentially (`bot.backoff.Backoff`) after a connection failure, or raise
(a refused request; a timeout, where the message may have arrived and a retry would post it twice).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

_T = TypeVar("_T")

RetryDelay = Callable[[Exception, int], Awaitable[float | None]]
"""For a failed attempt (numbered from 1): the seconds to wait before trying again, or None to
raise the error. May act before the next try (e.g. follow a migrated chat)."""


async def call_with_retries(
    call: Callable[[], Awaitable[_T]], retry_delay: RetryDelay, *, attempts: int
) -> _T:
    """`call()`, tried at most `attempts` times as `retry_delay` says; the last error is raised."""
    for attempt in range(1, attempts):
        try:
            return await call()
        except Exception as error:
            delay = await retry_delay(error, attempt)
            if delay is None:
                raise
            if delay > 0:
                await asyncio.sleep(delay)
    return await call()
