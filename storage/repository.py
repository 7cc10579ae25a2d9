"""Chat history and per-channel settings, one short transaction per call."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, CursorResult, Row, Select, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import aliased

from bot.ports import (
    UNSET,
    ChannelSettings,
    CutReason,
    HistoryReader,
    Repository,
    Role,
    StoredMessage,
    _Unset,
)
from storage.db import Database
from storage.models import Channel, Message


def split_channel_key(channel_key: str) -> tuple[str, str]:
    """`"web:abc:def"` -> `("web", "abc:def")`: the platform ends at the first colon."""
    platform, colon, external_id = channel_key.partition(":")
    if not colon or not platform or not external_id:
        raise ValueError(f"channel key must look like '<platform>:<id>', got {channel_key!r}")
    return platform, external_id


# id, role, content, author_id, author_name, platform_message_id, created_at, cut
_MessageRow = Row[int, str, str, str | None, str | None, str | None, datetime, str | None]
_MessageSelect = Select[int, str, str, str | None, str | None, str | None, datetime, str | None]


def _message_columns() -> _MessageSelect:
    return select(
        Message.id,
        Message.role,
        Message.content,
        Message.author_id,
        Message.author_name,
        Message.platform_message_id,
        Message.created_at,
        Message.cut,
    )


def _stored(row: _MessageRow) -> StoredMessage:
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
    )


def recent_messages_statement(channel_id: int, limit: int, max_id: int | None = None) -> _MessageSelect:
    """The query behind `recent_messages`: the channel's newest `limit` rows (with ids at most
    `max_id`, when given), newest first.

    It reads the (channel_id, id) index backwards and stops after `limit` rows, so its cost does
    not grow with the table or the channel.
    """
    statement = (
        _message_columns()
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


def next_message_statement(channel_id: int, after_id: int) -> _MessageSelect:
    """The channel's first message after id `after_id` (no row when there is none).

    One step forward in the (channel_id, id) index. Written as a range for the reason given in
    `recent_messages_statement`: a primary-key scan from `after_id` would step over every newer
    row of the other channels when this one has none.
    """
    return (
        _message_columns()
        .where(Message.channel_id.between(channel_id, channel_id), Message.id > after_id)
        .order_by(Message.channel_id, Message.id)
        .limit(1)
    )


def _channel_id_query(platform: str, external_id: str) -> Select[int]:
    return select(Channel.id).where(Channel.platform == platform, Channel.external_id == external_id)


# The per-message statements, built once with bound parameters: building a statement costs more
# Python time than SQLite takes to run it, and a built one also keeps its compiled-cache key.
_CHANNEL_ID = select(Channel.id).where(
    Channel.platform == bindparam("platform"), Channel.external_id == bindparam("external_id")
)
_CHANNEL_SETTINGS = select(Channel.system_prompt, Channel.temperature).where(
    Channel.platform == bindparam("platform"), Channel.external_id == bindparam("external_id")
)
_RECENT = recent_messages_statement(bindparam("channel_id"), bindparam("limit"))  # type: ignore[arg-type]
_RECENT_UP_TO = recent_messages_statement(
    bindparam("channel_id"),  # type: ignore[arg-type]
    bindparam("limit"),  # type: ignore[arg-type]
    bindparam("max_id"),  # type: ignore[arg-type]
)

# Channel rows are never deleted and never change id, so a key's id can be remembered for good;
# bounded so that a bot in very many channels does not grow without end.
_CHANNEL_ID_CACHE_SIZE = 10_000


class ChatRepository:
    """`Repository` on a `Database` (SQLite or PostgreSQL).

    Each operation is a synchronous unit of work handed to `Database.run_read` / `run_write`
    (one thread hop on SQLite rather than one per statement: see `Database`).
    """

    def __init__(self, database: Database) -> None:
        self._database = database
        self._channel_ids: dict[tuple[str, str], int] = {}  # only touched on the event loop
        self._insert_message = (
            self._insert(Message)
            .values(
                channel_id=bindparam("channel_id"),
                role=bindparam("role"),
                content=bindparam("content"),
                author_id=bindparam("author_id"),
                author_name=bindparam("author_name"),
                platform_message_id=bindparam("platform_message_id"),
                cut=bindparam("cut"),
            )
            .on_conflict_do_nothing(index_elements=[Message.channel_id, Message.platform_message_id])
            .returning(Message.id, Message.created_at)
        )

    def _remember_channel(self, platform: str, external_id: str, channel_id: int | None) -> None:
        if channel_id is None:
            return
        if len(self._channel_ids) >= _CHANNEL_ID_CACHE_SIZE:
            del self._channel_ids[next(iter(self._channel_ids))]  # the oldest entry
        self._channel_ids[(platform, external_id)] = channel_id

    def _insert(self, model: type[Channel | Message]) -> postgresql.Insert | sqlite.Insert:
        """An INSERT that supports ON CONFLICT DO NOTHING on the current database."""
        if self._database.dialect_name == "postgresql":
            return postgresql.insert(model)
        return sqlite.insert(model)

    def _ensure_channel(self, connection: Connection, platform: str, external_id: str) -> int:
        """The channel's id, creating the row if needed.

        Race-safe across tasks and processes: when another transaction inserts the same channel
        first, ON CONFLICT DO NOTHING waits for it and yields no row, and the SELECT after it finds
        theirs (PostgreSQL READ COMMITTED takes a new snapshot per statement; SQLite writers are
        serialized by BEGIN IMMEDIATE).
        """
        channel_id = _find_channel(connection, platform, external_id)
        if channel_id is not None:
            return channel_id
        insert = (
            self._insert(Channel)
            .values(platform=platform, external_id=external_id)
            .on_conflict_do_nothing(index_elements=[Channel.platform, Channel.external_id])
            .returning(Channel.id)
        )
        channel_id = connection.scalar(insert)
        if channel_id is None:
            channel_id = _find_channel(connection, platform, external_id)
        if channel_id is None:  # cannot happen: channels are never deleted
            raise RuntimeError(f"channel {platform}:{external_id} vanished while being created")
        return channel_id

    async def append_message(
        self,
        channel_key: str,
        role: Role,
        content: str,
        *,
        author_id: str | None = None,
        author_name: str | None = None,
        platform_message_id: str | None = None,
        cut: CutReason | None = None,
    ) -> StoredMessage | None:
        """See `Repository.append_message`."""
        platform, external_id = split_channel_key(channel_key)
        known = self._channel_ids.get((platform, external_id))

        def append(connection: Connection) -> tuple[int, Row[int, datetime] | None]:
            channel_id = known
            if channel_id is None:
                channel_id = self._ensure_channel(connection, platform, external_id)
            # The unique constraint decides what a duplicate is, also between processes; a check
            # before the insert could not.
            values = {
                "channel_id": channel_id,
                "role": role,
                "content": content,
                "author_id": author_id,
                "author_name": author_name,
                "platform_message_id": platform_message_id,
                "cut": cut.value if cut is not None else None,
            }
            return channel_id, connection.execute(self._insert_message, values).one_or_none()

        channel_id, row = await self._database.run_write(append)
        self._remember_channel(platform, external_id, channel_id)
        if row is None:
            return None
        return StoredMessage(
            id=row.id,
            role=role,
            content=content,
            author_id=author_id,
            author_name=author_name,
            platform_message_id=platform_message_id,
            created_at=row.created_at,
            cut=cut,
        )

    async def recent_messages(
        self, channel_key: str, *, limit: int, max_chars: int | None = None, max_id: int | None = None
    ) -> list[StoredMessage]:
        """See `Repository.recent_messages`."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        if max_chars is not None and max_chars < 0:
            raise ValueError(f"max_chars must be >= 0, got {max_chars}")
        platform, external_id = split_channel_key(channel_key)
        if limit == 0:
            return []

        known = self._channel_ids.get((platform, external_id))

        def newest(connection: Connection) -> tuple[int | None, Sequence[_MessageRow]]:
            channel_id = known if known is not None else _find_channel(connection, platform, external_id)
            if channel_id is None:
                return None, []
            if max_id is None:
                parameters = {"channel_id": channel_id, "limit": limit}
                return channel_id, connection.execute(_RECENT, parameters).all()
            parameters = {"channel_id": channel_id, "limit": limit, "max_id": max_id}
            return channel_id, connection.execute(_RECENT_UP_TO, parameters).all()

        channel_id, rows = await self._database.run_read(newest)
        self._remember_channel(platform, external_id, channel_id)

        kept: list[StoredMessage] = []
        total = 0
        for row in rows:  # newest first
            total += len(row.content)
            if kept and max_chars is not None and total > max_chars:
                break
            kept.append(_stored(row))
        kept.reverse()
        return kept

    async def answer_to(
        self, channel_key: str, platform_message_id: str
    ) -> tuple[StoredMessage, StoredMessage | None] | None:
        """See `Repository.answer_to`."""
        platform, external_id = split_channel_key(channel_key)

        def find(connection: Connection) -> tuple[_MessageRow, _MessageRow | None] | None:
            channel_id = _find_channel(connection, platform, external_id)
            if channel_id is None:
                return None
            # The UNIQUE (channel_id, platform_message_id) index finds the question...
            question = connection.execute(
                _message_columns().where(
                    Message.channel_id == channel_id, Message.platform_message_id == platform_message_id
                )
            ).one_or_none()
            if question is None:
                return None
            # ...and the (channel_id, id) index the next row. Two statements: the engine's
            # per-channel order keeps writers of this channel out in between.
            return question, connection.execute(next_message_statement(channel_id, question.id)).one_or_none()

        found = await self._database.run_read(find)
        if found is None:
            return None
        question, following = found
        answer = _stored(following) if following is not None and following.role == "assistant" else None
        return _stored(question), answer

    async def move_channel(self, old_key: str, new_key: str) -> None:
        """See `Repository.move_channel`."""
        old_platform, old_external_id = split_channel_key(old_key)
        new_platform, new_external_id = split_channel_key(new_key)

        def move(connection: Connection) -> None:
            old = connection.execute(
                select(Channel.id, Channel.system_prompt, Channel.temperature).where(
                    Channel.platform == old_platform, Channel.external_id == old_external_id
                )
            ).one_or_none()
            if old is None:
                return
            new_id = self._ensure_channel(connection, new_platform, new_external_id)
            if new_id == old.id:
                return
            # Platform ids already taken in the new channel would break its UNIQUE constraint:
            # those old messages stay in the history without the id (an alias, because a subquery
            # on the updated table would otherwise be correlated to the row being updated).
            taken = aliased(Message)
            connection.execute(
                update(Message)
                .where(
                    Message.channel_id == old.id,
                    Message.platform_message_id.in_(
                        select(taken.platform_message_id).where(
                            taken.channel_id == new_id, taken.platform_message_id.is_not(None)
                        )
                    ),
                )
                .values(platform_message_id=None),
            )
            connection.execute(
                update(Message).where(Message.channel_id == old.id).values(channel_id=new_id),
            )
            connection.execute(
                update(Channel)
                .where(Channel.id == new_id)
                .values(
                    system_prompt=func.coalesce(Channel.system_prompt, old.system_prompt),
                    temperature=func.coalesce(Channel.temperature, old.temperature),
                ),
            )
            # The old row stays (channels are never deleted: `_ensure_channel` relies on it).
            connection.execute(
                update(Channel).where(Channel.id == old.id).values(system_prompt=None, temperature=None),
            )

        await self._database.run_write(move)

    async def reset_channel(self, channel_key: str) -> int:
        """See `Repository.reset_channel`."""
        platform, external_id = split_channel_key(channel_key)
        statement = delete(Message).where(
            Message.channel_id == _channel_id_query(platform, external_id).scalar_subquery()
        )

        def delete_all(connection: Connection) -> int:
            result = connection.execute(statement)
            # A DELETE's result is a CursorResult; `execute` is typed for every statement.
            return cast("CursorResult[Any]", result).rowcount

        return await self._database.run_write(delete_all)

    async def get_settings(self, channel_key: str) -> ChannelSettings:
        """See `Repository.get_settings`."""
        platform, external_id = split_channel_key(channel_key)
        parameters = {"platform": platform, "external_id": external_id}
        row = await self._database.run_read(
            lambda connection: connection.execute(_CHANNEL_SETTINGS, parameters).one_or_none()
        )
        if row is None:
            return ChannelSettings()
        return ChannelSettings(system_prompt=row.system_prompt, temperature=row.temperature)

    async def set_settings(
        self,
        channel_key: str,
        *,
        system_prompt: str | _Unset | None = UNSET,
        temperature: float | _Unset | None = UNSET,
    ) -> ChannelSettings:
        """See `Repository.set_settings`."""
        platform, external_id = split_channel_key(channel_key)
        changes: dict[str, object] = {}
        if not isinstance(system_prompt, _Unset):
            changes["system_prompt"] = system_prompt
        if not isinstance(temperature, _Unset):
            # SQLite would store NaN as NULL, silently turning it into "use the default".
            if temperature is not None and not math.isfinite(temperature):
                raise ValueError(f"temperature must be a finite number, got {temperature}")
            changes["temperature"] = temperature
        if not changes:
            return await self.get_settings(channel_key)

        def change(connection: Connection) -> Row[str | None, float | None]:
            channel_id = self._ensure_channel(connection, platform, external_id)
            statement = (
                update(Channel)
                .where(Channel.id == channel_id)
                .values(changes)
                .returning(Channel.system_prompt, Channel.temperature)
            )
            return connection.execute(statement).one()

        row = await self._database.run_write(change)
        return ChannelSettings(system_prompt=row.system_prompt, temperature=row.temperature)

    async def message_count(self, channel_key: str) -> int:
        """See `Repository.message_count`."""
        platform, external_id = split_channel_key(channel_key)
        query = (
            select(func.count())
            .select_from(Message)
            .where(Message.channel_id == _channel_id_query(platform, external_id).scalar_subquery())
        )
        return (await self._database.run_read(lambda connection: connection.scalar(query))) or 0

    async def last_platform_message_ids(self, platform: str) -> dict[str, str]:
        """See `Repository.last_platform_message_ids`."""
        # "Answered" = the channel's next message (by our own id, i.e. write order) is the
        # assistant's: LEAD over each channel's messages (SQLite >= 3.25 and PostgreSQL). Runs once
        # per adapter (re)connect; it scans the platform's messages, acceptable then, not per message.
        platform_channels = select(Channel.id).where(Channel.platform == platform)
        ordered = (
            select(
                Message.id,
                Message.channel_id,
                Message.role,
                Message.platform_message_id,
                func.lead(Message.role)
                .over(partition_by=Message.channel_id, order_by=Message.id)
                .label("next_role"),
            )
            .where(Message.channel_id.in_(platform_channels))
            .subquery()
        )
        newest_answered = (
            select(func.max(ordered.c.id))
            .where(
                ordered.c.role == "user",
                ordered.c.platform_message_id.is_not(None),
                ordered.c.next_role == "assistant",
            )
            .group_by(ordered.c.channel_id)
            .scalar_subquery()
        )
        query = (
            select(Channel.external_id, Message.platform_message_id)
            .join(Message, Message.channel_id == Channel.id)
            .where(Channel.platform == platform, Message.id.in_(newest_answered))
        )
        rows = await self._database.run_read(lambda connection: connection.execute(query).all())
        return {external_id: message_id for external_id, message_id in rows if message_id is not None}


def _find_channel(connection: Connection, platform: str, external_id: str) -> int | None:
    return connection.scalar(_CHANNEL_ID, {"platform": platform, "external_id": external_id})


if TYPE_CHECKING:
    # mypy proves here that ChatRepository satisfies the protocol the engine types against.
    def _conforms(repository: ChatRepository) -> Repository:
        return repository

    def _reads_history(repository: ChatRepository) -> HistoryReader:
        return repository
