"""The plain values of the `web:` settings that the web adapter reads."""

from __future__ import annotations

from dataclasses import dataclass

from bot.config import ChatConfig, WebConfig


@dataclass(frozen=True, slots=True)
class WebOptions:
    """What the web server needs from `settings.web`, with secrets unwrapped.

    The defaults are `WebConfig`'s, so `WebOptions(...)` built directly (tests, embedding) behaves
    like a config file that leaves those keys out.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    cors_origins: tuple[str, ...] = ()
    admin_api_key: str | None = None
    api_keys: tuple[str, ...] = ()
    max_body_bytes: int = 64 * 1024
    max_upload_bytes: int = 25 * 1024 * 1024
    """The body limit of `POST /api/channels/{id}/messages`, whose files come inside it."""
    max_attachments: int = 4
    """Files per message (`chat.max_attachments`); more are refused with 400."""
    drain_s: float = 10.0

    @classmethod
    def from_config(cls, web: WebConfig, chat: ChatConfig | None = None) -> WebOptions:
        """The plain values of `web` (secrets unwrapped here, and only here; empty keys dropped)
        and of the `chat` limits the web API checks itself (`ChatConfig`'s defaults without it)."""
        chat = chat if chat is not None else ChatConfig()
        return cls(
            host=web.host,
            port=web.port,
            cors_origins=web.cors_origins,
            admin_api_key=web.admin_api_key.get_secret_value() or None if web.admin_api_key else None,
            api_keys=tuple(key.get_secret_value() for key in web.api_keys if key.get_secret_value()),
            max_body_bytes=web.max_body_bytes,
            max_upload_bytes=web.max_upload_bytes,
            max_attachments=chat.max_attachments,
            drain_s=web.drain_s,
        )
