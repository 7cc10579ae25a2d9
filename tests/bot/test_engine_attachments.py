"""The engine with attachments, edits and deletes: echo backend (or a recording double), real SQLite.

Attachments come with in-memory downloads (the adapters' own are tested against the fake platform
servers); what a file becomes is `bot.attachments`' job, tested in test_attachments.py.
"""

from __future__ import annotations

import io

from PIL import Image

from bot.errors import AttachmentUnavailable
from bot.events import Attachment, ChatEvent, Downloaded
from bot.reply import ReplyStatus
from storage.repository import ChatRepository
from tests.bot.doubles import RecordingBackend
from tests.conftest import EngineFactory


class BytesDownload:
    """A download of bytes already at hand; counts its calls."""

    def __init__(self, data: bytes, *, fails: bool = False) -> None:
        self.data = data
        self.fails = fails
        self.calls = 0

    async def __call__(self, limit: int) -> Downloaded:
        self.calls += 1
        if self.fails:
            raise AttachmentUnavailable("the server answered 500")
        return Downloaded(self.data[:limit], complete=len(self.data) <= limit)


class SeeingBackend(RecordingBackend):
    """The recording echo double, as a backend whose model sees images."""

    def sees_images(self) -> bool:
        return True


def text_file(name: str, text: str) -> Attachment:
    return Attachment(name, "text/plain", len(text.encode()), False, BytesDownload(text.encode()))


def png(size: tuple[int, int] = (40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def image(name: str = "cat.png", data: bytes | None = None) -> Attachment:
    body = png() if data is None else data
    return Attachment(name, "image/png", len(body), True, BytesDownload(body))


def user(text: str, *, mid: str | None = None, attachments: tuple[Attachment, ...] = ()) -> ChatEvent:
    return ChatEvent(
        platform="test",
        channel="c1",
        author_id="u1",
        author_name="Ann",
        text=text,
        is_direct=True,
        message_id=mid,
        attachments=attachments,
    )


async def test_a_text_file_becomes_part_of_the_user_turn(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    engine = await make_engine()
    reply = await engine.ask(
        user("what does it say?", mid="1", attachments=(text_file("notes.txt", "buy milk"),))
    )
    assert reply == "echo[0]: what does it say?\n\n[file: notes.txt]\nbuy milk\n[end of file]"
    [stored] = await repository.recent_messages("test:c1", limit=1, max_id=1)
    assert stored.content == "what does it say?"  # the caption alone: an edit replaces it
    assert stored.attached == "[file: notes.txt]\nbuy milk\n[end of file]"
    # A later turn still reads the file.
    assert await engine.ask(user("and?", mid="2")) == "echo[2]: and?"
    history = await repository.recent_messages("test:c1", limit=10)
    assert [m.attached for m in history] == [stored.attached, None, None, None]


async def test_without_vision_the_text_is_answered_and_the_reply_says_so(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    engine = await make_engine()
    photo = image()
    reply = engine.handle(user("nice?", mid="1", attachments=(photo,)))
    text = await reply.text()
    assert text.startswith("echo[0]: nice?\n\n[image: cat.png]")
    assert "can't see images" in text and reply.status is ReplyStatus.ANSWERED
    assert isinstance(photo.download, BytesDownload) and photo.download.calls == 0  # never fetched


async def test_an_image_alone_without_vision_gets_a_notice_and_stores_nothing(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    engine = await make_engine()
    reply = engine.handle(user("", mid="1", attachments=(image(),)))
    text = await reply.text()
    assert "image" in text and "in words" in text and reply.status is ReplyStatus.NOTICE
    assert await repository.message_count("test:c1") == 0


async def test_a_seeing_backend_gets_the_image_once_then_a_placeholder(
    make_engine: EngineFactory,
) -> None:
    backend = SeeingBackend()
    engine = await make_engine(backend)
    assert await engine.ask(user("what is it?", mid="1", attachments=(image(),))) == (
        "echo[0]: what is it?\n\n[image: cat.png]"
    )
    [part] = backend.conversations[0].images
    assert part.mime_type in {"image/jpeg", "image/png"} and (part.width, part.height) == (40, 30)
    await engine.ask(user("and now?", mid="2"))
    later = backend.conversations[1]
    assert later.images == ()
    assert later.history[0].content == "what is it?\n\n[image: cat.png]"


async def test_a_failed_download_is_told_and_the_words_are_answered(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    broken = Attachment("log.txt", "text/plain", 10, False, BytesDownload(b"", fails=True))
    text = await engine.ask(user("see the log", mid="1", attachments=(broken,)))
    assert text.startswith("echo[0]: see the log\n\n(")
    assert "couldn't download log.txt" in text and "500" in text


async def test_a_commands_attachments_are_not_downloaded(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    notes = text_file("notes.txt", "x")
    assert "/reset" in await engine.ask(user("/help", attachments=(notes,)))
    assert isinstance(notes.download, BytesDownload) and notes.download.calls == 0


async def test_an_edit_replaces_the_text_keeps_the_file_and_is_not_answered(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    backend = RecordingBackend()
    engine = await make_engine(backend)
    question = engine.handle(user("waht is this?", mid="1", attachments=(text_file("a.txt", "alpha"),)))
    edited = engine.edit(user("what is this?", mid="1"))  # queued behind the message it edits
    await question.text()
    assert await edited is True
    assert await engine.ask(user("thanks", mid="2")) == "echo[2]: thanks"
    assert (
        backend.conversations[-1].history[0].content == "what is this?\n\n[file: a.txt]\nalpha\n[end of file]"
    )
    assert len(backend.conversations) == 2  # the edit got no reply
    assert await repository.message_count("test:c1") == 4


async def test_edits_that_change_nothing_stored(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    engine = await make_engine()
    await engine.ask(user("hello", mid="1"))
    assert await engine.edit(user("hi", mid="404")) is False  # never stored
    assert await engine.edit(user("/reset", mid="1")) is False  # commands are never stored
    assert await engine.edit(user("  ", mid="1")) is False  # blank: kept as it was
    assert await engine.edit(user("hi", mid=None)) is False
    [question, _] = await repository.recent_messages("test:c1", limit=10)
    assert question.content == "hello"


async def test_a_delete_removes_the_message_and_the_reply_to_it(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    engine = await make_engine()
    for n in range(3):
        await engine.ask(user(f"m{n}", mid=str(n)))
    assert await engine.delete("test:c1", ["1"]) == 2
    assert await engine.ask(user("next", mid="9")) == "echo[4]: next"
    contents = [m.content for m in await repository.recent_messages("test:c1", limit=10)]
    assert contents == ["m0", "echo[0]: m0", "m2", "echo[4]: m2", "next", "echo[4]: next"]
    assert await engine.delete("test:c1", ["1", "404", ""]) == 0  # gone already, unknown, blank
    assert await engine.delete("test:c1", ["0", "2", "0"]) == 4
