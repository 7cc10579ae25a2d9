"""Readiness: can this process answer messages right now (database and model backend reachable)?"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from bot.backends.base import Backend, backend_ready

# A probe answers quickly or counts as failed: orchestrators call it every few seconds.
DEFAULT_CHECK_TIMEOUT_S = 2.0
_MAX_DETAIL = 200

Check = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class ReadinessReport:
    """`checks` maps each check's name to "ok" or a one-line reason."""

    ready: bool
    checks: dict[str, str]


class Readiness:
    """Runs named checks concurrently, each bounded by `timeout_s`. A check fails when it raises,
    returns False, or does not finish in time."""

    def __init__(self, checks: Mapping[str, Check], *, timeout_s: float = DEFAULT_CHECK_TIMEOUT_S) -> None:
        self._checks = dict(checks)
        self._timeout_s = timeout_s

    async def check(self) -> ReadinessReport:
        """Run every check once."""
        names = list(self._checks)
        results = await asyncio.gather(*(self._run(self._checks[name]) for name in names))
        checks = dict(zip(names, results, strict=True))
        return ReadinessReport(ready=all(result == "ok" for result in results), checks=checks)

    async def _run(self, check: Check) -> str:
        try:
            async with asyncio.timeout(self._timeout_s):
                result = await check()
        except TimeoutError:
            return f"no answer within {self._timeout_s:g} s"
        except Exception as exc:  # any failure means "not ready"; the reason is shown, not raised
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
            return text[:_MAX_DETAIL]
        return "not ready" if result is False else "ok"


def backend_check(backend: Backend) -> Check:
    """`backend_ready(backend)`: its `ping()` when it has one (a ping that raises also counts as
    not ready here); otherwise a backend that started is ready."""
    return lambda: backend_ready(backend)
