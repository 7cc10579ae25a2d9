"""Per-user flood protection: a sliding-window limit with bounded memory.

Written here rather than taken from the `limits` package: its asyncio memory store expires keys
through a background task and a thread hop per key, which is far more machinery than one dict
lookup on the per-message hot path needs.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum


class Verdict(Enum):
    """What to do with one message."""

    ALLOW = "allow"
    NOTIFY = "notify"  # over the limit: tell the user once per window
    DROP = "drop"  # over the limit and already told


@dataclass(slots=True)
class _UserWindow:
    sent: deque[float] = field(default_factory=deque)
    notified_until: float = 0.0


class RateLimiter:
    """At most `limit` messages per user in any `window_s` seconds.

    Tracks at most `max_users` users; the least recently active are forgotten first, so a crowd of
    one-off users cannot grow memory without bound.
    """

    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        max_users: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._window_s = window_s
        self._max_users = max_users
        self._clock = clock
        self._users: OrderedDict[str, _UserWindow] = OrderedDict()

    def check(self, user_key: str) -> Verdict:
        """Record one message from `user_key` and say whether to answer it."""
        now = self._clock()
        window = self._users.get(user_key)
        if window is None:
            window = self._users[user_key] = _UserWindow()
            if len(self._users) > self._max_users:
                self._users.popitem(last=False)
        else:
            self._users.move_to_end(user_key)
        while window.sent and window.sent[0] <= now - self._window_s:
            window.sent.popleft()
        if len(window.sent) < self._limit:
            window.sent.append(now)
            return Verdict.ALLOW
        if now >= window.notified_until:
            window.notified_until = window.sent[0] + self._window_s
            return Verdict.NOTIFY
        return Verdict.DROP

    def retry_after(self, user_key: str) -> float:
        """Seconds until `user_key` may send again (0 when allowed now)."""
        window = self._users.get(user_key)
        if window is None or len(window.sent) < self._limit:
            return 0.0
        return max(0.0, window.sent[0] + self._window_s - self._clock())

    def __len__(self) -> int:
        return len(self._users)
