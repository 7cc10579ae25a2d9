"""Chat history and channel settings in SQLite (default) or PostgreSQL, via SQLAlchemy 2 async.

`Database` owns the engine and migrates the schema on `start()`; `ChatRepository` is the
`Repository` the engine uses. Database failures surface as `bot.errors.StorageError`.
"""

from storage.db import Database
from storage.repository import (
    UNSET,
    ChannelSettings,
    ChatRepository,
    Repository,
    StoredMessage,
    recent_messages_statement,
    split_channel_key,
)

__all__ = [
    "UNSET",
    "ChannelSettings",
    "ChatRepository",
    "Database",
    "Repository",
    "StoredMessage",
    "recent_messages_statement",
    "split_channel_key",
]
