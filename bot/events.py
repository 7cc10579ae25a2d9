"""The one platform-free event that crosses the adapter boundary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Downloaded:
    """The start of a file: `data` holds at most the limit asked for; `complete` is False when the
    file went on past it (the download stopped there: a 2 GB file is never read whole)."""

    data: bytes
    complete: bool


class Download(Protocol):
    """Fetches an attachment from its platform, lazily: nothing is downloaded until the engine asks.

    Reads at most `limit` bytes (streamed; stops at the limit) and gives up after the adapter's
    timeout. Raises `bot.errors.AttachmentUnavailable` when the file cannot be fetched."""

    async def __call__(self, limit: int) -> Downloaded: ...


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file sent with a message, not downloaded yet (see `bot.attachments`).

    `name` is the file's name as sent (a Telegram photo has none: the adapter names it, e.g.
    "photo.jpg"); `mime_type` the platform's claim, when it makes one; `size` the declared size
    in bytes, when known (a claim too: the download enforces the limit itself). `image` says the
    platform sent it as an image (a Telegram photo, a Discord attachment with an image/* type)."""

    name: str
    mime_type: str | None
    size: int | None
    image: bool
    download: Download = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ChatEvent:
    """A text message addressed to the bot, already stripped of platform objects.

    `channel` is the platform's own id of the conversation (a Telegram chat id, a Discord channel
    id, "local" for the terminal); together with `platform` it names the history the reply uses.
    `message_id` is the platform's id of this message, used to answer a redelivered message once.
    `redelivered` means the adapter is re-processing a message it may have handled before a crash:
    if it was stored already, its stored answer is given again (or generated now if it has none)
    instead of the silent duplicate an ordinary repeat gets.
    `rate_limited` False exempts the author from the per-user rate limit: set by an adapter whose
    user is the bot's own operator (the terminal, where a piped file of 100 lines is legitimate).

    Facts for the access policy, quotas and listening (see `bot.access`), supplied by the adapter:
    `is_admin` says the author may run admin commands *here* (the user of a private chat may, in
    their own chat); `is_staff` is stronger: a configured admin (`telegram.admins`,
    `discord.admins`) or an administrator of the group or guild. Staff pass the access lists and
    are exempt from quotas; the user of a private chat alone is not staff. `roles` are the author's
    role ids in a Discord guild (empty elsewhere). `addressed` False marks a group message that does
    not mention the bot, reply to it or run a command: it is answered only in a channel set to
    `/listen all`. `sees_all_messages` False says the platform does not deliver such messages to
    the bot at all (Telegram's privacy mode), so `/listen all` can warn about it.
    """

    platform: str
    channel: str
    author_id: str
    author_name: str
    text: str
    is_admin: bool = False
    is_direct: bool = False
    message_id: str | None = None
    redelivered: bool = False
    rate_limited: bool = True
    is_staff: bool = False
    roles: tuple[str, ...] = ()
    addressed: bool = True
    sees_all_messages: bool = True
    attachments: tuple[Attachment, ...] = ()
    """Files sent with the message (a Telegram document or photo, Discord attachments, files
    attached on the web page); `text` is then the caption, possibly empty."""

    @property
    def channel_key(self) -> str:
        """The engine-wide name of the conversation, e.g. `console:local` or `telegram:-100123`."""
        return f"{self.platform}:{self.channel}"

    @property
    def user_key(self) -> str:
        """The engine-wide name of the author, used for per-user rate limits."""
        return f"{self.platform}:{self.author_id}"
