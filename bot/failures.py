"""The failure policy: for each error a reply can end with, what the user reads, the status the
reply finishes with, the metric kind it counts as and how it is logged. One table, `ERROR_RULES`;
and one for a model reply cut short (a timeout, the user's Stop, shutdown), `CUT_RULES`.

Notices follow the rule of `notice_after`: one that follows streamed text keeps its leading blank
line, one with nothing streamed before it drops it. No text of a failed reply is ever stored; a
reply cut short keeps what came (stored, marked with its `CutReason`, the notice not part of it),
and only one cut before any text is a notice like a failure's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.errors import (
    BackendBusy,
    BackendError,
    BackendRejected,
    BackendStreamBroken,
    BackendUnavailable,
    GenerationCancelled,
    GenerationTimeout,
    StorageError,
)
from bot.redact import redact
from bot.reply import CutReason, Reply, ReplyStatus

if TYPE_CHECKING:  # bot.metrics reads ERROR_RULES from here
    from bot.metrics import EngineMetrics

logger = logging.getLogger(__name__)

GENERATION_FAILED_REPLY = (
    "\n\nSorry, I couldn't finish that reply because of an internal error. Please try again."
)
GENERATION_TIMEOUT_REPLY = "\n\nSorry, that took too long and I had to stop. Please try again, maybe shorter."
STORAGE_FAILED_REPLY = "Sorry, I can't reach my memory right now. Please try again in a moment."
BUSY_REPLY = "I'm answering a lot of people right now. Please try again in a few seconds."
CANCELLED_NOTICE = "\n\n(Stopped before the end: the conversation was reset, or I am restarting.)"
SHUTDOWN_NOTICE = "\n\n(Stopped: the bot is shutting down.)"
# After the kept text of a reply cut short (the web page shows its own marker from the stored cut).
STOPPED_CUT_NOTICE = "\n\n(Stopped.)"
TIMEOUT_CUT_NOTICE = "\n\n(Cut short: that took too long, so I stopped here.)"
SHUTDOWN_CUT_NOTICE = "\n\n(Cut short: the bot is shutting down.)"
STOPPED_EMPTY_REPLY = "\n\n(Stopped before I had written anything.)"
# Remote model servers (openai / tgi backends). A chat message is stored before generating, so it
# is "saved"; a stateless completion (`ChatEngine.complete`) is not, and its replies do not say so.
UNAVAILABLE_REPLY = (
    "The model server is not reachable right now; your message is saved. Please try again shortly."
)
UNAVAILABLE_STATELESS_REPLY = "The model server is not reachable right now. Please try again shortly."
REJECTED_REPLY = (
    "Sorry, the model server refused this request (HTTP {status}).{saved} If this keeps happening, "
    "please tell the bot's operator."
)
SAVED_NOTE = " Your message is saved."
STREAM_BROKEN_REPLY = (
    "\n\n(The model server's answer broke off or came garbled, so I didn't keep it. Please try again.)"
)


@dataclass(frozen=True, slots=True)
class ErrorRule:
    """One row of the policy: `error` (a class or a tuple of them, as `isinstance` takes) maps to
    the rest.

    `notice` is a template: `{status}` becomes the server's HTTP status (`BackendRejected`) and
    `{saved}` becomes `SAVED_NOTE` when the user's message is stored. `stateless_notice`, when set,
    replaces `notice` for a stateless completion. `log` takes two arguments: where (a channel key
    or a user key) and the error; `traceback` adds the error's traceback to the log record.
    """

    error: type[BaseException] | tuple[type[BaseException], ...]
    kind: str
    status: ReplyStatus
    notice: str
    log_level: int
    log: str
    stateless_notice: str | None = None
    traceback: bool = False

    def text(self, error: BaseException, *, saved: bool) -> str:
        """The user's text for `error`, before `notice_after` places it."""
        template = self.notice if saved or self.stateless_notice is None else self.stateless_notice
        status = error.status if isinstance(error, BackendRejected) else None
        return template.format(
            status=status if status is not None else "error", saved=SAVED_NOTE if saved else ""
        )


# First match wins: subclasses come before their base (every generation error is a BackendError).
ERROR_RULES: tuple[ErrorRule, ...] = (
    # Not a failure for the user: nothing was tried, they may simply ask again.
    ErrorRule(
        BackendBusy,
        "busy",
        ReplyStatus.NOTICE,
        BUSY_REPLY,
        logging.WARNING,
        "backend busy, %s not answered: %s",
    ),
    ErrorRule(
        GenerationCancelled,
        "cancelled",
        ReplyStatus.FAILED,
        CANCELLED_NOTICE,
        logging.INFO,
        "generation in %s cancelled: %s",
    ),
    ErrorRule(
        GenerationTimeout,
        "timeout",
        ReplyStatus.FAILED,
        GENERATION_TIMEOUT_REPLY,
        logging.WARNING,
        "generation timed out in %s: %s",
    ),
    ErrorRule(
        BackendUnavailable,
        "unavailable",
        ReplyStatus.FAILED,
        "\n\n" + UNAVAILABLE_REPLY,
        logging.WARNING,
        "model server unavailable, %s not answered: %s",
        stateless_notice="\n\n" + UNAVAILABLE_STATELESS_REPLY,
    ),
    # A refusal will not go away by itself: the operator must look, hence ERROR.
    ErrorRule(
        BackendRejected,
        "rejected",
        ReplyStatus.FAILED,
        "\n\n" + REJECTED_REPLY,
        logging.ERROR,
        "model server refused the request for %s: %s",
    ),
    ErrorRule(
        BackendStreamBroken,
        "stream_broken",
        ReplyStatus.FAILED,
        STREAM_BROKEN_REPLY,
        logging.WARNING,
        "reply stream broke in %s: %s",
    ),
    # Any other backend error is a bug or a broken model: keep the traceback.
    ErrorRule(
        (BackendError, MemoryError),
        "backend",
        ReplyStatus.FAILED,
        GENERATION_FAILED_REPLY,
        logging.ERROR,
        "generation failed in %s: %s",
        traceback=True,
    ),
    ErrorRule(
        StorageError,
        "storage",
        ReplyStatus.FAILED,
        STORAGE_FAILED_REPLY,
        logging.ERROR,
        "storage failed for %s: %s",
    ),
)


@dataclass(frozen=True, slots=True)
class CutRule:
    """What a model reply cut short for one `CutReason` becomes.

    With text: the text is kept (stored by the engine) and `notice` follows it; the reply is
    ANSWERED. Without any: `empty_notice` alone, finishing with `empty_status`, as a failure would.
    `kind` is the metric it counts as (one of `ERROR_RULES`' kinds), None for none; `log` takes
    where (a channel key) and a detail.
    """

    notice: str
    empty_notice: str
    empty_status: ReplyStatus
    kind: str | None
    log_level: int
    log: str


CUT_RULES: dict[CutReason, CutRule] = {
    # The user's own choice: nothing to count or to warn about.
    CutReason.STOPPED: CutRule(
        STOPPED_CUT_NOTICE,
        STOPPED_EMPTY_REPLY,
        ReplyStatus.NOTICE,
        None,
        logging.INFO,
        "reply in %s stopped by the user: %s",
    ),
    CutReason.TIMEOUT: CutRule(
        TIMEOUT_CUT_NOTICE,
        GENERATION_TIMEOUT_REPLY,
        ReplyStatus.FAILED,
        "timeout",
        logging.WARNING,
        "reply in %s cut short by a timeout: %s",
    ),
    CutReason.SHUTDOWN: CutRule(
        SHUTDOWN_CUT_NOTICE,
        SHUTDOWN_NOTICE,
        ReplyStatus.FAILED,
        "cancelled",
        logging.INFO,
        "reply in %s cut short by shutdown: %s",
    ),
}


# What a generation may raise that the policy turns into a reply (a StorageError cannot come from it).
GENERATION_ERRORS: tuple[type[BaseException], ...] = (BackendError, MemoryError)


def rule_for(error: BaseException) -> ErrorRule | None:
    """The row for `error`, or None when the policy does not know it (an unexpected error)."""
    return next((rule for rule in ERROR_RULES if isinstance(error, rule.error)), None)


def notice_after(reply: Reply, notice: str) -> str:
    """`notice` as it follows the text already streamed into `reply`: without its leading blank
    line when nothing was streamed."""
    return notice if reply.text_so_far() else notice.lstrip()


async def report_error(
    error: BaseException, reply: Reply, metrics: EngineMetrics, where: str, *, saved: bool
) -> ReplyStatus:
    """Log and count `error` and push its notice into `reply`; return the status to finish with.
    `error` must have a row (see `rule_for`); `saved`: the user's message is in the history."""
    rule = rule_for(error)
    if rule is None:
        raise ValueError(f"no failure policy for {type(error).__name__}") from error
    # Redacted both: a storage error can name the channel it failed for (e.g. a lock's).
    logger.log(
        rule.log_level,
        rule.log,
        redact(where),
        redact(str(error)),
        exc_info=error if rule.traceback else None,
    )
    metrics.generation_failed(rule.kind)
    await reply.push(notice_after(reply, rule.text(error, saved=saved)))
    return rule.status


async def report_unexpected(reply: Reply, what: str) -> ReplyStatus:
    """An error the table does not know (a bug): log it with its traceback (call this inside the
    `except`) and tell the user; return the status to finish with."""
    logger.exception("unexpected error %s", what)
    await reply.push(notice_after(reply, GENERATION_FAILED_REPLY))
    return ReplyStatus.FAILED


async def report_cut(
    reason: CutReason, reply: Reply, metrics: EngineMetrics, where: str, detail: str, *, kept: bool
) -> ReplyStatus:
    """Log and count a model reply cut short for `reason` (`detail` says how, for the log) and push
    its notice into `reply`; return the status to finish with. `kept`: text came and the engine
    stores it (ANSWERED); otherwise nothing is kept (no text came, or a stateless completion) and
    the reply ends as a failure's would, with the empty notice after whatever was streamed."""
    rule = CUT_RULES[reason]
    logger.log(rule.log_level, rule.log, redact(where), detail)
    if rule.kind is not None:
        metrics.generation_failed(rule.kind)
    if kept:
        await reply.push(rule.notice)
        return ReplyStatus.ANSWERED
    await reply.push(notice_after(reply, rule.empty_notice))
    return rule.empty_status
