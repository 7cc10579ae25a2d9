"""Per-channel ordered workers: one task per channel handles that channel's jobs one by one."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
J = TypeVar("J")

Handle = Callable[[K, J], Awaitable[bool]]
"""Handles one job of a channel; False leaves the job queued and ends that channel's worker
(shutting down: the job stays for the next start)."""


class ChannelWorkers(Generic[K, J]):
    """Queues jobs per channel; a task per busy channel runs `handle` on them strictly in order.

    A worker exists only while its channel has jobs. A job whose handling raises is logged and
    dropped: one job that cannot be handled must not block its channel.
    """

    def __init__(self, handle: Handle[K, J], *, name: str) -> None:
        self._handle = handle
        self._name = name
        self._queues: dict[K, deque[J]] = {}
        self._workers: dict[K, asyncio.Task[None]] = {}

    def put(self, channel: K, job: J) -> None:
        """Queue `job` behind `channel`'s earlier jobs, starting its worker when it has none."""
        self._queues.setdefault(channel, deque()).append(job)
        if channel not in self._workers:
            self._workers[channel] = asyncio.create_task(
                self._work(channel), name=f"chinwag:{self._name}:{channel}"
            )

    async def drain(self, timeout_s: float) -> None:
        """Let the running workers finish for up to `timeout_s`, cancel the rest, forget every
        queued job."""
        workers = set(self._workers.values())
        if workers:
            _, late = await asyncio.wait(workers, timeout=timeout_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        self._workers.clear()
        self._queues.clear()

    async def _work(self, channel: K) -> None:
        queue = self._queues[channel]
        try:
            while queue:
                try:
                    if not await self._handle(channel, queue[0]):
                        return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("%s: could not handle a job in %s", self._name, channel)
                queue.popleft()
        finally:
            if self._workers.get(channel) is asyncio.current_task():
                del self._workers[channel]
            if not queue and self._queues.get(channel) is queue:
                del self._queues[channel]
