"""The durable update inbox the Telegram adapter commits to before confirming updates."""

from __future__ import annotations

from datetime import timedelta

from bot.ports import InboxItem
from storage.db import Database
from storage.inbox import UpdateInbox


async def test_updates_are_stored_once_and_come_back_pending_in_order(database: Database) -> None:
    inbox = UpdateInbox(database, "telegram")
    first = [InboxItem(12, {"update_id": 12, "text": "é"}), InboxItem(11, {"update_id": 11})]
    assert await inbox.add(first) == first
    # Redelivered (not yet confirmed) updates are not new; unseen ones are.
    assert await inbox.add([InboxItem(11, {"update_id": 11}), InboxItem(13, {"update_id": 13})]) == [
        InboxItem(13, {"update_id": 13})
    ]
    assert [item.update_id for item in await inbox.pending()] == [11, 12, 13]
    assert (await inbox.pending())[1].payload == {"update_id": 12, "text": "é"}


async def test_done_updates_are_not_pending_nor_new_again(database: Database) -> None:
    inbox = UpdateInbox(database, "telegram")
    await inbox.add([InboxItem(1, {}), InboxItem(2, {})])
    await inbox.mark_done(1)
    assert await inbox.state(1) == "done"
    assert await inbox.state(99) is None
    assert [item.update_id for item in await inbox.pending()] == [2]
    assert await inbox.add([InboxItem(1, {})]) == []
    assert await inbox.state(1) == "done"


async def test_platforms_are_separate_and_pruning_keeps_pending_rows(database: Database) -> None:
    telegram, other = UpdateInbox(database, "telegram"), UpdateInbox(database, "other")
    await telegram.add([InboxItem(1, {}), InboxItem(2, {})])
    assert await other.add([InboxItem(1, {})]) == [InboxItem(1, {})]
    await telegram.mark_done(1)
    assert await telegram.prune(timedelta(days=1)) == 0  # too recent
    assert await telegram.prune(timedelta(0)) == 1
    assert [item.update_id for item in await telegram.pending()] == [2]
    assert [item.update_id for item in await other.pending()] == [1]
