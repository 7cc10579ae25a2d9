"""Small pure pieces: command parsing, sanitizing, the rate limiter."""

from __future__ import annotations

import pytest

from bot.commands import Command, parse_command
from bot.ratelimit import RateLimiter, Verdict
from bot.sanitize import clip, decode_text, sanitize_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/reset", Command("reset", "")),
        ("  /RESET@ChinwagBot  ", Command("reset", "")),
        ("/system You are  terse.", Command("system", "You are  terse.")),
        ("/system\nline one\nline two", Command("system", "line one\nline two")),
        ("/temperature 0.3", Command("temperature", "0.3")),
        ("hello /reset", None),
        ("/", None),
        ("/ reset", None),
        ("//comment", None),
        ("/😀", None),
    ],
)
def test_parse_command(text: str, expected: Command | None) -> None:
    assert parse_command(text) == expected


def test_sanitize_keeps_text_and_removes_what_breaks_things() -> None:
    assert sanitize_text("Grüße, 世界! 😀\n\ttab") == "Grüße, 世界! 😀\n\ttab"
    assert sanitize_text("a\x00b\x7fc\x9bd") == "abcd"
    assert sanitize_text("line\r\nnext\rlast") == "line\nnext\nlast"
    assert sanitize_text("lone \udc80 surrogate") == "lone \ufffd surrogate"
    assert sanitize_text("pair \ud83d\ude00 joined") == "pair 😀 joined"
    assert sanitize_text("e\u0301") == "é"  # NFC: one code point, so limits count what people see
    sanitize_text("x").encode("utf-8")


def test_decode_text_never_fails_on_invalid_utf8() -> None:
    assert decode_text(b"ok \xff\xfe \xc3\xa9") == "ok \ufffd\ufffd é"


def test_clip() -> None:
    assert clip("abc", 3) == ("abc", False)
    assert clip("abcd", 3) == ("abc", True)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_allows_then_notifies_once_then_drops_until_the_window_moves() -> None:
    clock = FakeClock()
    limiter = RateLimiter(3, 60, clock=clock)
    assert [limiter.check("u") for _ in range(3)] == [Verdict.ALLOW] * 3
    assert limiter.check("u") is Verdict.NOTIFY
    assert limiter.check("u") is Verdict.DROP
    assert limiter.retry_after("u") == pytest.approx(60)
    assert limiter.check("other") is Verdict.ALLOW
    clock.now += 30
    assert limiter.check("u") is Verdict.DROP
    clock.now += 31  # the oldest messages left the window
    assert limiter.check("u") is Verdict.ALLOW
    assert limiter.retry_after("other") == 0


def test_rate_limiter_memory_is_bounded() -> None:
    limiter = RateLimiter(1, 60, max_users=100, clock=FakeClock())
    for i in range(1000):
        limiter.check(f"user-{i}")
    assert len(limiter) == 100
