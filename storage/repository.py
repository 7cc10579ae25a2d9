"""Chat history and per-channel settings, one short transaction per call.

`ChatRepository` is the whole `Repository`: what spans channels (a member's data, the retention
purge) is `storage.member_data`'s, the token usage `storage.usage`'s and the edits and deletes of
stored messages `storage.message_edits`', to which it hands those calls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Final, cast, get_args

from sqlalchemy import Connection, CursorResult, Row, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import aliased

from bot.ports import (
    UNSET,
    ChannelSettings,
    ContextMode,
    CutReason,
    Forgotten,
    HistoryReader,
    ListenMode,
    MemberMessage,
    Repository,
    Role,
    StoredMessage,
    TokenCharge,
    UsageEntry,
    _Unset,
)
from storage.db import Database
from storage.member_data import MemberData
from storage.message_edits import MessageEdits
from storage.messages import (
    MEMBER_RECENT,
    MEMBER_RECENT_UP_TO,
    RECENT,
    RECENT_UP_TO,
    MessageRow,
    channel_id_query,
    find_channel,
    message_columns,
    next_message_statement,
    prompt_chars,
    split_channel_key,
    stored_message,
)
from storage.models import Channel, Message
from storage.usage import UsageLedger, charge_parameters, charge_statement, check_charge, move_usage

_SETTINGS_COLUMNS: Final = (
    Channel.system_prompt,
    Channel.temperature,
    Channel.persona,
    Channel.context,
    Channel.listen,
)
_CHANNEL_SETTINGS = select(*_SETTINGS_COLUMNS).where(
    Channel.platform == bindparam("platform"), Channel.external_id == bindparam("external_id")
)
_SettingsRow = Row[str | None, float | None, str | None, str | None, str | None]
_CONTEXT_MODES: Final = get_args(ContextMode)
_LISTEN_MODES: Final = get_args(ListenMode)


def _settings(row: _SettingsRow) -> ChannelSettings:
    return ChannelSettings(
        system_prompt=row.system_prompt,
        temperature=row.temperature,
        persona=row.persona,
        # The CHECK constraints admit nothing else.
        context=cast(ContextMode | None, row.context),
        listen=cast(ListenMode | None, row.listen),
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
                member_id=bindparam("member_id"),
                attached=bindparam("attached"),
            )
            .on_conflict_do_nothing(index_elements=[Message.channel_id, Message.platform_message_id])
            .returning(Message.id, Message.created_at)
        )
        self._charge = charge_statement(database.dialect_name)
        self._usage = UsageLedger(database)
        self._member_data = MemberData(database)
        self._edits = MessageEdits(database)

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
        channel_id = find_channel(connection, platform, external_id)
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
            channel_id = find_channel(connection, platform, external_id)
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
        member_id: str | None = None,
        charge: TokenCharge | None = None,
        attached: str | None = None,
    ) -> StoredMessage | None:
        """See `Repository.append_message`."""
        platform, external_id = split_channel_key(channel_key)
        if charge is not None:
            check_charge(charge)
        if member_id is None and role == "user":
            member_id = author_id
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
                "member_id": member_id,
                "attached": attached,
            }
            row = connection.execute(self._insert_message, values).one_or_none()
            if row is not None and charge is not None:  # a duplicate was charged when first stored
                connection.execute(self._charge, charge_parameters(channel_id, charge))
            return channel_id, row

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
            member_id=member_id,
            attached=attached,
        )

    async def edit_message(
        self, channel_key: str, platform_message_id: str, content: str
    ) -> StoredMessage | None:
        """See `Repository.edit_message`."""
        return await self._edits.edit_message(channel_key, platform_message_id, content)

    async def delete_messages(self, channel_key: str, platform_message_ids: Sequence[str]) -> int:
        """See `Repository.delete_messages` and `MessageEdits.delete_messages`."""
        return await self._edits.delete_messages(channel_key, platform_message_ids)

    async def recent_messages(
        self,
        channel_key: str,
        *,
        limit: int,
        max_chars: int | None = None,
        max_id: int | None = None,
        member_id: str | None = None,
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

        def newest(connection: Connection) -> tuple[int | None, Sequence[MessageRow]]:
            channel_id = known if known is not None else find_channel(connection, platform, external_id)
            if channel_id is None:
                return None, []
            parameters: dict[str, object] = {"channel_id": channel_id, "limit": limit}
            if max_id is not None:
                parameters["max_id"] = max_id
            if member_id is not None:
                parameters["member_id"] = member_id
                statement = MEMBER_RECENT if max_id is None else MEMBER_RECENT_UP_TO
            else:
                statement = RECENT if max_id is None else RECENT_UP_TO
            return channel_id, connection.execute(statement, parameters).all()

        channel_id, rows = await self._database.run_read(newest)
        self._remember_channel(platform, external_id, channel_id)

        kept: list[StoredMessage] = []
        total = 0
        for row in rows:  # newest first
            # What the model reads: the text and what its attachments became.
            total += prompt_chars(row.content, row.attached)
            if kept and max_chars is not None and total > max_chars:
                break
            kept.append(stored_message(row))
        kept.reverse()
        return kept

    async def answer_to(
        self, channel_key: str, platform_message_id: str
    ) -> tuple[StoredMessage, StoredMessage | None] | None:
        """See `Repository.answer_to`."""
        platform, external_id = split_channel_key(channel_key)

        def find(connection: Connection) -> tuple[MessageRow, MessageRow | None] | None:
            channel_id = find_channel(connection, platform, external_id)
            if channel_id is None:
                return None
            # The UNIQUE (channel_id, platform_message_id) index finds the question...
            question = connection.execute(
                message_columns().where(
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
        answered = following is not None and following.role == "assistant"
        answer = stored_message(following) if following is not None and answered else None
        return stored_message(question), answer

    async def move_channel(self, old_key: str, new_key: str) -> None:
        """See `Repository.move_channel`."""
        old_platform, old_external_id = split_channel_key(old_key)
        new_platform, new_external_id = split_channel_key(new_key)

        def move(connection: Connection) -> None:
            old = connection.execute(
                select(Channel.id, *_SETTINGS_COLUMNS).where(
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
            # Each setting the new channel has unset takes the old one's (member ids move along
            # with their messages, which keep every column but channel_id).
            old_settings = old._mapping
            connection.execute(
                update(Channel)
                .where(Channel.id == new_id)
                .values(
                    {
                        column.key: func.coalesce(column, old_settings[column.key])
                        for column in _SETTINGS_COLUMNS
                    }
                ),
            )
            # The old row stays (channels are never deleted: `_ensure_channel` relies on it).
            connection.execute(
                update(Channel)
                .where(Channel.id == old.id)
                .values(dict.fromkeys(column.key for column in _SETTINGS_COLUMNS)),
            )
            move_usage(connection, old.id, new_id)

        await self._database.run_write(move)

    async def reset_channel(self, channel_key: str) -> int:
        """See `Repository.reset_channel`."""
        platform, external_id = split_channel_key(channel_key)
        statement = delete(Message).where(
            Message.channel_id == channel_id_query(platform, external_id).scalar_subquery()
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
        return _settings(row)

    async def set_settings(
        self,
        channel_key: str,
        *,
        system_prompt: str | _Unset | None = UNSET,
        temperature: float | _Unset | None = UNSET,
        persona: str | _Unset | None = UNSET,
        context: ContextMode | _Unset | None = UNSET,
        listen: ListenMode | _Unset | None = UNSET,
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
        if not isinstance(persona, _Unset):
            changes["persona"] = persona
        if not isinstance(context, _Unset):
            # Checked here too, so a wrong value is a ValueError and not a StorageError.
            if context is not None and context not in _CONTEXT_MODES:
                raise ValueError(f"context must be one of {_CONTEXT_MODES}, got {context!r}")
            changes["context"] = context
        if not isinstance(listen, _Unset):
            if listen is not None and listen not in _LISTEN_MODES:
                raise ValueError(f"listen must be one of {_LISTEN_MODES}, got {listen!r}")
            changes["listen"] = listen
        if not changes:
            return await self.get_settings(channel_key)

        def change(connection: Connection) -> _SettingsRow:
            channel_id = self._ensure_channel(connection, platform, external_id)
            statement = (
                update(Channel).where(Channel.id == channel_id).values(changes).returning(*_SETTINGS_COLUMNS)
            )
            return connection.execute(statement).one()

        return _settings(await self._database.run_write(change))

    async def message_count(self, channel_key: str) -> int:
        """See `Repository.message_count`."""
        platform, external_id = split_channel_key(channel_key)
        query = (
            select(func.count())
            .select_from(Message)
            .where(Message.channel_id == channel_id_query(platform, external_id).scalar_subquery())
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

    async def tokens_used(self, user_key: str, day: date) -> int:
        """See `Repository.tokens_used`."""
        return await self._usage.tokens_used(user_key, day)

    async def top_usage(self, channel_key: str, day: date, limit: int) -> list[UsageEntry]:
        """See `Repository.top_usage`."""
        return await self._usage.top_usage(channel_key, day, limit)

    async def forget_member(self, platform: str, member_id: str) -> Forgotten:
        """See `Repository.forget_member`."""
        return await self._member_data.forget_member(platform, member_id)

    async def purge_older_than(self, cutoff: datetime, batch_size: int = 500) -> int:
        """See `Repository.purge_older_than`."""
        return await self._member_data.purge_older_than(cutoff, batch_size)

    async def member_messages(self, platform: str, member_id: str) -> list[MemberMessage]:
        """See `Repository.member_messages`."""
        return await self._member_data.member_messages(platform, member_id)


if TYPE_CHECKING:
    # mypy proves here that ChatRepository satisfies the protocol the engine types against.
    def _conforms(repository: ChatRepository) -> Repository:
        return repository

    def _reads_history(repository: ChatRepository) -> HistoryReader:
        return repository
