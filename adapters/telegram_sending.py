"""Sending to Telegram: Bot API calls under the retry policy, and the delivery sink of one reply.

Replies are Markdown rendered to Telegram HTML (`telegram_format.py`), each message and each
streamed preview well-formed on its own. Should Telegram still refuse the formatting ("can't parse
entities"), the same message goes out as plain text, and so does the rest of that reply. 429s are
waited out, connection failures retried with backoff, a group upgraded to a supergroup
(`ChatMigrated`) followed to its new id. Log lines name error types only: a library error's text
can hold the URL, and with it the token.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from telegram import Bot, Message, ReplyParameters
from telegram.constants import ChatAction
from telegram.error import BadRequest, ChatMigrated, NetworkError, RetryAfter, TelegramError, TimedOut

from adapters.retrying import call_with_retries
from adapters.telegram_format import PARSE_MODE, plain_text, telegram_html_pieces
from bot.backoff import Backoff

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
BACKOFF = Backoff()

_T = TypeVar("_T")

FollowMigration = Callable[[int, int], Awaitable[None]]
"""Moves a group's conversation from its old chat id to the new one (see the adapter)."""


@dataclass(slots=True)
class Target:
    """Where a reply goes; `chat_id` changes when the group turns out to have migrated."""

    chat_id: int
    thread_id: int | None
    reply_to: int | None


def retry_after_s(error: RetryAfter) -> float:
    """The wait a 429 asks for, in seconds."""
    with warnings.catch_warnings():  # the int form is deprecated in favour of timedelta (22.2+)
        warnings.simplefilter("ignore")
        value = error.retry_after
    return max(0.0, value.total_seconds() if isinstance(value, timedelta) else float(value))


async def request(
    call: Callable[[], Awaitable[_T]], target: Target | None, follow_migration: FollowMigration
) -> _T:
    """Run one Bot API call, waiting out 429s, retrying connection failures with backoff and
    following a migrated group (`target.chat_id` is updated; without a target it is raised).
    Timeouts are not retried: the message may have arrived, and a retry would post it twice."""

    async def retry_delay(error: Exception, attempt: int) -> float | None:
        if isinstance(error, RetryAfter):
            delay = retry_after_s(error)
            logger.warning("telegram: rate limited; waiting %.1f s", delay)
            return delay
        if isinstance(error, ChatMigrated) and target is not None:
            await follow_migration(target.chat_id, error.new_chat_id)
            target.chat_id = error.new_chat_id
            target.reply_to = None  # the user's message stayed in the old chat
            return 0.0
        if isinstance(error, NetworkError) and not isinstance(error, BadRequest | TimedOut):
            delay = BACKOFF.delay(attempt)
            logger.warning("telegram: request failed (%s); retrying in %.1f s", type(error).__name__, delay)
            return delay
        return None

    return await call_with_retries(call, retry_delay, attempts=MAX_ATTEMPTS)


def refused_formatting(error: BadRequest) -> bool:
    """Whether Telegram refused a message's markup (rather than the message)."""
    return "can't parse entities" in str(error).lower()


class TelegramSink:
    """One reply's way into a Telegram chat (a `adapters.delivery.Sink`).

    Its messages are Telegram HTML (`pieces`). After Telegram refuses the formatting once, the
    message is sent or edited again as plain text (`plain_text`), and the rest of the reply goes
    out plain without trying: one warning per reply, no message lost.
    """

    def __init__(self, bot: Bot, target: Target, follow_migration: FollowMigration) -> None:
        self._bot = bot
        self._target = target
        self._follow_migration = follow_migration
        self._plain = False  # Telegram refused this reply's formatting: send the rest plain

    def pieces(self, text: str) -> list[str]:
        return telegram_html_pieces(text)

    async def send(self, text: str, *, quote: bool) -> Message:
        if not self._plain:
            try:
                return await self._send(text, PARSE_MODE, quote=quote)
            except BadRequest as error:
                if not refused_formatting(error):
                    raise
                self._refused(error)
        return await self._send(plain_text(text), None, quote=quote)

    async def _send(self, text: str, parse_mode: str | None, *, quote: bool) -> Message:
        target = self._target

        def send() -> Awaitable[Message]:
            # Read at each try: a migration clears `reply_to` (the quoted message stayed behind).
            reply_to = target.reply_to if quote else None
            return self._bot.send_message(
                chat_id=target.chat_id,
                text=text,
                parse_mode=parse_mode,
                message_thread_id=target.thread_id,
                reply_parameters=(
                    ReplyParameters(reply_to, allow_sending_without_reply=True)
                    if reply_to is not None
                    else None
                ),
            )

        return await request(send, target, self._follow_migration)

    async def edit(self, message: Message, text: str) -> bool:
        if not self._plain:
            try:
                return await self._edit(message, text, PARSE_MODE)
            except BadRequest as error:
                if not refused_formatting(error):
                    raise
                self._refused(error)
        return await self._edit(message, plain_text(text), None)

    async def _edit(self, message: Message, text: str, parse_mode: str | None) -> bool:
        """Set the text; True when it shows (also when it showed already). A refused formatting
        raises; any other refusal (the message was deleted…) is logged and gives False."""
        target = self._target

        async def edit() -> None:
            await self._bot.edit_message_text(
                chat_id=target.chat_id, message_id=message.message_id, text=text, parse_mode=parse_mode
            )

        try:
            await request(edit, target, self._follow_migration)
        except BadRequest as error:
            if "not modified" in str(error).lower():
                return True
            if parse_mode is not None and refused_formatting(error):
                raise
            logger.warning("telegram: could not edit a reply in %d (%s)", target.chat_id, error.message)
            return False
        return True

    def _refused(self, error: BadRequest) -> None:
        self._plain = True
        logger.warning(
            "telegram: formatting refused in %d (%s); this reply goes out as plain text",
            self._target.chat_id,
            error.message,
        )

    async def typing(self) -> None:
        # Cosmetic: never retry or fail a reply over a typing indicator.
        with contextlib.suppress(TelegramError):
            await self._bot.send_chat_action(
                chat_id=self._target.chat_id,
                action=ChatAction.TYPING,
                message_thread_id=self._target.thread_id,
            )
