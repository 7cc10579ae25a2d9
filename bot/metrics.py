"""What the engine reports for monitoring, and its Prometheus implementation.

The engine only sees `EngineMetrics` (three calls); `PrometheusMetrics` keeps the
`prometheus-client` objects in a registry of its own, not the library's global one, so that
several applications in one process (tests) never collide. `prometheus-client` is imported only
here, when metrics are on (the `ops` extra).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from bot.failures import ERROR_RULES

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

# Reply latency, from the message reaching the engine to the reply stored: a local CPU model takes
# seconds to minutes, an echo or a fast inference server milliseconds.
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)

# The `kind` label of chinwag_generation_errors_total: each kind of the failure policy's table, once.
ERROR_KINDS: tuple[str, ...] = tuple(dict.fromkeys(rule.kind for rule in ERROR_RULES))

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class EngineMetrics(Protocol):
    """The engine's narrow view of monitoring. Labels are platform names and error kinds only,
    never a channel, user or text."""

    def message_handled(self, platform: str) -> None:
        """One event of `platform` went through the engine (answered, a command, a notice...)."""
        ...

    def reply_finished(self, latency_s: float, chunks: int) -> None:
        """A model reply was stored: `latency_s` since the event reached the engine, `chunks`
        streamed pieces of text (one per token for the local model, one per server event for a
        remote one)."""
        ...

    def generation_failed(self, kind: str) -> None:
        """A reply failed; `kind` is one of `ERROR_KINDS`."""
        ...


class NoMetrics:
    """Records nothing (metrics off, or the tests that do not look)."""

    def message_handled(self, platform: str) -> None:
        """Nothing."""

    def reply_finished(self, latency_s: float, chunks: int) -> None:
        """Nothing."""

    def generation_failed(self, kind: str) -> None:
        """Nothing."""


class PrometheusMetrics:
    """`EngineMetrics` as Prometheus series in a private registry; `render()` is the /metrics body.

    - `chinwag_messages_total{platform}`: events handled
    - `chinwag_reply_latency_seconds`: histogram of answered messages
    - `chinwag_tokens_generated_total`: streamed chunks of stored replies (tokens for the local model)
    - `chinwag_generation_errors_total{kind}`: failed replies by kind
    - `chinwag_queue_depth`: messages in the engine (waiting or being answered), read at scrape time
    - `chinwag_backend_queue_depth`: generations in the local model's batch scheduler (waiting,
      prefilling or generating), when there is one
    """

    def __init__(self) -> None:
        """Raises `ModuleNotFoundError` when prometheus-client is not installed."""
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=True)
        self._messages = Counter(
            "chinwag_messages", "Messages handled by the engine", ["platform"], registry=self.registry
        )
        self._latency = Histogram(
            "chinwag_reply_latency_seconds",
            "Time from a message reaching the engine to its reply being stored",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._tokens = Counter(
            "chinwag_tokens_generated",
            "Streamed text chunks of stored replies (tokens for the local model)",
            registry=self.registry,
        )
        self._errors = Counter(
            "chinwag_generation_errors", "Replies that failed, by kind", ["kind"], registry=self.registry
        )
        for kind in ERROR_KINDS:  # present at 0 from the start, so rate() works at the first error
            self._errors.labels(kind=kind)
        self._queue_depth = Gauge(
            "chinwag_queue_depth", "Messages in the engine: waiting or being answered", registry=self.registry
        )
        self._backend_waiting = Gauge(
            "chinwag_backend_queue_depth",
            "Generations in the local model's batch scheduler (0 for other backends)",
            registry=self.registry,
        )

    def watch_queue(self, engine_depth: Callable[[], int], backend_waiting: Callable[[], int] | None) -> None:
        """Read the gauges from these callables at every scrape."""
        self._queue_depth.set_function(lambda: float(engine_depth()))
        if backend_waiting is not None:
            self._backend_waiting.set_function(lambda: float(backend_waiting()))

    def message_handled(self, platform: str) -> None:
        """See `EngineMetrics`."""
        self._messages.labels(platform=platform).inc()

    def reply_finished(self, latency_s: float, chunks: int) -> None:
        """See `EngineMetrics`."""
        self._latency.observe(latency_s)
        self._tokens.inc(chunks)

    def generation_failed(self, kind: str) -> None:
        """See `EngineMetrics`."""
        self._errors.labels(kind=kind).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every series."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


if TYPE_CHECKING:

    def _conforms(metrics: PrometheusMetrics, nothing: NoMetrics) -> tuple[EngineMetrics, EngineMetrics]:
        return metrics, nothing
