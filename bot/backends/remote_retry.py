"""Retries for remote backends: transient failures before the first token are retried, nothing after.

A request that fails before any text came back (connection refused or reset, a timeout, 429, 5xx)
has cost the user nothing yet, so it is retried a bounded number of times with exponential backoff
and jitter (jitter: several bot processes hit by the same outage must not retry in lock-step).
Once text has been streamed, a failure ends the reply with `BackendStreamBroken`: retrying would
stream a second, different beginning after the first one, and the engine stores no half reply.

Each backend supplies `classify`, which turns its client library's exceptions into a `Failure`;
this module knows no HTTP library.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from bot.backends.stops import cut_at_stops
from bot.backoff import Backoff
from bot.errors import (
    BackendError,
    BackendRejected,
    BackendStreamBroken,
    BackendUnavailable,
    GenerationCancelled,
)
from bot.ports import within_channel

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})  # and every 5xx

MAX_RETRY_AFTER_S = 30.0
"""A Retry-After longer than this is not waited for: the user gets the "not reachable" reply at
once instead of a reply that hangs for minutes (the next message tries again anyway)."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`max_retries` retries after the first attempt; the n-th waits `backoff_s * 2**n`, times a
    random factor in [0.5, 1.5), or the server's Retry-After when that is longer."""

    max_retries: int = 3
    backoff_s: float = 0.5

    def delay(
        self, retry: int, retry_after_s: float | None = None, *, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before retry number `retry` (0-based)."""
        factor = 0.5 + (rng.random() if rng is not None else random.random())
        backoff = Backoff(self.backoff_s, math.inf).delay(retry) * factor
        return max(backoff, retry_after_s or 0.0)


@dataclass(frozen=True, slots=True)
class Failure:
    """A classified exception: the error to raise, and whether trying again may help."""

    error: BackendError
    transient: bool
    retry_after_s: float | None = None


Classify = Callable[[Exception], Failure]
Sleep = Callable[[float], Awaitable[None]]


async def stream_with_retries(
    open_stream: Callable[[], AsyncIterator[str]],
    classify: Classify,
    policy: RetryPolicy,
    *,
    what: str,
    sleep: Sleep = asyncio.sleep,
) -> AsyncGenerator[str, None]:
    """Yield the text of `open_stream()` (one request per call), retrying as the module says.

    Raises the classified `BackendError`: `BackendUnavailable` (or the backend's own subclass) when
    the retries are used up, at once for a non-transient failure, and `BackendStreamBroken` for any
    failure after the first non-empty chunk. `what` names the server in logs.
    """
    retry = 0
    while True:
        stream = open_stream()
        started = False
        failure: Failure | None = None
        try:
            async for chunk in stream:
                if chunk:
                    started = True
                    yield chunk
            return
        except BackendError:
            raise
        except Exception as exc:
            failure = classify(exc)
            if started:
                raise BackendStreamBroken(f"{what}: the reply broke off mid-way ({failure.error})") from exc
            if not failure.transient or retry >= policy.max_retries:
                raise failure.error from exc
            if failure.retry_after_s is not None and failure.retry_after_s > MAX_RETRY_AFTER_S:
                raise BackendUnavailable(
                    f"{what}: asked to retry after {failure.retry_after_s:.0f} s ({failure.error})"
                ) from exc
        finally:
            # Closing releases the connection at once (a stop sequence or a cancelled reply ends
            # the iteration early; an unclosed stream would hold its pooled connection).
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        assert failure is not None  # the stream neither returned nor raised
        delay = policy.delay(retry, failure.retry_after_s)
        retry += 1
        logger.warning(
            "%s: %s; retry %d of %d in %.2f s", what, failure.error, retry, policy.max_retries, delay
        )
        await sleep(delay)


def http_status_failure(where: str, status: int, retry_after: str | None, exc: Exception) -> Failure:
    """An HTTP error status as a `Failure`: 408/409/425/429 and 5xx are transient (honouring a
    Retry-After header), any other status is the server refusing the request. The message names
    the status and the exception type only: a server's error body may echo the API key."""
    if status in RETRYABLE_STATUSES or status >= 500:
        return Failure(
            BackendUnavailable(f"{where}: HTTP {status}"),
            transient=True,
            retry_after_s=parse_retry_after(retry_after),
        )
    return Failure(
        BackendRejected(f"{where}: refused with HTTP {status} ({type(exc).__name__})", status),
        transient=False,
    )


async def remote_reply(
    open_stream: Callable[[], AsyncIterator[str]],
    classify: Classify,
    policy: RetryPolicy,
    *,
    what: str,
    stops: tuple[str, ...],
    cancels: ChannelCancels,
    context_key: str | None,
) -> AsyncGenerator[str, None]:
    """A remote backend's reply as the engine gets it: `stream_with_retries`, cut at the first of
    `stops` (servers differ in whether they include the stop text), and ended with
    `GenerationCancelled` once `context_key` is forgotten (a /reset)."""
    texts = stream_with_retries(open_stream, classify, policy, what=what)
    with cancels.track(context_key) as cancelled:
        async with aclosing(cut_at_stops(texts, stops)) as reply:
            async for text in reply:
                if cancelled.is_set():
                    raise GenerationCancelled(f"{context_key} was reset")
                yield text


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from an HTTP Retry-After header: delay-seconds or an HTTP-date; None when absent
    or unreadable, never negative."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def redact_url(url: str) -> str:
    """`url` without user:password and query (credentials sometimes ride there), for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class ChannelCancels:
    """Cancel flags of the running remote generations, by context key, for `Backend.forget`.

    A generation checks its flag at every chunk (and the engine's generation timeout bounds a
    wait for the first one), then stops with `GenerationCancelled`; closing it closes the request.
    """

    def __init__(self) -> None:
        self._flags: dict[str, set[asyncio.Event]] = {}

    @contextmanager
    def track(self, context_key: str | None) -> Iterator[asyncio.Event]:
        """A flag set when `context_key` is forgotten while the `with` block runs."""
        flag = asyncio.Event()
        if context_key is None:
            yield flag
            return
        flags = self._flags.setdefault(context_key, set())
        flags.add(flag)
        try:
            yield flag
        finally:
            flags.discard(flag)
            if not flags:
                self._flags.pop(context_key, None)

    def cancel(self, channel_key: str) -> None:
        """Set the flags of the running generations of `channel_key` and of its members'
        conversations (`within_channel`)."""
        # A linear scan: the keys are those of generations running right now, a handful.
        for key, flags in self._flags.items():
            if within_channel(key, channel_key):
                for flag in flags:
                    flag.set()
