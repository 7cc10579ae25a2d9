"""The composition root: builds storage, backend, engine and adapters, starts and stops them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from adapters.base import Adapter
from bot.access import RoleRules
from bot.backends.base import Backend, QueueReporting
from bot.backends.batching_settings import BatchingSettings
from bot.backends.remote_retry import RetryPolicy
from bot.config import AccessConfig, BatchingConfig, ChatConfig, ModelConfig, PersonaConfig, Settings
from bot.engine import ChatEngine
from bot.errors import ConfigError
from bot.health import Readiness, backend_check
from bot.metrics import EngineMetrics, PrometheusMetrics
from bot.ports import ChannelLocks, Claim
from bot.retention import Retention
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
                vision=model.vision,
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


def build_engine(
    database: Database,
    backend: Backend,
    model: ModelConfig,
    chat: ChatConfig,
    *,
    locks: ChannelLocks | None = None,
    metrics: EngineMetrics | None = None,
    access: AccessConfig | None = None,
    roles: dict[str, RoleRules] | None = None,
    personas: dict[str, PersonaConfig] | None = None,
) -> ChatEngine:
    """The one place a `ChatEngine` is composed (the application, the tests and the benchmarks):
    the repository over `database` and its channel locks (advisory locks on PostgreSQL, none on
    SQLite; `locks` overrides them, for the benchmark that compares the two)."""
    return ChatEngine(
        ChatRepository(database),
        backend,
        model,
        chat,
        locks=locks if locks is not None else channel_locks_for(database),
        metrics=metrics,
        access=access,
        roles=roles,
        personas=personas,
    )


def platform_roles(settings: Settings) -> dict[str, RoleRules]:
    """The access policy's role lists per platform (Discord's; role ids as strings, like the
    events carry them)."""
    discord = settings.discord
    return {
        "discord": RoleRules(
            allowed=frozenset(str(role) for role in discord.allowed_roles),
            blocked=frozenset(str(role) for role in discord.blocked_roles),
        )
    }


async def _keep_retention(retention: Retention, stack: AsyncExitStack) -> None:
    """Run the retention purge in the background while the application runs."""
    task = asyncio.create_task(retention.run(), name="chinwag:retention")

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)


@dataclass(frozen=True, slots=True)
class _Running:
    """What the adapter factories pick their capabilities from (the composition root's own)."""

    engine: ChatEngine
    database: Database
    repository: ChatRepository  # read by the adapters' capabilities (one channel-id cache for all)
    readiness: Readiness
    metrics: PrometheusMetrics | None


def _web_adapter(settings: Settings, running: _Running) -> Adapter | None:
    from adapters.web import create

    return create(
        settings.web,
        settings.model,
        running.engine,
        running.repository,  # read through HistoryReader: the page shows history
        chat=settings.chat,
        readiness=running.readiness,
        metrics=running.metrics,
    )


def _telegram_adapter(settings: Settings, running: _Running) -> Adapter | None:
    from adapters.telegram import PLATFORM, create
    from storage.inbox import UpdateInbox
    from storage.locks import claim_exclusive

    database = running.database

    async def claim_role(name: str) -> Claim | None:
        return await claim_exclusive(database, name)

    return create(
        settings.telegram, running.engine, UpdateInbox(database, PLATFORM), claim_role, chat=settings.chat
    )


def _discord_adapter(settings: Settings, running: _Running) -> Adapter | None:
    from adapters.discord import PLATFORM, create

    repository = running.repository

    async def last_answered() -> dict[str, str]:
        return await repository.last_platform_message_ids(PLATFORM)

    return create(
        settings.discord,
        running.engine,
        last_answered,
        attachment_timeout_s=settings.chat.attachment_timeout_s,
    )


# The platform adapters in start-up order. Each factory imports its adapter only when that adapter
# is enabled (a platform library that is not installed stops nobody who does not use it) and
# returns None when it is not configured (no token).
_ADAPTER_FACTORIES: tuple[tuple[str, Callable[[Settings, _Running], Adapter | None]], ...] = (
    ("web", _web_adapter),
    ("telegram", _telegram_adapter),
    ("discord", _discord_adapter),
)


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


def _build_adapters(settings: Settings, running: _Running) -> list[Adapter]:
    """The platform adapters enabled in `settings` that are configured to start."""
    adapters: list[Adapter] = []
    for name, factory in _ADAPTER_FACTORIES:
        if not getattr(settings, name).enabled:
            continue
        try:
            adapter = factory(settings, running)
        except ModuleNotFoundError as error:
            token = getattr(getattr(settings, name), "token", None)
            if token is not None and not token.get_secret_value().strip():
                logger.info("the %s adapter is enabled but has no token and no library: not started", name)
                continue
            raise ConfigError(
                f"{name}.enabled: the {name} adapter needs the '{error.name}' package; install the "
                "platforms extra (pip install 'chinwag[platforms]') or set it to false"
            ) from None
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
        self.backend = backend if backend is not None else build_backend(settings.model)
        self._stack = AsyncExitStack()
        self._running: _Running | None = None

    @property
    def engine(self) -> ChatEngine:
        """The running engine (only inside `async with`)."""
        if self._running is None:
            raise RuntimeError("the application is not started")
        return self._running.engine

    def adapters(self) -> list[Adapter]:
        """The platform adapters the settings enable and configure, not started yet (only inside
        `async with`). Raises `ConfigError` when an enabled adapter's library is missing."""
        if self._running is None:
            raise RuntimeError("the application is not started")
        return _build_adapters(self.settings, self._running)

    async def __aenter__(self) -> Application:
        try:
            database = Database(
                self.settings.storage.url.get_secret_value(), options=database_options(self.settings)
            )
            await database.start()
            self._stack.push_async_callback(database.stop)
            await self.backend.start()
            self._stack.push_async_callback(self.backend.stop)
            metrics = build_metrics(self.settings)
            engine = build_engine(
                database,
                self.backend,
                self.settings.model,
                self.settings.chat,
                metrics=metrics,
                access=self.settings.access,
                roles=platform_roles(self.settings),
                personas=self.settings.personas,
            )
            self._stack.push_async_callback(engine.close)
            retention = Retention(ChatRepository(database), self.settings.chat.retention_days)
            if retention.enabled:
                await _keep_retention(retention, self._stack)
            if metrics is not None:
                backend_depth = self.backend.queue_depth if isinstance(self.backend, QueueReporting) else None
                metrics.watch_queue(lambda: engine.stats.in_flight, backend_depth)
            readiness = Readiness({"database": database.ping, "backend": backend_check(self.backend)})
            self._running = _Running(
                engine=engine,
                database=database,
                repository=ChatRepository(database),
                readiness=readiness,
                metrics=metrics,
            )
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._running = None
        await self._stack.aclose()


def preflight(settings: Settings) -> None:
    """Checks that need no model, run before anything loads: the web port is free (when the
    web adapter is on). Raises `ChinwagError` naming the setting to change."""
    if settings.web.enabled:
        from adapters.web import ensure_port_free

        ensure_port_free(settings.web.host, settings.web.port)


async def serve(settings: Settings, backend: Backend | None = None) -> None:
    """`python -m bot run`: run every enabled adapter until SIGINT or SIGTERM. `backend`
    replaces the one `settings` name (tests). The `preflight` checks run first, so a taken port
    stops start-up before the model loads."""
    preflight(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with Application(settings, backend) as app, AsyncExitStack() as adapters:
        started = []
        for adapter in app.adapters():
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
