"""Edits and deletes of stored user messages, as platforms report them (a Telegram
`edited_message`, a Discord message edit, delete or bulk delete, the web page's delete).

Both find the user message by the UNIQUE (channel_id, platform_message_id) index. Only user
messages carry a platform id, and both statements also say `role = 'user'`, so a bot reply is
never edited by this and is deleted only as the answer to a deleted question.

"The answer" follows `Repository.answer_to`'s rule: the channel's next message by id, when it is
the assistant's. It is read in the same transaction as the delete; the engine's per-channel order
keeps the channel's writers out meanwhile, as for `answer_to`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Final, TypeVar, cast

from sqlalchemy import Connection, CursorResult, bindparam, delete, select, update

from bot.ports import StoredMessage
from storage.db import Database
from storage.messages import (
    MESSAGE_COLUMNS,
    MessageRow,
    find_channel,
    next_message_statement,
    split_channel_key,
    stored_message,
)
from storage.models import Message

T = TypeVar("T")

MAX_IDS_PER_STATEMENT: Final = 100
"""How many ids one SELECT or DELETE names (a Discord bulk delete sends at most 100): larger
calls are cut into statements of this many, which keeps every statement's parameter list and
work bounded (SQLite before 3.32 takes at most 999 parameters)."""

# Built once with bound parameters, as the per-message statements in storage/messages.py. An
# UPDATE's parameters may not be named as columns (those names are reserved for its SET values).
EDIT_USER_MESSAGE = (
    update(Message)
    .where(
        Message.channel_id == bindparam("in_channel"),
        Message.platform_message_id == bindparam("with_platform_id"),
        Message.role == "user",
    )
    # `attached`, `cut`, `created_at` and the id are left as they are: the message keeps its place.
    .values(content=bindparam("new_content"))
    .returning(*MESSAGE_COLUMNS)
)
USER_MESSAGE_IDS = select(Message.id).where(
    Message.channel_id == bindparam("channel_id"),
    Message.platform_message_id.in_(bindparam("platform_message_ids", expanding=True)),
    Message.role == "user",
)
# Only the id and role of the next row: its text (maybe a long file's) is not needed.
NEXT_MESSAGE_ROLE = next_message_statement(
    bindparam("channel_id"),  # type: ignore[arg-type]
    bindparam("after_id"),  # type: ignore[arg-type]
).with_only_columns(Message.id, Message.role)
DELETE_BY_ID = delete(Message).where(Message.id.in_(bindparam("ids", expanding=True)))


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class MessageEdits:
    """`Repository.edit_message` and `delete_messages` on a `Database`."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def edit_message(
        self, channel_key: str, platform_message_id: str, content: str
    ) -> StoredMessage | None:
        """See `Repository.edit_message`. One UPDATE … RETURNING: the row as edited, or none when
        the channel or the user message is not stored (nothing is created then)."""
        platform, external_id = split_channel_key(channel_key)

        def edit(connection: Connection) -> MessageRow | None:
            channel_id = find_channel(connection, platform, external_id)
            if channel_id is None:
                return None
            parameters = {
                "in_channel": channel_id,
                "with_platform_id": platform_message_id,
                "new_content": content,
            }
            # RETURNING with more columns than `update()`'s typed overloads: the row has
            # MESSAGE_COLUMNS' shape.
            return cast("MessageRow | None", connection.execute(EDIT_USER_MESSAGE, parameters).one_or_none())

        row = await self._database.run_write(edit)
        return stored_message(row) if row is not None else None

    async def delete_messages(self, channel_key: str, platform_message_ids: Sequence[str]) -> int:
        """See `Repository.delete_messages`.

        Any number of ids, in one transaction: the questions and their answers are all found
        first, on the history as it stood before the call (so deleting a question never makes a
        later assistant message look like another deleted question's answer), then deleted by
        primary key, each step in statements of at most `MAX_IDS_PER_STATEMENT` ids. A repeated
        id counts once. An empty list returns 0 without a transaction."""
        if isinstance(platform_message_ids, str):  # a Sequence[str] too, of one-letter ids
            raise TypeError("platform_message_ids must be a sequence of ids, not one string")
        platform, external_id = split_channel_key(channel_key)
        wanted = list(dict.fromkeys(platform_message_ids))
        if not wanted:
            return 0

        def delete_questions_and_answers(connection: Connection) -> int:
            channel_id = find_channel(connection, platform, external_id)
            if channel_id is None:
                return 0
            doomed: list[int] = []
            for some_ids in _chunks(wanted, MAX_IDS_PER_STATEMENT):
                questions = connection.scalars(
                    USER_MESSAGE_IDS, {"channel_id": channel_id, "platform_message_ids": list(some_ids)}
                ).all()
                for question_id in questions:
                    doomed.append(question_id)
                    following = connection.execute(
                        NEXT_MESSAGE_ROLE, {"channel_id": channel_id, "after_id": question_id}
                    ).one_or_none()
                    if following is not None and following.role == "assistant":
                        doomed.append(following.id)
            deleted = 0
            # Distinct ids (two questions never share an answer: each answer is one question's
            # next row), sorted so that deleting takes the rows' locks in one order.
            for some_rows in _chunks(sorted(set(doomed)), MAX_IDS_PER_STATEMENT):
                result = connection.execute(DELETE_BY_ID, {"ids": list(some_rows)})
                # A DELETE's result is a CursorResult; `execute` is typed for every statement.
                deleted += cast("CursorResult[Any]", result).rowcount
            return deleted

        return await self._database.run_write(delete_questions_and_answers)
