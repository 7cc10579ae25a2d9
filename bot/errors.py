"""One rooted exception tree: library errors are wrapped at the boundary into these."""

from __future__ import annotations


class ChinwagError(Exception):
    """Root of every error Chinwag raises on purpose."""


class ConfigError(ChinwagError):
    """The configuration file is missing, malformed or has an invalid value.

    The message is one line that names the key path and what was expected; it never contains a
    secret's value.
    """


class StorageError(ChinwagError):
    """The database could not be reached or rejected an operation."""


class BackendError(ChinwagError):
    """The model backend failed to load or to generate."""


class GenerationTimeout(BackendError):
    """Generation took longer than `model.generation_timeout_s`."""


class BackendBusy(BackendError):
    """The backend's queue is full: the user should try again shortly."""


class GenerationCancelled(BackendError):
    """The generation was cancelled before it finished (the channel was reset, or shutdown)."""


class ModelLoadError(BackendError):
    """The configured model could not be found or loaded."""


class BackendUnavailable(BackendError):
    """A remote inference server could not be reached, timed out before its first token, or kept
    answering 429/5xx after every retry. Transient: the next message may well succeed."""


class BackendRejected(BackendError):
    """A remote inference server refused the request (a 4xx other than 429: a bad API key, a
    prompt too long for it). Retrying the same request will not help; the operator must look."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class BackendStreamBroken(BackendError):
    """A remote reply stream broke: cut off mid-way, or data that is not the protocol (invalid
    JSON in an event). What was streamed before is not a complete reply."""


class RateLimited(ChinwagError):
    """The user is over the rate limit; they may retry after `retry_after_s` seconds."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"rate limited; retry after {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


class AttachmentUnavailable(ChinwagError):
    """An attachment could not be downloaded (timeout, HTTP error, connection lost). The message
    says what the user may read: never a URL (a Telegram file URL holds the bot's token)."""
