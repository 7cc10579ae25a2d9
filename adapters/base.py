"""What every platform adapter provides to the composition root, and the token rule they share."""

from __future__ import annotations

from typing import Protocol, TypeGuard

from pydantic import SecretStr


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


def has_token(secret: SecretStr | None) -> TypeGuard[SecretStr]:
    """Whether a platform token is configured: set and not blank (`${TOKEN}` of an unset variable)."""
    return secret is not None and bool(secret.get_secret_value().strip())
