"""Chat history and channel settings in SQLite (default) or PostgreSQL, via SQLAlchemy 2 async.

`Database` owns the engine and migrates the schema on `start()`; `ChatRepository` implements the
core's `bot.ports.Repository`. Database failures surface as `bot.errors.StorageError`.
"""

from storage.db import Database
from storage.messages import recent_messages_statement, split_channel_key
from storage.repository import ChatRepository

__all__ = ["ChatRepository", "Database", "recent_messages_statement", "split_channel_key"]
