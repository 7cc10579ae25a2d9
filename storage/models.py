"""The ORM schema: one row per chat channel, one row per stored message.

The token usage table lives in storage/usage.py, the inbox in storage/inbox.py.

`storage/migrations/versions/` builds exactly this schema (a test compares the two); change both together.
Models defined elsewhere in the package must derive from `Base` too (see `load_metadata`).
"""

from __future__ import annotations

import importlib
import pkgutil
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Deterministic constraint names, so that later migrations can address them on both databases.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def load_metadata() -> MetaData:
    """`Base.metadata` with every table of the project.

    A model registers its table only once its module is imported, and models may live beside the
    code that uses them (e.g. storage/inbox.py): this imports every module of the package, so that
    Alembic autogenerate and the schema tests see all tables instead of proposing to drop some.
    """
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__package__}.{module.name}")
    return Base.metadata


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware (UTC) in Python, on SQLite too.

    SQLite has no timestamp type: SQLAlchemy stores a string and drops the offset, so values are
    converted to UTC before storing and marked as UTC when read back. Naive datetimes are refused
    because their meaning is ambiguous.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where a timezone-aware one is required")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of the Chinwag schema."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Channel(Base):
    """A conversation place on one platform (a Telegram chat, a Discord channel, a web session...)."""

    __tablename__ = "channels"
    __table_args__ = (UniqueConstraint("platform", "external_id", name="uq_channels_platform_external_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String)
    external_id: Mapped[str] = mapped_column(String)
    # NULL means "use the configured default"; clearing a setting writes NULL back.
    system_prompt: Mapped[str | None] = mapped_column(Text)
    temperature: Mapped[float | None] = mapped_column(Float)
    # The persona (a name from the config's `personas:`) the prompt and temperature were set from.
    persona: Mapped[str | None] = mapped_column(String)
    # Column CHECKs, not table ones: migration 0004 adds them with the columns (SQLite's ADD
    # COLUMN takes a column constraint; a table constraint would need batch mode's table copy),
    # and SQLite can drop a column only when no other column's constraint names it.
    # `bot.ports.ContextMode` and `ListenMode`; the repository checks them in Python too.
    context: Mapped[str | None] = mapped_column(
        String, CheckConstraint("context IN ('shared', 'member')", name="context")
    )
    listen: Mapped[str | None] = mapped_column(
        String, CheckConstraint("listen IN ('all', 'mention')", name="listen")
    )
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, server_default=text("CURRENT_TIMESTAMP")
    )


class Message(Base):
    """One user or assistant message of a channel; `id` order is conversation order."""

    __tablename__ = "messages"
    __table_args__ = (
        # Duplicate deliveries of one platform message are rejected here; NULL ids never collide.
        UniqueConstraint(
            "channel_id", "platform_message_id", name="uq_messages_channel_id_platform_message_id"
        ),
        # "The last N messages of a channel" is a backward range scan of this index.
        Index("ix_messages_channel_id_id", "channel_id", "id"),
        # The same for one member's conversation in a channel (member mode).
        Index("ix_messages_channel_id_member_id_id", "channel_id", "member_id", "id"),
        # A member's messages in every channel (/forget, the data export). member_id alone: the
        # query is "this member, in the channels of one platform", and the member's rows are
        # deleted or read whole anyway, so channel_id in the key would save no row visit, only
        # make every append's index write bigger. The index above serves it only by one probe
        # per channel of the platform (fine for a few channels, not for thousands).
        Index("ix_messages_member_id", "member_id"),
        # Retention: each purge batch is a range scan from the oldest row.
        Index("ix_messages_created_at", "created_at"),
        CheckConstraint("role IN ('user', 'assistant')", name="role"),
        # AUTOINCREMENT: SQLite would otherwise reuse the ids of deleted newest rows after a reset.
        {"sqlite_autoincrement": True},
    )

    # BIGINT on PostgreSQL; SQLite autoincrements only an INTEGER PRIMARY KEY (the rowid).
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    author_id: Mapped[str | None] = mapped_column(String)
    author_name: Mapped[str | None] = mapped_column(String)
    content: Mapped[str] = mapped_column(Text)
    platform_message_id: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, server_default=text("CURRENT_TIMESTAMP")
    )
    # An assistant message cut short and kept: why (`bot.ports.CutReason`'s value); NULL otherwise.
    cut: Mapped[str | None] = mapped_column(String(16))
    # Whose conversation it belongs to: a user message's author, the asker of an assistant message.
    member_id: Mapped[str | None] = mapped_column(String)
    # What a user message's attachments became (file names and texts, `[image: NAME]`
    # placeholders), apart from `content` so that an edit replaces the text and keeps them.
    attached: Mapped[str | None] = mapped_column(Text)
