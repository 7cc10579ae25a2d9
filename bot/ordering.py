"""Per-channel ordering of the engine's work, reset epochs, and the tasks `close` drains.

Work queued for a channel runs strictly in the order it was queued; different channels proceed
concurrently. Each channel's queue is only the future of its latest queued job (its "tail"): a new
job waits for it, so there is no long-lived task per channel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from bot.errors import ChinwagError

T = TypeVar("T")


class Slot:
    """A queued job's place in its channels' queues (one channel, or two for a move)."""

    def __init__(
        self, previous: list[asyncio.Future[None]], epochs: dict[str, int], current: Callable[[str], int]
    ) -> None:
        self._previous = previous
        self._epochs = epochs
        self._current = current
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def turn(self) -> None:
        """Wait until every job queued before this one in its channels has finished."""
        for tail in self._previous:
            # shield: cancelling this job must not cancel the predecessor's future.
            await asyncio.shield(tail)

    @property
    def superseded(self) -> bool:
        """True when one of its channels was reset after this job was queued (its history is gone)."""
        return any(self._current(key) != epoch for key, epoch in self._epochs.items())


class ChannelOrder:
    """Runs jobs in order per channel, counts resets, and keeps every task for `close`."""

    def __init__(self) -> None:
        # channel key -> future done when that channel's latest queued job is finished.
        self._tails: dict[str, asyncio.Future[None]] = {}
        # channel key -> how many resets it had: see `Slot.superseded`.
        self._epochs: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    @property
    def in_flight(self) -> int:
        """Jobs and tasks not finished yet (waiting for their turn or running)."""
        return len(self._tasks)

    def ensure_open(self) -> None:
        """Raise `ChinwagError` once `close` was called."""
        if self._closing:
            raise ChinwagError("the engine is shutting down")

    def epoch(self, key: str) -> int:
        """How many resets channel `key` had."""
        return self._epochs.get(key, 0)

    def reset(self, key: str) -> None:
        """Channel `key` is being reset now: jobs queued for it before this call are superseded."""
        self._epochs[key] = self.epoch(key) + 1

    def queue(
        self, keys: tuple[str, ...], job: Callable[[Slot], Coroutine[Any, Any, T]], *, name: str
    ) -> asyncio.Task[T]:
        """Queue `job` behind everything queued for any of `keys`; later jobs of those channels
        wait for it. `job` must `await slot.turn()` before its ordered work (inside its own error
        handling, so that it can answer when cancelled while waiting); its slot is released when
        it returns or raises. Raises `ChinwagError` when closing."""
        self.ensure_open()
        previous = [tail for tail in dict.fromkeys(self._tails.get(key) for key in keys) if tail is not None]
        slot = Slot(previous, {key: self.epoch(key) for key in keys}, self.epoch)
        for key in keys:
            self._tails[key] = slot.done

        async def run() -> T:
            try:
                return await job(slot)
            finally:
                slot.done.set_result(None)
                for key in keys:
                    if self._tails.get(key) is slot.done:
                        del self._tails[key]

        return self.start(run(), name=name)

    def start(self, work: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """Run `work` now, outside any channel's order, kept for `close`."""
        task = asyncio.create_task(work, name=name)
        # A reference: the loop holds tasks weakly.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(
        self, grace_s: float, *, cut: Callable[[], None] | None = None, settle_s: float = 0.0
    ) -> None:
        """Refuse new jobs; let running ones finish for `grace_s`. Then, when some still run: call
        `cut` (it asks them to end early) and give them `settle_s` more; cancel the rest and wait."""
        self._closing = True
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
        if pending and cut is not None:
            cut()
            _, pending = await asyncio.wait(pending, timeout=settle_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
