"""A member's stored data across channels (/forget, the export) and the retention purge."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Delete, Select, delete, func, select
from sqlalchemy.sql.dml import ReturningDelete

from bot.ports import Forgotten, MemberMessage
from storage.db import Database
from storage.messages import message_columns, stored_message
from storage.models import Channel, Message
from storage.usage import delete_days_before, forget_user_name


def purge_candidates(cutoff: datetime, batch_size: int, max_id: int) -> Select[int]:
    """The ids of one purge batch: the `batch_size` oldest messages created before `cutoff`,
    among those with ids up to `max_id` (the newest message when the purge began).

    A range scan of the created_at index from its start, which stops after `batch_size` rows:
    no full scan, however big the table (ordered by created_at so that the index is the plan)."""
    return (
        select(Message.id)
        .where(Message.created_at < cutoff, Message.id <= max_id)
        .order_by(Message.created_at)
        .limit(batch_size)
    )


def purge_batch_statement(cutoff: datetime, batch_size: int, max_id: int) -> Delete:
    """One purge batch: `purge_candidates`, then those rows by primary key, in one statement."""
    return delete(Message).where(
        Message.id.in_(purge_candidates(cutoff, batch_size, max_id).scalar_subquery())
    )


def forget_statement(platform: str, member_id: str) -> ReturningDelete[int]:
    """Delete the member's messages in the platform's channels, returning each one's channel.

    The member_id index finds the member's rows in every channel. RETURNING names the channels of
    exactly the rows deleted (a SELECT before the DELETE could miss a message stored in between,
    on PostgreSQL)."""
    platform_channels = select(Channel.id).where(Channel.platform == platform)
    return (
        delete(Message)
        .where(Message.member_id == member_id, Message.channel_id.in_(platform_channels))
        .returning(Message.channel_id)
    )


def member_messages_query(platform: str, member_id: str) -> Select[Any]:
    """The member's messages on the platform with their channel's external id (the member_id
    index, then each row's channel)."""
    return (
        message_columns()
        .add_columns(Channel.external_id)
        .join(Channel, Channel.id == Message.channel_id)
        .where(Message.member_id == member_id, Channel.platform == platform)
    )


class MemberData:
    """The queries that span channels, on a `Database`."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def forget_member(self, platform: str, member_id: str) -> Forgotten:
        """See `Repository.forget_member`."""
        statement = forget_statement(platform, member_id)

        def forget(connection: Connection) -> tuple[int, list[str]]:
            channel_ids = connection.scalars(statement).all()
            external_ids: list[str] = []
            if channel_ids:
                external_ids = list(
                    connection.scalars(select(Channel.external_id).where(Channel.id.in_(set(channel_ids))))
                )
            forget_user_name(connection, f"{platform}:{member_id}")
            return len(channel_ids), external_ids

        deleted, external_ids = await self._database.run_write(forget)
        return Forgotten(deleted, tuple(sorted(f"{platform}:{external_id}" for external_id in external_ids)))

    async def purge_older_than(self, cutoff: datetime, batch_size: int = 500) -> int:
        """See `Repository.purge_older_than`.

        Each batch is its own write transaction, so the writers of the chat wait at most one
        batch. Bounded: only messages that existed when the purge began are candidates (ids up to
        the newest then), a set that every batch but the last shrinks, so a purge ends even with
        a `cutoff` in the future while messages keep arriving. It stops at the first batch that
        deletes nothing rather than at a short one: a short batch may only mean that another
        process purging at the same time deleted some of the rows it picked."""
        if cutoff.tzinfo is None or cutoff.utcoffset() is None:
            raise ValueError("cutoff must be timezone-aware")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        max_id = await self._database.run_read(
            lambda connection: connection.scalar(select(func.max(Message.id)))
        )
        deleted = 0
        if max_id is not None:
            statement = purge_batch_statement(cutoff, batch_size, max_id)
            while True:
                batch = await self._database.run_write(
                    lambda connection: connection.execute(statement).rowcount
                )
                if batch == 0:
                    break
                deleted += batch
        cutoff_day = cutoff.astimezone(UTC).date()
        await self._database.run_write(lambda connection: delete_days_before(connection, cutoff_day))
        return deleted

    async def member_messages(self, platform: str, member_id: str) -> list[MemberMessage]:
        """See `Repository.member_messages`."""
        query = member_messages_query(platform, member_id)
        rows = await self._database.run_read(lambda connection: connection.execute(query).all())
        exported = [MemberMessage(f"{platform}:{row.external_id}", stored_message(row)) for row in rows]
        # Sorted here, not by the database: its collation might order the keys differently.
        exported.sort(key=lambda item: (item.channel_key, item.message.id))
        return exported
