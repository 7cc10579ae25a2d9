"""Who may talk to the bot: the `access:` lists, Discord roles and the direct-messages switch.

One decision per message, from the facts the adapter put on the event (who wrote, where, with
which roles, staff or not); the adapters decide nothing. The order of the rules:

1. staff (configured admins, a group's or guild's administrators) always pass;
2. a blocked user, channel or role is refused (blocked wins over allowed);
3. with `direct_messages: false`, private chats and DMs are refused;
4. a non-empty allowed list (users, channels, Discord roles in guilds) must name the message's.

A refused message costs no model call and is not stored: in a private chat the user gets a short
"not allowed" notice at most once per `NOTICE_INTERVAL_S`, in groups the bot stays silent.
"""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass

from bot.config import AccessConfig
from bot.events import ChatEvent

NOTICE_INTERVAL_S = 3600.0
# Users whose last notice time is remembered; the oldest are forgotten first (they may get a
# second notice within the hour, which is harmless), so a flood of new ids cannot grow memory.
MAX_REMEMBERED_USERS = 100_000
REFUSED_REPLY = (
    "Sorry, you are not allowed to talk to me here. Ask an admin of this bot if you think you should be."
)


class Access(enum.Enum):
    """The policy's answer for one message."""

    ALLOW = "allow"
    REFUSE_WITH_NOTICE = "refuse_with_notice"  # private chat, first refusal this hour: say so
    REFUSE_SILENTLY = "refuse_silently"  # a group, or a private chat already told this hour


@dataclass(frozen=True, slots=True)
class RoleRules:
    """A platform's role lists (only Discord has roles): ids as strings, like `ChatEvent.roles`."""

    allowed: frozenset[str] = frozenset()
    blocked: frozenset[str] = frozenset()


class AccessPolicy:
    """Decides whether a message may reach the model; see the module's rules."""

    def __init__(
        self,
        config: AccessConfig,
        roles: dict[str, RoleRules] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._allowed_users = frozenset(config.allowed_users)
        self._blocked_users = frozenset(config.blocked_users)
        self._allowed_channels = frozenset(config.allowed_channels)
        self._blocked_channels = frozenset(config.blocked_channels)
        self._roles = roles or {}
        self._clock = clock
        self._last_notice: OrderedDict[str, float] = OrderedDict()

    @property
    def restricts(self) -> bool:
        """False when every message passes (no list, DMs on): the check is then skipped."""
        return bool(
            self._allowed_users
            or self._blocked_users
            or self._allowed_channels
            or self._blocked_channels
            or not self._config.direct_messages
            or any(rules.allowed or rules.blocked for rules in self._roles.values())
        )

    def permits(self, event: ChatEvent) -> bool:
        """Whether the rules let `event`'s author talk to the bot in its channel."""
        if event.is_staff:
            return True
        if event.user_key in self._blocked_users or event.channel_key in self._blocked_channels:
            return False
        rules = self._roles.get(event.platform)
        in_guild = not event.is_direct
        if rules is not None and in_guild and _holds_any(event.roles, rules.blocked):
            return False
        if event.is_direct and not self._config.direct_messages:
            return False
        if self._allowed_users and event.user_key not in self._allowed_users:
            return False
        if self._allowed_channels and event.channel_key not in self._allowed_channels:
            return False
        return not (
            rules is not None and in_guild and rules.allowed and not _holds_any(event.roles, rules.allowed)
        )

    def check(self, event: ChatEvent) -> Access:
        """The decision for `event`, counting the notice it may get (call once per message)."""
        if self.permits(event):
            return Access.ALLOW
        if not event.is_direct:
            return Access.REFUSE_SILENTLY
        now = self._clock()
        last = self._last_notice.get(event.user_key)
        if last is not None and now - last < NOTICE_INTERVAL_S:
            return Access.REFUSE_SILENTLY
        self._last_notice[event.user_key] = now
        self._last_notice.move_to_end(event.user_key)
        while len(self._last_notice) > MAX_REMEMBERED_USERS:
            self._last_notice.popitem(last=False)
        return Access.REFUSE_WITH_NOTICE


def _holds_any(held: Collection[str], wanted: frozenset[str]) -> bool:
    return any(role in wanted for role in held)
