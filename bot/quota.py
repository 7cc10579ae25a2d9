"""Daily token quotas: what a reply costs, whether a user may ask again, and when that resets.

Tokens are counted from the backend (the local model's generated tokens; a server's `usage` when it
sends one) and estimated from the text otherwise. A reply's cost is stored with the reply in one
transaction (`Repository.append_message(charge=...)`), so every process on a shared database adds
to the same counter and no reply is counted twice. Staff (`ChatEvent.is_staff`) are exempt.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

from bot.backends.base import GenerationReport
from bot.events import ChatEvent
from bot.ports import Repository, TokenCharge

# Without a count from the backend: about 4 characters per token, the usual rule for English.
CHARS_PER_TOKEN = 4


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def reply_cost(report: GenerationReport, text: str) -> int:
    """Tokens one reply cost: the backend's count when it reported one, else an estimate from
    the text; at least 1."""
    if report.completion_tokens is not None:
        return max(1, report.completion_tokens)
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def until_reset(now: datetime) -> str:
    """ "4 h 12 min" until the next UTC midnight (at least one minute)."""
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    minutes = max(1, math.ceil((midnight - now).total_seconds() / 60))
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


class Quota:
    """`chat.quota.tokens_per_day` for one engine."""

    def __init__(
        self, repository: Repository, tokens_per_day: int, *, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._repository = repository
        self.tokens_per_day = tokens_per_day
        self._clock = clock

    def today(self) -> date:
        """The UTC day usage is counted in now."""
        return self._clock().date()

    def applies_to(self, event: ChatEvent) -> bool:
        """Whether `event`'s author is held to a quota (one is set and they are not staff)."""
        return self.tokens_per_day > 0 and not event.is_staff

    async def refusal(self, event: ChatEvent) -> str | None:
        """The reply for a user at or over the quota, or None when they may ask. Raises
        `StorageError` when the database fails."""
        if not self.applies_to(event):
            return None
        used = await self._repository.tokens_used(event.user_key, self.today())
        if used < self.tokens_per_day:
            return None
        return (
            f"You have used your quota of {self.tokens_per_day:,} tokens for today ({used:,} used). "
            f"It resets at midnight UTC, in {until_reset(self._clock())}."
        )

    def charge(self, event: ChatEvent, report: GenerationReport, text: str) -> TokenCharge:
        """What the reply `text` to `event` costs its author, to store with the reply."""
        return TokenCharge(
            user_key=event.user_key,
            user_name=event.author_name or None,
            tokens=reply_cost(report, text),
            day=self.today(),
        )

    async def usage_text(self, event: ChatEvent) -> str:
        """`/usage`: the author's tokens today and the limit."""
        used = await self._repository.tokens_used(event.user_key, self.today())
        if event.is_staff and self.tokens_per_day > 0:
            limit = f"Admins have no limit; others have {self.tokens_per_day:,} a day."
        elif self.tokens_per_day > 0:
            left = max(0, self.tokens_per_day - used)
            limit = f"The limit is {self.tokens_per_day:,} a day: {left:,} left until midnight UTC."
        else:
            limit = "No daily limit is set."
        return f"Your usage today: {used:,} tokens. {limit}"

    async def top_text(self, event: ChatEvent, limit: int = 10) -> str:
        """`/usage all`: the channel's top users today."""
        entries = await self._repository.top_usage(event.channel_key, self.today(), limit)
        if not entries:
            return "No tokens used in this chat today."
        lines = [f"Top users in this chat today (UTC {self.today().isoformat()}):"]
        for entry in entries:  # plain lines, not a Markdown list (rendered with a gap)
            lines.append(f"{entry.user_name or entry.user_key}: {entry.tokens:,} tokens")
        return "\n".join(lines)
