"""Whether a message gets an answer at all: access lists, listening mode and flood protection.

Decided on arrival where the facts allow (`Gate.on_arrival`: the access policy and the rate limit
are in-memory), so an adapter knows at once whether to show "typing…"; a group message that is not
addressed to the bot waits for its turn, where its channel's `/listen` setting is read
(`Arrival.UNADDRESSED`), and only then counts against the rate limit.
"""

from __future__ import annotations

import enum

from bot.access import REFUSED_REPLY, Access, AccessPolicy
from bot.events import ChatEvent
from bot.ratelimit import RateLimiter, Verdict

RATE_LIMIT_REPLY = "You're sending messages faster than I can answer. Please wait {seconds} s and try again."


class Arrival(enum.Enum):
    """What happens to a message, as far as it is known on arrival."""

    ANSWER = "answer"  # commands and model replies proceed
    UNADDRESSED = "unaddressed"  # a group message not for the bot: answered only under /listen all
    IGNORED = "ignored"  # refused in a group (or again within the hour): silent, nothing stored
    REFUSED = "refused"  # refused in a private chat: one "not allowed" notice
    RATE_NOTICE = "rate_notice"  # over the rate limit: one notice per window
    RATE_DROP = "rate_drop"  # over the rate limit again: silent

    @property
    def engaged(self) -> bool:
        """Whether the bot will respond, so "typing…" may show at once."""
        return self in {Arrival.ANSWER, Arrival.REFUSED, Arrival.RATE_NOTICE}


class Gate:
    """The access policy and the rate limiter, applied in that order (a refused user's messages
    do not count against the rate limit)."""

    def __init__(self, policy: AccessPolicy, limiter: RateLimiter) -> None:
        self._policy = policy
        self._limiter = limiter

    def on_arrival(self, event: ChatEvent) -> Arrival:
        """The decision for a new message (call once per message: it counts notices and rates)."""
        if self._policy.restricts:
            access = self._policy.check(event)
            if access is Access.REFUSE_WITH_NOTICE:
                return Arrival.REFUSED
            if access is Access.REFUSE_SILENTLY:
                return Arrival.IGNORED
        if not event.addressed:
            return Arrival.UNADDRESSED
        return self.rate(event)

    def rate(self, event: ChatEvent) -> Arrival:
        """The rate limit's decision for `event` (counts it)."""
        if not event.rate_limited:
            return Arrival.ANSWER
        verdict = self._limiter.check(event.user_key)
        if verdict is Verdict.ALLOW:
            return Arrival.ANSWER
        return Arrival.RATE_NOTICE if verdict is Verdict.NOTIFY else Arrival.RATE_DROP

    def refusal_text(self, arrival: Arrival, event: ChatEvent) -> str | None:
        """The notice for a refused or rate-limited message; None for a silent one."""
        if arrival is Arrival.REFUSED:
            return REFUSED_REPLY
        if arrival is Arrival.RATE_NOTICE:
            seconds = max(1, round(self._limiter.retry_after(event.user_key)))
            return RATE_LIMIT_REPLY.format(seconds=seconds)
        return None

    def retry_after(self, user_key: str) -> float:
        """Seconds until `user_key` may send again (for stateless completions)."""
        return self._limiter.retry_after(user_key)

    def allows_completion(self, user_key: str) -> bool:
        """The rate limit for a stateless completion (counts it)."""
        return self._limiter.check(user_key) is Verdict.ALLOW
