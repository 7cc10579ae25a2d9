"""The durable inbox of platform updates: committed before the platform is told they arrived.

A poller `add`s every update it received and only then confirms them to the platform; a consumer
handles the `pending` rows and marks each `done` once its reply was sent. After a crash the pending
rows are handled again, and an update delivered twice (received again before it was confirmed) is
stored once thanks to UNIQUE(platform, update_id).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Connection,
    CursorResult,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    delete,
    select,
)
from sqlalchemy import text as sql_text
from sqlalchemy import update as sql_update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

from bot.ports import InboxItem, InboxState
from storage.db import Database
from storage.models import Base, UTCDateTime, utcnow


class InboundUpdate(Base):
    """One update received from a platform, as its raw JSON."""

    __tablename__ = "inbound_updates"
    __table_args__ = (
        UniqueConstraint("platform", "update_id", name="uq_inbound_updates_platform_update_id"),
        # "The pending rows of a platform, in arrival order" reads this index only.
        Index("ix_inbound_updates_platform_state_update_id", "platform", "state", "update_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String)
    update_id: Mapped[int] = mapped_column(BigInteger)
    payload: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, server_default=sql_text("CURRENT_TIMESTAMP")
    )


class UpdateInbox:  # implements bot.ports.UpdateInbox
    """The inbox rows of one platform on a `Database`. Every method is one short transaction and
    raises `StorageError` when the database fails."""

    def __init__(self, database: Database, platform: str) -> None:
        self._database = database
        self._platform = platform

    async def add(self, items: Sequence[InboxItem]) -> list[InboxItem]:
        """Store `items` as pending in one transaction; return those that were new (in the given
        order). An update already stored (pending or done) is left as it is."""
        if not items:
            return []
        insert_factory = postgresql.insert if self._database.dialect_name == "postgresql" else sqlite.insert

        def insert_new(connection: Connection) -> set[int]:
            added: set[int] = set()
            for item in items:
                statement = (
                    insert_factory(InboundUpdate)
                    .values(
                        platform=self._platform,
                        update_id=item.update_id,
                        payload=json.dumps(item.payload, ensure_ascii=False),
                        state="pending",
                    )
                    .on_conflict_do_nothing(index_elements=[InboundUpdate.platform, InboundUpdate.update_id])
                    .returning(InboundUpdate.update_id)
                )
                if connection.scalar(statement) is not None:
                    added.add(item.update_id)
            return added

        added = await self._database.run_write(insert_new)
        return [item for item in items if item.update_id in added]

    async def pending(self) -> list[InboxItem]:
        """Every pending update, oldest update id first."""
        query = (
            select(InboundUpdate.update_id, InboundUpdate.payload)
            .where(InboundUpdate.platform == self._platform, InboundUpdate.state == "pending")
            .order_by(InboundUpdate.update_id)
        )
        rows = await self._database.run_read(lambda connection: connection.execute(query).all())
        return [InboxItem(row.update_id, json.loads(row.payload)) for row in rows]

    async def mark_done(self, update_id: int) -> None:
        """Record that `update_id` was handled (its reply sent, or nothing to answer)."""
        statement = (
            sql_update(InboundUpdate)
            .where(InboundUpdate.platform == self._platform, InboundUpdate.update_id == update_id)
            .values(state="done")
        )
        await self._database.run_write(lambda connection: connection.execute(statement))

    async def state(self, update_id: int) -> InboxState | None:
        """The row's state; None when the update was never stored."""
        query = select(InboundUpdate.state).where(
            InboundUpdate.platform == self._platform, InboundUpdate.update_id == update_id
        )
        found = await self._database.run_read(lambda connection: connection.scalar(query))
        return cast(InboxState | None, found)

    async def prune(self, older_than: timedelta) -> int:
        """Delete done rows received more than `older_than` ago; returns how many.

        A done row only guards against a redelivery of an update that was never confirmed, and
        platforms forget unconfirmed updates within a day (Telegram: 24 h)."""
        statement = delete(InboundUpdate).where(
            InboundUpdate.platform == self._platform,
            InboundUpdate.state == "done",
            InboundUpdate.created_at < utcnow() - older_than,
        )

        def delete_done(connection: Connection) -> int:
            result = connection.execute(statement)
            return cast("CursorResult[Any]", result).rowcount

        return await self._database.run_write(delete_done)
