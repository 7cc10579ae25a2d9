"""`recent_messages` reads the (channel_id, id) index backwards: no table scan, no sort."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, text

from storage.db import Database
from storage.messages import next_message_statement, recent_messages_statement
from storage.models import Channel, Message
from storage.repository import ChatRepository

INDEX = "ix_messages_channel_id_id"


async def fill(database: Database) -> dict[str, int]:
    """4,000 messages: one big channel that then went quiet, and 30 small ones talking since.

    The quiet big channel is the trap: a plan that walks the primary key backwards and filters on
    channel_id looks cheap for it (half the table is its), but must step over every newer row.
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
    now = datetime.now(UTC)
    rows = [
        {
            "channel_id": ids["big"] if i < 2000 else ids[f"small{i % 30}"],
            "role": "user",
            "content": f"message {i}",
            "created_at": now,
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
