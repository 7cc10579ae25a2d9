"""The one backoff formula."""

from __future__ import annotations

from bot.backoff import Backoff


def test_the_delay_doubles_from_the_base_and_stops_at_the_cap() -> None:
    backoff = Backoff(base_s=0.5, max_s=30.0)
    assert [backoff.delay(n) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.delay(5000) == 30.0  # no float overflow after a long outage


def test_the_defaults_are_the_adapters_retry_pace() -> None:
    assert (Backoff().delay(1), Backoff().delay(10)) == (1.0, 30.0)
