"""Private web channel ids (credentials) never appear in log text: `bot.redact`."""

from __future__ import annotations

import hashlib
import logging

import pytest

from bot.errors import StorageError
from bot.failures import report_error
from bot.metrics import NoMetrics
from bot.redact import redact
from bot.reply import Reply, ReplyStatus

PRIVATE = "p-4mS9_xY2-Kq7Lw0Bv8Nc3Rt6Hj1Zd5Ue"  # the shape of the id the chat page makes
HASHED = "p-…#" + hashlib.sha256(PRIVATE.encode()).hexdigest()[:8]


def test_a_private_id_becomes_a_short_stable_hash_wherever_it_stands() -> None:
    assert redact(f"web:{PRIVATE}") == f"web:{HASHED}"
    assert redact(f"/api/channels/{PRIVATE}/messages") == f"/api/channels/{HASHED}/messages"
    assert redact(f"chinwag:web:{PRIVATE} and web:{PRIVATE}") == f"chinwag:web:{HASHED} and web:{HASHED}"
    assert redact(f"web:{PRIVATE}") == redact(f"web:{PRIVATE}")  # stable: an operator can look it up
    assert redact("web:p-" + "A" * 32) != redact("web:p-" + "B" * 32)


@pytest.mark.parametrize(
    "text",
    [
        "telegram:-100123",
        "console:local",
        "web:room-1",
        "web:p-short",  # a named channel, too short to be a page's private id
        "web:ip-" + "a" * 30,  # a client pseudonym (user key), not a channel id
        "web:xp-" + "a" * 30,
    ],
)
def test_other_keys_are_left_alone(text: str) -> None:
    assert redact(text) == text


async def test_a_failure_log_names_neither_the_id_nor_an_error_that_contains_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    error = StorageError(f"cannot lock channel web:{PRIVATE}: TimeoutError")
    status = await report_error(error, Reply(), NoMetrics(), f"web:{PRIVATE}", saved=False)
    assert status is ReplyStatus.FAILED
    assert caplog.messages == [
        f"storage failed for web:{HASHED}: cannot lock channel web:{HASHED}: TimeoutError"
    ]
