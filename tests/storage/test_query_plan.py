"""`recent_messages` reads the (channel_id, id) index backwards, a member's history the
(channel_id, member_id, id) one: no table scan, no sort. The purge and a member's data use their
indexes too, and so do edits and deletes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BindParameter, Connection, bindparam, func, insert, select, text
from sqlalchemy.sql.visitors import replacement_traverse

from storage.db import Database
from storage.member_data import (
    forget_statement,
    member_messages_query,
    purge_batch_statement,
    purge_candidates,
)
from storage.message_edits import DELETE_BY_ID, EDIT_USER_MESSAGE, NEXT_MESSAGE_ROLE, USER_MESSAGE_IDS
from storage.messages import next_message_statement, recent_messages_statement
from storage.models import Channel, Message
from storage.repository import ChatRepository

INDEX = "ix_messages_channel_id_id"
MEMBER_INDEX = "ix_messages_channel_id_member_id_id"
NOW = datetime.now(UTC)


async def fill(database: Database) -> dict[str, int]:
    """4,000 messages: one big channel that then went quiet, and 30 small ones talking since.

    The quiet big channel is the trap: a plan that walks the primary key backwards and filters on
    channel_id looks cheap for it (half the table is its), but must step over every newer row.
    Likewise for its one member, "big"; the small channels' members m0..m6 talk in all of them.
    One message a minute, the newest now.
    """
    repo = ChatRepository(database)
    keys = ["web:big", *(f"web:small{i}" for i in range(30))]
    for key in keys:
        await repo.set_settings(key, temperature=0.5)  # creates the channel
    ids = await database.run_read(
        lambda connection: {
            external_id: id_
            for external_id, id_ in connection.execute(select(Channel.external_id, Channel.id))
        }
    )
    rows = [
        {
            "channel_id": ids["big"] if i < 2000 else ids[f"small{i % 30}"],
            "role": "user",
            "content": f"message {i}",
            "member_id": "big" if i < 2000 else f"m{i % 7}",
            "created_at": NOW - timedelta(minutes=4000 - i),
        }
        for i in range(4000)
    ]
    await database.run_write(lambda connection: connection.execute(insert(Message), rows))
    # Fresh statistics, as a long-running database has them; no planner switches are touched.
    await database.run_write(lambda connection: connection.execute(text("ANALYZE")))
    return ids


async def explain(database: Database, channel_id: int, limit: int, statement: Any = None) -> str:
    if statement is None:
        statement = recent_messages_statement(channel_id, limit)

    def plan(connection: Connection) -> str:
        sql = statement.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True})
        if database.dialect_name == "sqlite":
            rows = connection.execute(text(f"EXPLAIN QUERY PLAN {sql}")).all()
            return "\n".join(str(row[-1]) for row in rows)
        rows = connection.execute(text(f"EXPLAIN {sql}")).all()
        return "\n".join(str(row[0]) for row in rows)

    return await database.run_read(plan)


async def test_recent_messages_is_an_index_range_scan(database: Database) -> None:
    ids = await fill(database)

    for channel in ["big", "small7"]:
        plan = await explain(database, ids[channel], 20)
        if database.dialect_name == "sqlite":
            assert f"SEARCH messages USING INDEX {INDEX} (channel_id" in plan, plan
            assert "TEMP B-TREE" not in plan, plan
        else:
            assert f"Index Scan Backward using {INDEX} on messages" in plan, plan
            assert "Seq Scan" not in plan, plan
            assert "Sort" not in plan, plan

    # And the statement gives what recent_messages promises.
    repo = ChatRepository(database)
    history = await repo.recent_messages("web:big", limit=3)
    assert [m.content for m in history] == ["message 1997", "message 1998", "message 1999"]


async def test_the_message_after_a_question_is_one_index_step(database: Database) -> None:
    ids = await fill(database)
    last_big = await database.run_read(
        lambda connection: connection.scalar(
            select(func.max(Message.id)).where(Message.channel_id == ids["big"])
        )
    )
    assert last_big is not None
    # The trap again: the big channel has no row after its last one, and 2,000 newer rows of others.
    for channel, after in [("big", last_big), ("small7", 0)]:
        plan = await explain(database, ids[channel], 1, next_message_statement(ids[channel], after))
        if database.dialect_name == "sqlite":
            assert f"SEARCH messages USING INDEX {INDEX} (channel_id" in plan, plan
            assert "TEMP B-TREE" not in plan, plan
        else:
            assert f"Index Scan using {INDEX} on messages" in plan, plan
            assert "Seq Scan" not in plan and "Sort" not in plan, plan


async def test_a_members_history_is_an_index_range_scan(database: Database) -> None:
    ids = await fill(database)

    for channel, member in [("big", "big"), ("small7", "m3")]:
        for max_id in (None, 3000):
            statement = recent_messages_statement(ids[channel], 20, max_id, member)
            plan = await explain(database, ids[channel], 20, statement)
            if database.dialect_name == "sqlite":
                # Both columns bound the search, not just channel_id.
                assert f"SEARCH messages USING INDEX {MEMBER_INDEX} ((channel_id,member_id)>" in plan, plan
                assert "TEMP B-TREE" not in plan, plan
            else:
                assert f"Index Scan Backward using {MEMBER_INDEX} on messages" in plan, plan
                assert "Index Cond: ((ROW(channel_id, (member_id)::text) >= ROW(" in plan, plan
                assert "Seq Scan" not in plan, plan
                assert "Sort" not in plan, plan

    repo = ChatRepository(database)
    history = await repo.recent_messages("web:small7", limit=3, member_id="m3")
    written = [f"message {i}" for i in range(2000, 4000) if i % 30 == 7 and i % 7 == 3]
    assert [m.content for m in history] == written[-3:]


async def test_each_purge_batch_is_an_index_range_scan(database: Database) -> None:
    await fill(database)
    cutoff = NOW - timedelta(minutes=1000)  # three quarters of the table is older
    newest = await database.run_read(lambda connection: connection.scalar(select(func.max(Message.id))))
    assert newest is not None

    plan = await explain(database, 0, 0, purge_candidates(cutoff, 500, newest))
    if database.dialect_name == "sqlite":
        assert "SEARCH messages USING COVERING INDEX ix_messages_created_at (created_at<?)" in plan, plan
        assert "TEMP B-TREE" not in plan, plan
        # And the batch's rows are then deleted by primary key.
        plan = await explain(database, 0, 0, purge_batch_statement(cutoff, 500, newest))
        assert "SEARCH messages USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
        assert "SCAN messages" not in plan, plan
    else:
        # (How PostgreSQL then deletes 500 rows of a 4,000-row table, it decides by cost: a
        # sequential scan here, primary-key probes in a table where the batch is a small part.)
        assert "Index Scan using ix_messages_created_at on messages" in plan, plan
        assert "Seq Scan" not in plan and "Sort" not in plan, plan


async def test_a_members_messages_are_found_through_the_member_index(database: Database) -> None:
    await fill(database)

    for statement in (forget_statement("web", "m3"), member_messages_query("web", "m3")):
        plan = await explain(database, 0, 0, statement)
        if database.dialect_name == "sqlite":
            # With 31 channels on the platform SQLite may rather probe (channel_id, member_id) once
            # per channel: an index search on the member either way, never a scan of the table.
            assert re.search(
                r"SEARCH messages USING (COVERING )?INDEX ix_messages_\w*member_id\w* \(.*member_id=\?\)",
                plan,
            ), plan
            assert "SCAN messages" not in plan, plan
        else:
            assert "ix_messages_member_id" in plan, plan
            assert "Seq Scan on messages" not in plan, plan


def bound(statement: Any, **values: Any) -> Any:
    """`statement` with these values in its bound parameters, so that `explain` can render them
    (an UPDATE or DELETE has no `params()`)."""

    def with_value(element: Any) -> Any:
        if isinstance(element, BindParameter) and element.key in values:
            return bindparam(element.key, values[element.key], element.type, expanding=element.expanding)
        return None

    return replacement_traverse(statement, {}, with_value)


async def test_edits_and_deletes_find_the_user_message_by_its_platform_id(database: Database) -> None:
    await fill(database)
    channel = await database.run_read(
        lambda connection: connection.scalar(select(Channel.id).where(Channel.external_id == "big"))
    )
    statements = [
        bound(EDIT_USER_MESSAGE, in_channel=channel, with_platform_id="5", new_content="new"),
        bound(USER_MESSAGE_IDS, channel_id=channel, platform_message_ids=["5", "6", "7"]),
    ]
    for statement in statements:
        plan = await explain(database, 0, 0, statement)
        if database.dialect_name == "sqlite":
            # The UNIQUE constraint's own index (SQLite names it itself).
            assert re.search(
                r"SEARCH messages USING INDEX sqlite_autoindex_messages_\d "
                r"\(channel_id=\? AND platform_message_id=\?\)",
                plan,
            ), plan
        else:
            assert "uq_messages_channel_id_platform_message_id" in plan, plan
            assert "Seq Scan" not in plan, plan
    # Each answer is one step of the (channel_id, id) index (the trap of the test above: the last
    # question of the big channel), each deletion a primary-key probe.
    last_big = await database.run_read(
        lambda connection: connection.scalar(
            select(func.max(Message.id)).where(Message.channel_id == channel)
        )
    )
    plan = await explain(database, 0, 0, bound(NEXT_MESSAGE_ROLE, channel_id=channel, after_id=last_big))
    assert INDEX in plan and "Seq Scan" not in plan and "SCAN messages" not in plan, plan
    plan = await explain(database, 0, 0, bound(DELETE_BY_ID, ids=[1, 2, 3]))
    if database.dialect_name == "sqlite":
        assert "SEARCH messages USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
    else:
        assert "pk_messages" in plan and "Seq Scan" not in plan, plan
