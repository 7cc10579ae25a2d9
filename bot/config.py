"""Typed configuration: `config.yaml` loaded into pydantic models.

Every key has a default, so an empty file is a valid configuration. `${NAME}` inside a string value
is replaced by the environment variable NAME (empty when unset). Any error stops start-up with one
line that names the key path and what was expected, and never shows a secret's value.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from bot.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("config.yaml")

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Section(BaseModel):
    """Base of every section: unknown keys are errors, values are immutable after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchingConfig(_Section):
    """`model.batching:` — how the local model serves many channels at once."""

    enabled: bool = True
    max_batch: int = Field(default=64, ge=1, le=1024)
    max_waiting: int = Field(default=256, ge=0, le=100_000)
    prefill_chunk_tokens: int = Field(default=256, ge=16, le=65_536)
    context_cache_mb: int = Field(default=1024, ge=0, le=1_048_576)
    truncation_slack: float = Field(default=0.25, ge=0.0, le=0.9)


class ModelConfig(_Section):
    """`model:` — which backend answers and how it samples."""

    backend: Literal["local", "echo", "openai", "tgi"] = "local"
    path: str = "bundled:smollm2"
    base_url: str | None = None
    name: str | None = None
    api_key: SecretStr | None = None
    system_prompt: str = "You are a helpful assistant."
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    top_k: int = Field(default=50, ge=0)  # 0 = off; 50 is what transformers' generate applies
    max_new_tokens: int = Field(default=256, ge=1, le=8192)
    repetition_penalty: float = Field(default=1.1, ge=1.0, le=2.0)
    prompt_format: Literal["auto", "chat_template", "dialogpt", "seq2seq", "plain"] = "auto"
    stop: tuple[str, ...] = ()
    context_window: int | None = Field(default=2048, ge=64)
    # A reply cut by either keeps its text (see bot/engine.py): the stall is the usual guard, the
    # total the cap on a reply that keeps streaming.
    stall_timeout_s: float = Field(default=30.0, gt=0.0)
    generation_timeout_s: float = Field(default=600.0, gt=0.0)
    cache_dir: str = "~/.cache/chinwag/models"
    threads: int | None = Field(default=None, ge=1)
    dtype: Literal["auto", "float32", "bfloat16"] = "float32"
    batching: BatchingConfig = BatchingConfig()
    # The openai backend sends images as OpenAI content parts (the server's model must see them:
    # llava on Ollama, Qwen2-VL on vLLM). The local backend tells by itself, from the model's
    # config (an image-text-to-text model), and ignores this key.
    vision: bool = False
    # Remote backends (openai, tgi): see config.yaml and bot/backends/remote_retry.py.
    connect_timeout_s: float = Field(default=5.0, gt=0.0, le=300.0)
    read_timeout_s: float = Field(default=60.0, gt=0.0, le=3600.0)
    max_retries: int = Field(default=3, ge=0, le=10)
    retry_backoff_s: float = Field(default=0.5, ge=0.0, le=60.0)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _remote_needs_server(self) -> ModelConfig:
        # One line naming the key, at start-up, rather than a failure at the first message.
        if self.backend in ("openai", "tgi") and not self.base_url:
            raise ValueError(f"model.base_url is required for the {self.backend} backend (the server's URL)")
        if self.backend == "openai" and not self.name:
            raise ValueError("model.name is required for the openai backend (the model the server serves)")
        return self

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not stop for stop in value):
            raise ValueError("stop sequences must not be empty strings")
        return value


class RateLimitConfig(_Section):
    """`chat.rate_limit:` — at most `messages` per user in any `per_seconds` window."""

    messages: int = Field(default=20, ge=1)
    per_seconds: int = Field(default=60, ge=1)


class QuotaConfig(_Section):
    """`chat.quota:` — generated tokens per user per UTC day; 0 = no quota (admins are exempt)."""

    tokens_per_day: int = Field(default=0, ge=0)


class ChatConfig(_Section):
    """`chat:` — limits the engine applies to every platform."""

    max_input_chars: int = Field(default=8000, ge=1)
    history_messages: int = Field(default=50, ge=0, le=10_000)
    history_chars: int = Field(default=60_000, ge=1)
    rate_limit: RateLimitConfig = RateLimitConfig()
    # The history mode of a channel that has not chosen one with /context.
    group_context: Literal["shared", "member"] = "shared"
    quota: QuotaConfig = QuotaConfig()
    # Messages older than this many days are deleted (at start and hourly); 0 = keep forever.
    retention_days: int = Field(default=0, ge=0, le=36_500)
    # Attachments (bot/attachments.py). A text file longer than max_attachment_bytes is cut there;
    # an image larger than max_image_bytes is refused before it is downloaded.
    max_attachment_bytes: int = Field(default=262_144, ge=1, le=16_777_216)
    max_image_bytes: int = Field(default=10_000_000, ge=1, le=100_000_000)
    max_image_side: int = Field(default=1024, ge=16, le=8192)
    max_attachments: int = Field(default=4, ge=0, le=10)
    attachment_timeout_s: float = Field(default=30.0, gt=0.0, le=600.0)


# "platform:id" in the access lists: Telegram and Discord ids are integers (a Telegram group's is
# negative, a forum topic's channel is "chat:topic"); web channel ids and the terminal's are words.
_ACCESS_ID_SHAPES: dict[str, re.Pattern[str]] = {
    "telegram": re.compile(r"-?\d{1,20}(:\d{1,20})?"),
    "discord": re.compile(r"\d{1,20}"),
    "web": re.compile(r"[A-Za-z0-9_-]{1,128}"),
    "console": re.compile(r"[A-Za-z0-9_-]{1,128}"),
}


def _access_ids(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        platform, colon, local_id = str(value).partition(":")
        shape = _ACCESS_ID_SHAPES.get(platform)
        if not colon or shape is None or not shape.fullmatch(local_id):
            raise ValueError(
                f'expected "platform:id" with platform one of {", ".join(_ACCESS_ID_SHAPES)} and the '
                'platform\'s id (e.g. "telegram:1011", "telegram:-1001234", "discord:81234"), '
                f"got {str(value)[:40]!r}"
            )
    return values


class AccessConfig(_Section):
    """`access:` — who may talk to the bot (see bot/access.py). Ids are "platform:id" strings."""

    allowed_users: tuple[str, ...] = ()  # empty = everyone
    blocked_users: tuple[str, ...] = ()  # blocked wins over allowed
    allowed_channels: tuple[str, ...] = ()  # the event's channel key; empty = all
    blocked_channels: tuple[str, ...] = ()
    direct_messages: bool = True  # false: in private chats and DMs only admins are answered

    @field_validator("allowed_users", "blocked_users", "allowed_channels", "blocked_channels", mode="before")
    @classmethod
    def _platform_ids(cls, value: Any) -> Any:
        # A bare number (`allowed_users: [1011]`) gets the message that says what to write.
        if isinstance(value, list | tuple):
            return _access_ids(tuple(str(item) for item in value))
        return value


PERSONA_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")


class PersonaConfig(_Section):
    """One entry of `personas:` — a preset a channel switches to with /persona NAME."""

    system_prompt: str = Field(min_length=1, max_length=4000)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    description: str = Field(default="", max_length=200)


class StorageConfig(_Section):
    """`storage:` — the SQLAlchemy URL of the history database and its connection pools."""

    url: SecretStr = SecretStr("sqlite+aiosqlite:///data/bot.db")
    # Short sessions: at most pool_size + max_overflow connections per process.
    pool_size: int = Field(default=5, ge=1, le=1000)
    max_overflow: int = Field(default=10, ge=0, le=1000)
    pool_timeout_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    # PostgreSQL only: connections holding a channel's advisory lock while its reply is generated
    # (= channels answered at once by this process), and how long to wait for a channel's lock.
    lock_connections: int = Field(default=20, ge=1, le=1000)
    lock_wait_timeout_s: float = Field(default=300.0, gt=0.0, le=86_400.0)
    # SQLite only: "full" (a commit survives power loss) or "normal" (survives a crash of the bot).
    sqlite_synchronous: Literal["full", "normal"] = "full"

    @field_validator("url")
    @classmethod
    def _async_driver(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("expected a sqlite+aiosqlite:// or postgresql+asyncpg:// URL")
        return value


class TelegramConfig(_Section):
    """`telegram:` — the Telegram adapter starts when enabled and a token is set."""

    enabled: bool = True
    token: SecretStr | None = None
    base_url: str | None = None
    admins: tuple[int, ...] = ()
    # Telegram holds a long poll for at most 50 s.
    poll_timeout_s: int = Field(default=30, ge=1, le=50)
    edit_interval_s: float = Field(default=1.0, gt=0.0)
    typing_interval_s: float = Field(default=4.0, gt=0.0)
    admin_cache_s: float = Field(default=300.0, ge=0.0)
    drain_s: float = Field(default=10.0, ge=0.0)


class DiscordConfig(_Section):
    """`discord:` — the Discord adapter starts when enabled and a token is set."""

    enabled: bool = True
    token: SecretStr | None = None
    admins: tuple[int, ...] = ()
    api_base: str | None = None
    gateway_url: str | None = None
    channels: tuple[int, ...] = ()
    # Role ids: when allowed_roles is set, in guilds only members holding one of them (or admins)
    # are answered; a member holding a blocked role is not.
    allowed_roles: tuple[int, ...] = ()
    blocked_roles: tuple[int, ...] = ()
    edit_interval_s: float = Field(default=1.5, gt=0)
    first_post_delay_s: float = Field(default=0.5, ge=0)
    typing_interval_s: float = Field(default=8.0, gt=0)
    ready_timeout_s: float = Field(default=30.0, gt=0)
    drain_s: float = Field(default=10.0, ge=0)
    slash_commands: bool = True
    backfill_max_age_s: float = Field(default=3600.0, ge=0)
    # Sharding: `shard_count` alone runs every shard in this process (discord.py's
    # AutoShardedClient); with `shard_id` too, this process runs that one shard (one per process).
    shard_count: int | None = Field(default=None, ge=1, le=100_000)
    shard_id: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _shard_pair(self) -> DiscordConfig:
        if self.shard_id is not None and self.shard_count is None:
            raise ValueError("shard_id needs shard_count (this process runs shard shard_id of shard_count)")
        if self.shard_count is not None and self.shard_id is not None and self.shard_id >= self.shard_count:
            raise ValueError(f"shard_id must be below shard_count ({self.shard_count})")
        return self


class WebConfig(_Section):
    """`web:` — the HTTP server with the chat page and the JSON API."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    cors_origins: tuple[str, ...] = ()
    admin_api_key: SecretStr | None = None
    api_keys: tuple[SecretStr, ...] = ()
    max_body_bytes: int = Field(default=65536, ge=1024)
    # POST /api/channels/{id}/messages: its files come inside the body (base64, so a third larger).
    max_upload_bytes: int = Field(default=26_214_400, ge=1024, le=1_073_741_824)
    # At shutdown, open chat replies may finish for this long; then they are stopped, keeping their text.
    drain_s: float = Field(default=10.0, ge=0.0)
    # GET /metrics (Prometheus text format, counts only: no channel, user or message text).
    metrics: bool = True

    @field_validator("api_keys", mode="before")
    @classmethod
    def _drop_unset_keys(cls, value: Any) -> Any:
        # `api_keys: [${KEY_A}, ${KEY_B}]` with KEY_B unset expands to [..., None]: not a key.
        if isinstance(value, list):
            return [item for item in value if item not in (None, "")]
        return value


class LoggingConfig(_Section):
    """`logging:` — the root log level (logs go to stderr)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Settings(_Section):
    """The whole `config.yaml`."""

    model: ModelConfig = ModelConfig()
    chat: ChatConfig = ChatConfig()
    access: AccessConfig = AccessConfig()
    personas: dict[str, PersonaConfig] = Field(default_factory=dict)
    storage: StorageConfig = StorageConfig()
    telegram: TelegramConfig = TelegramConfig()
    discord: DiscordConfig = DiscordConfig()
    web: WebConfig = WebConfig()
    logging: LoggingConfig = LoggingConfig()

    @field_validator("personas")
    @classmethod
    def _persona_names(cls, value: dict[str, PersonaConfig]) -> dict[str, PersonaConfig]:
        seen: set[str] = set()
        for name in value:
            if not PERSONA_NAME.fullmatch(name):
                raise ValueError(
                    f"persona name {name[:40]!r} must be 1 to 32 letters, digits, '_' or '-' "
                    "(it is typed after /persona)"
                )
            if name.lower() == "default":
                raise ValueError("'default' is reserved: /persona default restores the configured prompt")
            if name.lower() in seen:
                raise ValueError(f"persona names differ only in case: {name!r}")
            seen.add(name.lower())
        return value


def expand_env(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """Replace `${NAME}` in every string of a parsed YAML tree by the environment's value.

    A value that is nothing but one reference to an unset (or empty) variable becomes `None`, so
    `token: ${TELEGRAM_TOKEN}` means "no token" rather than an empty token.
    """
    env = os.environ if environ is None else environ
    if isinstance(value, str):
        whole = _ENV_REFERENCE.fullmatch(value.strip())
        if whole and not env.get(whole.group(1)):
            return None
        return _ENV_REFERENCE.sub(lambda match: env.get(match.group(1), ""), value)
    if isinstance(value, dict):
        return {key: expand_env(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [expand_env(item, env) for item in value]
    return value


def _allowed_keys(model: type[BaseModel], path: tuple[str | int, ...]) -> list[str]:
    """The keys a section accepts, to suggest the nearest one for a typo."""
    current: type[BaseModel] = model
    for part in path:
        field = current.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        current = annotation
    return list(current.model_fields)


def _describe(error: ValidationError, source: str) -> str:
    """One line for the first validation error; input values are never echoed (they may be secrets)."""
    first = error.errors(include_input=False, include_url=False)[0]
    location = tuple(first["loc"])
    key = ".".join(str(part) for part in location) or "(top level)"
    if first["type"] == "extra_forbidden":
        hints = difflib.get_close_matches(str(location[-1]), _allowed_keys(Settings, location[:-1]), n=1)
        hint = f" (did you mean '{hints[0]}'?)" if hints else ""
        return f"{source}: unknown key '{key}'{hint}"
    message = first["msg"].removeprefix("Value error, ")
    return f"{source}: invalid value for '{key}': {message}"


def parse_settings(raw: Any, source: str = "config", environ: Mapping[str, str] | None = None) -> Settings:
    """Validate an already-parsed YAML tree. Raises `ConfigError` with a one-line message."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    try:
        return Settings.model_validate(expand_env(raw, environ))
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


def load_settings(
    path: Path | str = DEFAULT_CONFIG_PATH, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read and validate a config file. A missing default file means "all defaults". A relative
    SQLite path in `storage.url` is taken relative to the config file's folder (see
    `anchor_sqlite_path`)."""
    config_path = Path(path)
    try:
        text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if config_path == DEFAULT_CONFIG_PATH:  # all defaults, with the folder it would be in
            return anchor_sqlite_path(parse_settings({}, str(config_path), environ), config_path.parent)
        raise ConfigError(f"{config_path}: file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{config_path}: cannot read the file ({type(error).__name__})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{config_path}: not valid YAML{where}") from None
    return anchor_sqlite_path(parse_settings(raw, str(config_path), environ), config_path.parent)


_SQLITE_PREFIX = "sqlite+aiosqlite:///"


def anchor_sqlite_path(settings: Settings, folder: Path) -> Settings:
    """`settings` with a relative SQLite path in `storage.url` made absolute against `folder`
    (the config file's), so the database does not depend on the working directory: the default
    `sqlite+aiosqlite:///data/bot.db` is `data/bot.db` beside config.yaml. Absolute paths,
    `~/...`, SQLite URI filenames (`?uri=true`) and PostgreSQL URLs are left as they are."""
    url = settings.storage.url.get_secret_value()
    if not url.startswith(_SQLITE_PREFIX):
        return settings
    path, query = url.removeprefix(_SQLITE_PREFIX), ""
    if "?" in path:
        path, query = path.split("?", 1)
        query = "?" + query
    uri_mode = "uri=true" in query.lower() or path.startswith("file:")
    if not path or path == ":memory:" or uri_mode or path.startswith("~") or Path(path).is_absolute():
        return settings
    anchored = Path(os.path.abspath(folder / path))  # abspath: no symlinks resolved, `..` folded
    storage = settings.storage.model_copy(update={"url": SecretStr(f"{_SQLITE_PREFIX}{anchored}{query}")})
    return settings.model_copy(update={"storage": storage})
