"""Tokens charged per user, channel and UTC day: the quota's ledger and the channel's top list.

A reply's cost is added in the transaction that stores the reply (`ChatRepository.append_message`
with a `TokenCharge`), by an upsert that adds to the row in place: atomic across processes, so no
charge is lost or counted twice, whichever process wrote it.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import (
    BigInteger,
    Connection,
    Date,
    ForeignKey,
    Index,
    PrimaryKeyConstraint,
    String,
    bindparam,
    func,
    select,
)
from sqlalchemy import delete as sql_delete
from sqlalchemy import update as sql_update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

from bot.ports import TokenCharge, UsageEntry
from storage.db import Database
from storage.messages import channel_id_query, split_channel_key
from storage.models import Base


class Usage(Base):
    """The tokens one user was charged in one channel on one UTC day."""

    __tablename__ = "usage"
    __table_args__ = (
        # Its (day, user_key) prefix sums a user's day over every channel (the quota check), and
        # its leading day is the range the retention purge deletes. Also the upsert's target.
        PrimaryKeyConstraint("day", "user_key", "channel_id", name="pk_usage"),
        # A channel's top list of a day; also what deleting a channel cascades through.
        Index("ix_usage_channel_id_day", "channel_id", "day"),
    )

    day: Mapped[date] = mapped_column(Date)
    user_key: Mapped[str] = mapped_column(String)  # "<platform>:<author id>"
    channel_id: Mapped[int] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"))
    # The name given with the user's newest charge here; NULL once the user asked to be forgotten.
    user_name: Mapped[str | None] = mapped_column(String)
    tokens: Mapped[int] = mapped_column(BigInteger)


def charge_statement(dialect_name: str) -> postgresql.Insert | sqlite.Insert:
    """The upsert that adds a charge: parameters day, user_key, channel_id, user_name, tokens.

    `tokens = usage.tokens + excluded.tokens` is evaluated on the row as it stands when the
    statement gets it (PostgreSQL locks the conflicting row and re-reads it; SQLite has one writer),
    so concurrent charges add up instead of overwriting each other. The charge's name, when it
    has one, replaces the row's: the newest name is shown."""
    return _adding_upsert(dialect_name, newer_name_wins=True)


def _adding_upsert(dialect_name: str, *, newer_name_wins: bool) -> postgresql.Insert | sqlite.Insert:
    insert = postgresql.insert(Usage) if dialect_name == "postgresql" else sqlite.insert(Usage)
    names = (insert.excluded.user_name, Usage.user_name)
    return insert.on_conflict_do_update(
        index_elements=[Usage.day, Usage.user_key, Usage.channel_id],
        set_={
            "tokens": Usage.tokens + insert.excluded.tokens,
            "user_name": func.coalesce(*(names if newer_name_wins else reversed(names))),
        },
    )


def charge_parameters(channel_id: int, charge: TokenCharge) -> dict[str, object]:
    """`charge_statement`'s parameters for `charge` in the channel."""
    return {
        "day": charge.day,
        "user_key": charge.user_key,
        "channel_id": channel_id,
        "user_name": charge.user_name,
        "tokens": charge.tokens,
    }


def check_charge(charge: TokenCharge) -> None:
    """`ValueError` for a charge of no tokens (`TokenCharge` says at least 1)."""
    if charge.tokens < 1:
        raise ValueError(f"a charge is at least 1 token, got {charge.tokens}")


def move_usage(connection: Connection, old_channel_id: int, new_channel_id: int) -> None:
    """Add the old channel's usage rows to the new channel's (a moved channel) and delete them.
    Where both have a row, the new channel's name stays: its charges are the newer ones."""
    old = select(Usage.day, Usage.user_key, Usage.user_name, Usage.tokens).where(
        Usage.channel_id == old_channel_id
    )
    rows = connection.execute(old).all()  # a channel's users times the retained days: few
    if not rows:
        return
    connection.execute(
        _adding_upsert(connection.dialect.name, newer_name_wins=False),
        [
            {
                "day": row.day,
                "user_key": row.user_key,
                "channel_id": new_channel_id,
                "user_name": row.user_name,
                "tokens": row.tokens,
            }
            for row in rows
        ],
    )
    connection.execute(sql_delete(Usage).where(Usage.channel_id == old_channel_id))


def forget_user_name(connection: Connection, user_key: str) -> None:
    """Blank the user's name in every usage row; the counts stay (a quota is not reset).

    No index leads with user_key: this runs once per /forget and scans a table that holds only
    the retained days (users times channels times days), while every charge and quota check would
    pay for one more index."""
    connection.execute(sql_update(Usage).where(Usage.user_key == user_key).values(user_name=None))


def delete_days_before(connection: Connection, day: date) -> int:
    """Delete the usage rows of days before `day` (a range of the primary key); returns how many."""
    return connection.execute(sql_delete(Usage).where(Usage.day < day)).rowcount


# Built once: "a user's tokens on a day" is asked before every answer when a quota is set.
_TOKENS_USED = select(func.sum(Usage.tokens)).where(
    Usage.day == bindparam("day"), Usage.user_key == bindparam("user_key")
)


class UsageLedger:
    """The reads of the usage table on a `Database`, one short transaction each."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def tokens_used(self, user_key: str, day: date) -> int:
        """See `Repository.tokens_used`."""
        parameters = {"day": day, "user_key": user_key}
        total = await self._database.run_read(lambda connection: connection.scalar(_TOKENS_USED, parameters))
        return int(total or 0)  # PostgreSQL sums a BIGINT as NUMERIC (a Decimal)

    async def top_usage(self, channel_key: str, day: date, limit: int) -> list[UsageEntry]:
        """See `Repository.top_usage`."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        platform, external_id = split_channel_key(channel_key)
        if limit == 0:
            return []
        query = (
            select(Usage.user_key, Usage.user_name, Usage.tokens)
            .where(
                Usage.channel_id == channel_id_query(platform, external_id).scalar_subquery(),
                Usage.day == day,
            )
            .order_by(Usage.tokens.desc(), Usage.user_key)
            .limit(limit)
        )
        rows = await self._database.run_read(lambda connection: connection.execute(query).all())
        return [UsageEntry(row.user_key, row.user_name, row.tokens) for row in rows]
