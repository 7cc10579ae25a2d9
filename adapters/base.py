"""What every platform adapter provides to the composition root."""

from __future__ import annotations

from typing import Protocol


class Adapter(Protocol):
    """A platform connection: turns native messages into `ChatEvent`s and posts the replies.

    `start` returns once the adapter is receiving (it runs its own tasks); `stop` undoes `start`,
    also after a failed or partial start, and may be called twice.
    """

    name: str

    async def start(self) -> None:
        """Connect and begin receiving messages."""
        ...

    async def stop(self) -> None:
        """Stop receiving, finish or abandon in-flight replies, disconnect."""
        ...
