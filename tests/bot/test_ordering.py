"""`ChannelOrder` on its own: per-channel FIFO, reset epochs, cancellation while queued, close."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from bot.errors import ChinwagError
from bot.ordering import ChannelOrder, Slot

Job = Callable[[Slot], Coroutine[Any, Any, None]]


async def test_jobs_of_a_channel_run_in_order_and_other_channels_do_not_wait() -> None:
    order = ChannelOrder()
    gate = asyncio.Event()
    ran: list[str] = []

    def job(name: str, wait: asyncio.Event | None = None) -> Job:
        async def run(slot: Slot) -> None:
            await slot.turn()
            if wait is not None:
                await wait.wait()
            ran.append(name)

        return run

    first = order.queue(("a",), job("a1", gate), name="a1")
    second = order.queue(("a",), job("a2"), name="a2")
    await order.queue(("b",), job("b1"), name="b1")  # finishes while a1 is held
    assert ran == ["b1"] and not second.done()
    gate.set()
    await asyncio.gather(first, second)
    assert ran == ["b1", "a1", "a2"]
    assert order.in_flight == 0


async def test_a_reset_supersedes_what_was_queued_before_it_only() -> None:
    order = ChannelOrder()
    seen: dict[str, bool] = {}

    def job(name: str) -> Job:
        async def run(slot: Slot) -> None:
            await slot.turn()
            seen[name] = slot.superseded

        return run

    before = order.queue(("a",), job("before"), name="before")
    order.reset("a")
    after = order.queue(("a",), job("after"), name="after")
    await asyncio.gather(before, after)
    assert seen == {"before": True, "after": False}


async def test_a_job_cancelled_while_queued_does_not_block_its_channel() -> None:
    order = ChannelOrder()
    gate = asyncio.Event()
    ran: list[str] = []

    async def held(slot: Slot) -> None:
        await slot.turn()
        await gate.wait()
        ran.append("held")

    async def queued(slot: Slot) -> None:
        await slot.turn()
        ran.append("queued")

    first = order.queue(("a",), held, name="held")
    cancelled = order.queue(("a",), queued, name="cancelled")
    last = order.queue(("a",), queued, name="last")
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    gate.set()
    await asyncio.gather(first, last)
    assert sorted(ran) == ["held", "queued"]  # the cancelled one never ran; the last one did


async def test_close_cancels_what_outlives_the_grace_and_refuses_new_jobs() -> None:
    order = ChannelOrder()

    async def forever(slot: Slot) -> None:
        await slot.turn()
        await asyncio.Event().wait()

    task = order.queue(("a",), forever, name="forever")
    await order.close(grace_s=0.01)
    assert task.cancelled()
    with pytest.raises(ChinwagError):
        order.queue(("a",), forever, name="refused")
