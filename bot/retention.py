"""`chat.retention_days`: messages older than that are deleted, at start-up and then hourly.

The repository deletes in small batches, each its own short transaction, so the purge never holds
the database's write lock for long (SQLite has one writer) and the bot keeps answering meanwhile.
A failed purge is logged and retried at the next hour; it never stops the bot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from bot.errors import StorageError
from bot.ports import Repository
from bot.quota import utc_now

logger = logging.getLogger(__name__)

PURGE_INTERVAL_S = 3600.0
PURGE_BATCH_SIZE = 500


class Retention:
    """Deletes messages older than `days` days (0 = keep forever)."""

    def __init__(
        self,
        repository: Repository,
        days: int,
        *,
        interval_s: float = PURGE_INTERVAL_S,
        batch_size: int = PURGE_BATCH_SIZE,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._repository = repository
        self._days = days
        self._interval_s = interval_s
        self._batch_size = batch_size
        self._clock = clock

    @property
    def enabled(self) -> bool:
        """True when a retention period is set."""
        return self._days > 0

    async def purge_once(self) -> int:
        """Delete what is older than the period now; returns how many messages went."""
        cutoff = self._clock() - timedelta(days=self._days)
        deleted = await self._repository.purge_older_than(cutoff, self._batch_size)
        if deleted:
            logger.info("retention: %d messages older than %d days deleted", deleted, self._days)
        return deleted

    async def run(self) -> None:
        """Purge now and every `interval_s` until cancelled."""
        while True:
            try:
                await self.purge_once()
            except StorageError as error:
                logger.warning("retention: the purge failed (%s); trying again later", error)
            await asyncio.sleep(self._interval_s)
