"""The failure policy table and the metric kinds derived from it."""

from __future__ import annotations

import pytest

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
from bot.failures import (
    BUSY_REPLY,
    ERROR_RULES,
    GENERATION_ERRORS,
    REJECTED_REPLY,
    SAVED_NOTE,
    STORAGE_FAILED_REPLY,
    UNAVAILABLE_REPLY,
    UNAVAILABLE_STATELESS_REPLY,
    notice_after,
    rule_for,
)
from bot.metrics import ERROR_KINDS, PrometheusMetrics
from bot.reply import Reply, ReplyStatus


@pytest.mark.parametrize(
    ("error", "kind", "status"),
    [
        (BackendBusy("full"), "busy", ReplyStatus.NOTICE),
        (GenerationCancelled("reset"), "cancelled", ReplyStatus.FAILED),
        (GenerationTimeout("slow"), "timeout", ReplyStatus.FAILED),
        (BackendUnavailable("down"), "unavailable", ReplyStatus.FAILED),
        (BackendRejected("no", status=401), "rejected", ReplyStatus.FAILED),
        (BackendStreamBroken("cut"), "stream_broken", ReplyStatus.FAILED),
        (BackendError("boom"), "backend", ReplyStatus.FAILED),
        (MemoryError(), "backend", ReplyStatus.FAILED),
        (StorageError("db"), "storage", ReplyStatus.FAILED),
    ],
)
def test_each_error_finds_its_own_row(error: BaseException, kind: str, status: ReplyStatus) -> None:
    rule = rule_for(error)
    assert rule is not None
    assert (rule.kind, rule.status) == (kind, status)


def test_no_row_is_shadowed_by_an_earlier_one_and_an_unknown_error_has_none() -> None:
    for rule in ERROR_RULES:
        classes = rule.error if isinstance(rule.error, tuple) else (rule.error,)
        for error_class in classes:
            assert rule_for(error_class("x")) is rule
            # The engine catches GENERATION_ERRORS around a generation; storage errors elsewhere.
            assert issubclass(error_class, GENERATION_ERRORS) != (rule.kind == "storage")
    assert rule_for(ValueError("a bug")) is None


def test_texts_say_saved_only_for_a_stored_message() -> None:
    unavailable = rule_for(BackendUnavailable("down"))
    rejected = rule_for(BackendRejected("no", status=401))
    unknown_status = rule_for(BackendRejected("no"))
    assert unavailable is not None and rejected is not None and unknown_status is not None
    assert unavailable.text(BackendUnavailable("down"), saved=True) == "\n\n" + UNAVAILABLE_REPLY
    assert unavailable.text(BackendUnavailable("down"), saved=False) == "\n\n" + UNAVAILABLE_STATELESS_REPLY
    assert rejected.text(BackendRejected("no", status=401), saved=True) == "\n\n" + REJECTED_REPLY.format(
        status=401, saved=SAVED_NOTE
    )
    assert rejected.text(BackendRejected("no", status=401), saved=False) == "\n\n" + REJECTED_REPLY.format(
        status=401, saved=""
    )
    assert "(HTTP error)" in unknown_status.text(BackendRejected("no"), saved=False)


async def test_a_notice_keeps_its_blank_line_only_after_streamed_text() -> None:
    reply = Reply()
    assert notice_after(reply, "\n\n(Stopped.)") == "(Stopped.)"
    assert notice_after(reply, BUSY_REPLY) == BUSY_REPLY
    await reply.push("half a rep")
    assert notice_after(reply, "\n\n(Stopped.)") == "\n\n(Stopped.)"
    assert notice_after(reply, STORAGE_FAILED_REPLY) == STORAGE_FAILED_REPLY


def test_every_kind_of_the_table_is_exported_at_zero_from_the_start() -> None:
    assert set(ERROR_KINDS) == {rule.kind for rule in ERROR_RULES}
    assert {"unavailable", "rejected", "stream_broken"} <= set(ERROR_KINDS)
    text = PrometheusMetrics().render().decode()
    for kind in ERROR_KINDS:
        assert f'chinwag_generation_errors_total{{kind="{kind}"}} 0.0' in text
