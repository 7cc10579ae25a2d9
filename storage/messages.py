"""The messages table as the repository reads it: channel keys, row shapes, the history statements."""

from __future__ import annotations

from datetime import datetime
from typing import Final, cast

from sqlalchemy import Connection, Row, Select, bindparam, select, tuple_

from bot.ports import CutReason, Role, StoredMessage
from storage.models import Channel, Message


def split_channel_key(channel_key: str) -> tuple[str, str]:
    """`"web:abc:def"` -> `("web", "abc:def")`: the platform ends at the first colon."""
    platform, colon, external_id = channel_key.partition(":")
    if not colon or not platform or not external_id:
        raise ValueError(f"channel key must look like '<platform>:<id>', got {channel_key!r}")
    return platform, external_id


# id, role, content, author_id, author_name, platform_message_id, created_at, cut, member_id, attached
MessageRow = Row[
    int, str, str, str | None, str | None, str | None, datetime, str | None, str | None, str | None
]
MessageSelect = Select[
    int, str, str, str | None, str | None, str | None, datetime, str | None, str | None, str | None
]

# What `stored_message` reads, in its order (also a RETURNING list: see storage/message_edits.py).
MESSAGE_COLUMNS: Final = (
    Message.id,
    Message.role,
    Message.content,
    Message.author_id,
    Message.author_name,
    Message.platform_message_id,
    Message.created_at,
    Message.cut,
    Message.member_id,
    Message.attached,
)


def message_columns() -> MessageSelect:
    return select(*MESSAGE_COLUMNS)


def prompt_chars(content: str, attached: str | None) -> int:
    """`len(with_attached(content, attached))`, without building the text: what a message costs
    a history budget (an attached file's text counts as much as typed text)."""
    if not attached:
        return len(content)
    return len(content) + 2 + len(attached) if content else len(attached)


def stored_message(row: MessageRow) -> StoredMessage:
    return StoredMessage(
        id=row.id,
        role=cast(Role, row.role),  # the CHECK constraint admits nothing else
        content=row.content,
        author_id=row.author_id,
        author_name=row.author_name,
        platform_message_id=row.platform_message_id,
        created_at=row.created_at,
        # Only `append_message` writes it, from a CutReason.
        cut=CutReason(row.cut) if row.cut is not None else None,
        member_id=row.member_id,
        attached=row.attached,
    )


def recent_messages_statement(
    channel_id: int, limit: int, max_id: int | None = None, member_id: str | None = None
) -> MessageSelect:
    """The query behind `recent_messages`: the channel's newest `limit` rows (with ids at most
    `max_id`, when given; only `member_id`'s, when given), newest first.

    It reads the (channel_id, id) index backwards, or (channel_id, member_id, id) for a member,
    and stops after `limit` rows, so its cost does not grow with the table or the channel.
    """
    if member_id is not None:
        return _member_recent_statement(channel_id, limit, max_id, member_id)
    statement = (
        message_columns()
        # Written as a range on purpose. With `channel_id = X`, PostgreSQL treats channel_id as a
        # constant, so a backward scan of the primary key also yields "id DESC": for a channel
        # holding many rows it may prefer that scan and filter out every newer row of the other
        # channels, which grows with the table (100k rows filtered, 15 ms instead of 0.03 ms, once
        # such a channel goes quiet). Ordered by (channel_id, id), only this index gives the order
        # without a sort.
        .where(Message.channel_id.between(channel_id, channel_id))
        .order_by(Message.channel_id.desc(), Message.id.desc())
        .limit(limit)
    )
    if max_id is not None:
        statement = statement.where(Message.id <= max_id)  # still one range of the same index
    return statement


def _member_recent_statement(
    channel_id: int, limit: int, max_id: int | None, member_id: str
) -> MessageSelect:
    # A range again, for the same reason, but of the row value (channel_id, member_id): with
    # `channel_id BETWEEN X AND X AND member_id BETWEEN M AND M` SQLite bounds its index search by
    # the first range only and filters the member's rows out of the whole channel; a row-value
    # range bounds both columns, on SQLite (3.15+) and PostgreSQL alike.
    key = tuple_(Message.channel_id, Message.member_id)
    member = tuple_(channel_id, member_id)
    if max_id is None:
        upper = key <= member
    else:  # the member's rows up to max_id: still one range of the index
        with_id = tuple_(Message.channel_id, Message.member_id, Message.id)
        upper = with_id <= tuple_(channel_id, member_id, max_id)
    return (
        message_columns()
        .where(key >= member, upper)
        .order_by(Message.channel_id.desc(), Message.member_id.desc(), Message.id.desc())
        .limit(limit)
    )


def next_message_statement(channel_id: int, after_id: int) -> MessageSelect:
    """The channel's first message after id `after_id` (no row when there is none).

    One step forward in the (channel_id, id) index. Written as a range for the reason given in
    `recent_messages_statement`: a primary-key scan from `after_id` would step over every newer
    row of the other channels when this one has none.
    """
    return (
        message_columns()
        .where(Message.channel_id.between(channel_id, channel_id), Message.id > after_id)
        .order_by(Message.channel_id, Message.id)
        .limit(1)
    )


def channel_id_query(platform: str, external_id: str) -> Select[int]:
    """The channel's id, as a subquery for statements that find the channel themselves."""
    return select(Channel.id).where(Channel.platform == platform, Channel.external_id == external_id)


# The per-message statements, built once with bound parameters: building a statement costs more
# Python time than SQLite takes to run it, and a built one also keeps its compiled-cache key.
_CHANNEL_ID = select(Channel.id).where(
    Channel.platform == bindparam("platform"), Channel.external_id == bindparam("external_id")
)
RECENT = recent_messages_statement(bindparam("channel_id"), bindparam("limit"))  # type: ignore[arg-type]
RECENT_UP_TO = recent_messages_statement(
    bindparam("channel_id"),  # type: ignore[arg-type]
    bindparam("limit"),  # type: ignore[arg-type]
    bindparam("max_id"),  # type: ignore[arg-type]
)
MEMBER_RECENT = recent_messages_statement(
    bindparam("channel_id"),  # type: ignore[arg-type]
    bindparam("limit"),  # type: ignore[arg-type]
    member_id=bindparam("member_id"),  # type: ignore[arg-type]
)
MEMBER_RECENT_UP_TO = recent_messages_statement(
    bindparam("channel_id"),  # type: ignore[arg-type]
    bindparam("limit"),  # type: ignore[arg-type]
    bindparam("max_id"),  # type: ignore[arg-type]
    bindparam("member_id"),  # type: ignore[arg-type]
)


def find_channel(connection: Connection, platform: str, external_id: str) -> int | None:
    """The channel's id; None when it was never seen."""
    return connection.scalar(_CHANNEL_ID, {"platform": platform, "external_id": external_id})
