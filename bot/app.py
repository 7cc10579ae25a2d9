"""The composition root: builds storage, backend, engine and adapters, starts and stops them."""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from adapters.base import Adapter
from bot.backends.base import Backend
from bot.backends.batching_settings import BatchingSettings
from bot.backends.remote_retry import RetryPolicy
from bot.config import BatchingConfig, ModelConfig, Settings
from bot.engine import ChatEngine
from bot.errors import ConfigError
from bot.health import Readiness, backend_check
from bot.metrics import PrometheusMetrics
from storage.db import Database, DatabaseOptions
from storage.locks import channel_locks_for
from storage.repository import ChatRepository

logger = logging.getLogger(__name__)

# Loggers that print request URLs (which contain bot tokens) at INFO, or chatter: kept at WARNING.
# python-telegram-bot logs its API URL, token included, at DEBUG; at INFO it only says "Application
# started/stopping" (our adapter logs that itself), and its warnings and errors still show.
# httpx2 (under openai and huggingface_hub) logs every model request at INFO, and the client
# libraries log request options at DEBUG.
_CHATTY_LOGGERS = (
    "httpx",
    "httpcore",
    "httpx2",
    "httpcore2",
    "openai",
    "huggingface_hub",
    "urllib3",
    "aiosqlite",
    "asyncio",
    "telegram",
)


def configure_logging(level: str) -> None:
    """Log to stderr (stdout belongs to the terminal chat) and silence URL-logging libraries."""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def build_backend(model: ModelConfig) -> Backend:
    """The backend `model.backend` names. Each is imported lazily: local pulls in torch, openai
    and tgi their client packages (the `remote` extra)."""
    match model.backend:
        case "echo":
            from bot.backends.echo import EchoBackend

            return EchoBackend()
        case "local":
            from bot.backends.local import LocalBackend

            batching = model.batching
            return LocalBackend(
                model.path,
                cache_dir=Path(model.cache_dir).expanduser(),
                prompt_format=model.prompt_format,
                context_window=model.context_window,
                generation_timeout_s=model.generation_timeout_s,
                threads=model.threads,
                dtype=model.dtype,
                batching=batching_settings(model.batching),
                truncation_slack=batching.truncation_slack,
            )
        case "openai":
            from bot.backends.openai_chat import OpenAIChatBackend

            if not model.base_url or not model.name:
                raise ConfigError("model.base_url and model.name are required for the openai backend")
            return OpenAIChatBackend(
                base_url=model.base_url,
                model_name=model.name,
                api_key=model.api_key.get_secret_value() if model.api_key else None,
                context_window=model.context_window,
                connect_timeout_s=model.connect_timeout_s,
                read_timeout_s=model.read_timeout_s,
                retry=retry_policy(model),
            )
        case "tgi":
            from bot.backends.tgi import TGIBackend

            if not model.base_url:
                raise ConfigError("model.base_url is required for the tgi backend")
            return TGIBackend(
                base_url=model.base_url,
                api_key=model.api_key.get_secret_value() if model.api_key else None,
                prompt_format=model.prompt_format,
                context_window=model.context_window,
                connect_timeout_s=model.connect_timeout_s,
                read_timeout_s=model.read_timeout_s,
                retry=retry_policy(model),
            )
        case other:
            raise ConfigError(f"model.backend: '{other}' is not a known backend")


def retry_policy(model: ModelConfig) -> RetryPolicy:
    """`model.max_retries` / `model.retry_backoff_s` for the remote backends."""
    return RetryPolicy(max_retries=model.max_retries, backoff_s=model.retry_backoff_s)


def batching_settings(config: BatchingConfig) -> BatchingSettings | None:
    """`model.batching` for the scheduler; None when batching is off."""
    if not config.enabled:
        return None
    return BatchingSettings(
        max_batch=config.max_batch,
        max_waiting=config.max_waiting,
        prefill_chunk_tokens=config.prefill_chunk_tokens,
        context_cache_bytes=config.context_cache_mb * 2**20,
    )


# Platform adapter modules, in start-up order. Each exposes
# `create(settings: Settings, services: Services) -> Adapter | None` (None: not configured, e.g. no
# token) and is imported only when enabled, so a missing platform library never stops the others.
ADAPTER_MODULES: tuple[str, ...] = ("web", "telegram", "discord")


@dataclass(frozen=True, slots=True)
class Services:
    """What an adapter may use: the engine, and the storage seams adapters are allowed to touch
    (none of the message history: that belongs to the engine); the readiness probe and the
    metrics (None when off) for the web server's operations endpoints."""

    engine: ChatEngine
    database: Database
    readiness: Readiness | None = None
    metrics: PrometheusMetrics | None = None


def database_options(settings: Settings) -> DatabaseOptions:
    """The `storage:` pool settings."""
    storage = settings.storage
    return DatabaseOptions(
        pool_size=storage.pool_size,
        max_overflow=storage.max_overflow,
        pool_timeout_s=storage.pool_timeout_s,
        lock_connections=storage.lock_connections,
        lock_wait_timeout_s=storage.lock_wait_timeout_s,
        sqlite_synchronous=storage.sqlite_synchronous,
    )


def build_metrics(settings: Settings) -> PrometheusMetrics | None:
    """Prometheus metrics when `web.metrics` is on and prometheus-client is installed."""
    if not (settings.web.enabled and settings.web.metrics):
        return None
    try:
        return PrometheusMetrics()
    except ModuleNotFoundError:
        logger.warning("web.metrics is on but prometheus-client is not installed: /metrics is off")
        return None


def build_adapters(settings: Settings, services: Services) -> list[Adapter]:
    """The platform adapters enabled in `settings` that are configured to start."""
    adapters: list[Adapter] = []
    for name in ADAPTER_MODULES:
        if not getattr(settings, name).enabled:
            continue
        try:
            module = importlib.import_module(f"adapters.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"adapters.{name}":
                raise
            logger.warning("the %s adapter is enabled but not available in this version yet", name)
            continue
        adapter = module.create(settings, services)
        if adapter is None:
            logger.info("the %s adapter is enabled but not configured (no token): not started", name)
        else:
            adapters.append(adapter)
    return adapters


class Application:
    """Owns every long-lived object. Use as `async with Application(settings) as app:`.

    Start-up that fails halfway releases what was already started; shutdown runs in reverse order.
    """

    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        self.settings = settings
        self._backend = backend if backend is not None else build_backend(settings.model)
        self._stack = AsyncExitStack()
        self._engine: ChatEngine | None = None
        self._services: Services | None = None

    @property
    def engine(self) -> ChatEngine:
        """The running engine (only inside `async with`)."""
        if self._engine is None:
            raise RuntimeError("the application is not started")
        return self._engine

    @property
    def services(self) -> Services:
        """What adapters get (only inside `async with`)."""
        if self._services is None:
            raise RuntimeError("the application is not started")
        return self._services

    async def __aenter__(self) -> Application:
        try:
            database = Database(
                self.settings.storage.url.get_secret_value(), options=database_options(self.settings)
            )
            await database.start()
            self._stack.push_async_callback(database.stop)
            await self._backend.start()
            self._stack.push_async_callback(self._backend.stop)
            metrics = build_metrics(self.settings)
            engine = ChatEngine(
                ChatRepository(database),
                self._backend,
                self.settings.model,
                self.settings.chat,
                locks=channel_locks_for(database),
                metrics=metrics,
            )
            self._stack.push_async_callback(engine.close)
            if metrics is not None:
                metrics.watch_queue(lambda: engine.stats.in_flight, _scheduler_depth(self._backend))
            readiness = Readiness({"database": database.ping, "backend": backend_check(self._backend)})
            self._engine = engine
            self._services = Services(engine=engine, database=database, readiness=readiness, metrics=metrics)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._engine = None
        self._services = None
        await self._stack.aclose()


async def serve(settings: Settings) -> None:
    """`python -m bot run`: run every enabled adapter until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with Application(settings) as app, AsyncExitStack() as adapters:
        started = []
        for adapter in build_adapters(settings, app.services):
            await adapter.start()
            adapters.push_async_callback(adapter.stop)
            started.append(adapter.name)
        if started:
            logger.info("running adapters: %s", ", ".join(started))
        else:
            logger.warning("no platform adapter is running; `python -m bot chat` opens the terminal chat")
        logger.info("Chinwag is up; press Ctrl-C to stop")
        await stop.wait()
        logger.info("shutting down")


def _scheduler_depth(backend: Backend) -> Callable[[], int] | None:
    """The local backend's batch scheduler depth, when it has one (read at each scrape)."""
    if not hasattr(backend, "scheduler"):
        return None

    def depth() -> int:
        scheduler = getattr(backend, "scheduler", None)
        return int(getattr(scheduler, "depth", 0)) if scheduler is not None else 0

    return depth
