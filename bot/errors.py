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


class RateLimited(ChinwagError):
    """The user is over the rate limit; they may retry after `retry_after_s` seconds."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"rate limited; retry after {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s
