"""Documents, photos and edits on recorded Bot API payloads: which file is offered, with what name,
type and size, when a group message with a file is addressed, and what an edit carries."""

from __future__ import annotations

from typing import Any

import pytest
from telegram import Bot, PhotoSize, Update

from adapters.telegram_events import to_edit, to_event
from adapters.telegram_files import choose_photo_size, file_base_url, no_downloads
from bot.errors import AttachmentUnavailable
from bot.events import ChatEvent, Download, Downloaded

BOT = "ChinwagBot"
ALICE = {"id": 111, "is_bot": False, "first_name": "Alice"}
GROUP = {"id": -1001234567890, "title": "Tea party", "type": "supergroup"}
PRIVATE = {"id": 111, "first_name": "Alice", "type": "private"}
BOT_USER = {"id": 999, "is_bot": True, "first_name": "Chinwag", "username": BOT}


def update(message: dict[str, Any], kind: str = "message") -> Update:
    data = {"update_id": 5001, kind: {"message_id": 77, "date": 1763790000, "from": ALICE, **message}}
    return Update.de_json(data, Bot("123:not-a-real-token"))


class RecordedDownload:
    """A `Download` that remembers which file it stands for."""

    def __init__(self, file_id: str) -> None:
        self.file_id = file_id

    async def __call__(self, limit: int) -> Downloaded:
        return Downloaded(self.file_id.encode()[:limit], complete=True)


def recorded(file_id: str) -> Download:
    return RecordedDownload(file_id)


def convert(upd: Update, *, max_image_bytes: int = 10_000_000) -> ChatEvent | None:
    return to_event(upd, BOT, (), lambda _chat, _user: False, files=recorded, max_image_bytes=max_image_bytes)


def size(file_id: str, side: int, file_size: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "file_id": file_id,
        "file_unique_id": f"u-{file_id}",
        "width": side,
        "height": side,
    }
    if file_size is not None:
        body["file_size"] = file_size
    return body


PHOTO = [size("small", 90, 1_000), size("medium", 320, 20_000), size("large", 1280, 200_000)]


def file_id_of(event: ChatEvent, index: int = 0) -> str:
    download = event.attachments[index].download
    assert isinstance(download, RecordedDownload)
    return download.file_id


def test_a_document_becomes_an_attachment_with_its_caption_as_the_text() -> None:
    document = {
        "file_id": "doc-1",
        "file_unique_id": "u",
        "file_name": "notes.txt",
        "mime_type": "text/plain",
        "file_size": 1234,
    }
    event = convert(update({"chat": PRIVATE, "document": document, "caption": "read this"}))
    assert event is not None
    assert (event.text, event.addressed, event.message_id) == ("read this", True, "111:77")
    (attachment,) = event.attachments
    assert (attachment.name, attachment.mime_type, attachment.size, attachment.image) == (
        "notes.txt",
        "text/plain",
        1234,
        False,
    )
    assert file_id_of(event) == "doc-1"


def test_a_document_without_name_caption_or_type_is_still_offered() -> None:
    event = convert(update({"chat": PRIVATE, "document": {"file_id": "d", "file_unique_id": "u"}}))
    assert event is not None and event.text == ""
    (attachment,) = event.attachments
    assert (attachment.name, attachment.mime_type, attachment.size, attachment.image) == (
        "file",
        None,
        None,
        False,
    )


def test_an_image_sent_as_a_file_is_an_image() -> None:
    document = {"file_id": "d", "file_unique_id": "u", "file_name": "scan.PNG", "mime_type": "image/png"}
    event = convert(update({"chat": PRIVATE, "document": document}))
    assert event is not None
    (attachment,) = event.attachments
    assert (attachment.name, attachment.mime_type, attachment.image) == ("scan.PNG", "image/png", True)


def test_a_photo_offers_its_largest_size_under_the_limit() -> None:
    event = convert(update({"chat": PRIVATE, "photo": PHOTO, "caption": "what is this?"}))
    assert event is not None and event.text == "what is this?"
    (attachment,) = event.attachments
    assert (attachment.name, attachment.mime_type, attachment.size, attachment.image) == (
        "photo.jpg",
        "image/jpeg",
        200_000,
        True,
    )
    assert file_id_of(event) == "large"
    capped = convert(update({"chat": PRIVATE, "photo": PHOTO}), max_image_bytes=50_000)
    assert capped is not None and file_id_of(capped) == "medium"


@pytest.mark.parametrize(
    ("sizes", "limit", "chosen"),
    [
        (PHOTO, 10_000_000, "large"),
        (PHOTO, 20_000, "medium"),  # exactly at the limit fits
        (PHOTO, 999, "small"),  # none fits: the smallest, for the core to refuse by its size
        (list(reversed(PHOTO)), 10_000_000, "large"),  # by pixels, not by position
        ([size("a", 90, 1_000), size("b", 320, None)], 5_000, "b"),  # no declared size: it may fit
    ],
)
def test_choose_photo_size(sizes: list[dict[str, Any]], limit: int, chosen: str) -> None:
    photo = [PhotoSize.de_json(body, None) for body in sizes]
    assert choose_photo_size(photo, limit).file_id == chosen


def test_group_files_are_addressed_like_text() -> None:
    caption = f"@{BOT} what is this?"
    mention = [{"type": "mention", "offset": 0, "length": len(BOT) + 1}]
    mentioned = convert(
        update({"chat": GROUP, "photo": PHOTO, "caption": caption, "caption_entities": mention})
    )
    assert mentioned is not None
    assert (mentioned.text, mentioned.addressed, len(mentioned.attachments)) == ("what is this?", True, 1)

    reply_to_bot = {"message_id": 5, "date": 1, "chat": GROUP, "from": BOT_USER, "text": "an answer"}
    document = {"file_id": "d", "file_unique_id": "u", "file_name": "log.txt"}
    replying = convert(update({"chat": GROUP, "document": document, "reply_to_message": reply_to_bot}))
    assert replying is not None and (replying.text, replying.addressed) == ("", True)

    # A plain caption, or none: chatter the engine answers only with `/listen all`.
    chatter = convert(update({"chat": GROUP, "photo": PHOTO, "caption": "our cat"}))
    assert chatter is not None and (chatter.text, chatter.addressed) == ("our cat", False)
    # A caption command for another bot is not ours.
    other = "/describe@OtherBot"
    command = [{"type": "bot_command", "offset": 0, "length": len(other)}]
    assert (
        convert(update({"chat": GROUP, "photo": PHOTO, "caption": other, "caption_entities": command}))
        is None
    )


def test_files_from_other_bots_are_ignored() -> None:
    assert convert(update({"chat": PRIVATE, "from": {**BOT_USER, "id": 5}, "photo": PHOTO})) is None


async def test_without_the_adapter_a_file_cannot_be_downloaded() -> None:
    with pytest.raises(AttachmentUnavailable):
        await no_downloads("x")(100)


def test_an_edit_carries_the_edited_message_id_and_its_new_text() -> None:
    mention = [{"type": "mention", "offset": 0, "length": len(BOT) + 1}]
    edit = update(
        {"chat": GROUP, "text": f"@{BOT} what is coffee?", "entities": mention}, kind="edited_message"
    )
    event = to_edit(edit, BOT, (), lambda _chat, _user: False)
    assert event is not None
    assert (event.channel_key, event.message_id, event.text) == (
        "telegram:-1001234567890",
        "-1001234567890:77",
        "what is coffee?",  # the mention removed, as when the message came
    )
    assert event.attachments == ()
    # An edited caption is an edit too; a new message is not one, nor is an edit an event.
    caption = update({"chat": PRIVATE, "photo": PHOTO, "caption": "a dog"}, kind="edited_message")
    caption_event = to_edit(caption, BOT, (), lambda _chat, _user: False)
    assert caption_event is not None and caption_event.text == "a dog"
    assert to_edit(update({"chat": PRIVATE, "text": "new"}), BOT, (), lambda _c, _u: False) is None
    assert convert(edit) is None
    # Another bot's edit is not looked at.
    bot_edit = update({"chat": PRIVATE, "from": {**BOT_USER, "id": 5}, "text": "x"}, kind="edited_message")
    assert to_edit(bot_edit, BOT, (), lambda _c, _u: False) is None


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("http://127.0.0.1:8081/bot", "http://127.0.0.1:8081/file/bot"),
        ("https://api.telegram.org/bot", "https://api.telegram.org/file/bot"),
        ("http://proxy.local/telegram/bot{token}", "http://proxy.local/telegram/file/bot{token}"),
        ("http://127.0.0.1:8081/api/", None),  # not Telegram's layout: the library's default stays
    ],
)
def test_file_base_url(base_url: str, expected: str | None) -> None:
    assert file_base_url(base_url) == expected
