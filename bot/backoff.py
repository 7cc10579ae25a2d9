"""Exponential backoff: the one formula every retry loop of the project waits by."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Attempt n waits `base_s * 2**n` seconds, never more than `max_s`."""

    base_s: float = 0.5
    max_s: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (>= 0; callers count from 0 or 1)."""
        if attempt >= 1000:  # 2.0**1024 overflows a float; any cap is reached long before
            return self.max_s
        return min(self.max_s, self.base_s * 2.0**attempt)
