"""Files, edits and deletes on Discord: the real adapter (real discord.py) against the fake Discord.

The fake serves attachment URLs over HTTP and dispatches MESSAGE_UPDATE / MESSAGE_DELETE /
MESSAGE_DELETE_BULK. First what the adapter hands the engine (a recording double in front of the
engine), then whole conversations with the real engine: the echo backend shows what the model got,
and the fake OpenAI-compatible server records the content parts of a vision request.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pytest
from PIL import Image

from adapters.discord import DiscordAdapter
from bot.errors import AttachmentUnavailable
from bot.events import ChatEvent
from bot.ports import ChatService
from bot.reply import Reply
from tests.adapters import test_discord
from tests.adapters.doubles import ForwardingService
from tests.adapters.remote_model import RemoteModel, remote_model
from tests.adapters.test_discord import DM, GENERAL, OTHER, TOKEN, mention, replies
from tests.bot.doubles import SlowEchoBackend
from tests.conftest import EngineFactory
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.waiting import wait_until

T = TypeVar("T")
StartAdapter = Callable[..., Awaitable[DiscordAdapter]]
start_adapter = test_discord.start_adapter  # the fixture, used here with this module's `fake`
LINES = b"a line of a very long log file\n"


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(token=TOKEN, channel_ids=(GENERAL, OTHER), announce_bot_edits=True) as server:
        yield server


class RecordsChanges(ForwardingService):
    """A `ChatService` double: messages go to `engine`; edits and deletes are only recorded (what
    the adapter hands over is the question here; the real engine's part is tested below)."""

    def __init__(self, engine: ChatService) -> None:
        super().__init__(engine)
        self.events: list[ChatEvent] = []
        self.edits: list[ChatEvent] = []
        self.deletes: list[tuple[str, list[str]]] = []

    def handle(self, event: ChatEvent) -> Reply:
        self.events.append(event)
        return self.engine.handle(event)

    def edit(self, event: ChatEvent) -> asyncio.Task[bool]:
        self.edits.append(event)
        return asyncio.get_running_loop().create_task(_result(True))

    def delete(self, channel_key: str, platform_message_ids: Sequence[str]) -> asyncio.Task[int]:
        self.deletes.append((channel_key, list(platform_message_ids)))
        return asyncio.get_running_loop().create_task(_result(len(platform_message_ids)))


async def _result(value: T) -> T:
    return value


# --- what the adapter hands the engine ---------------------------------------------------------


async def test_files_reach_the_engine_as_streamed_bounded_downloads(
    fake: FakeDiscord,
    start_adapter: StartAdapter,
    make_engine: EngineFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name in ("adapters", "bot", "httpx", "httpcore"):  # ours and the download's client
        caplog.set_level(logging.DEBUG, logger=name)
    service = RecordsChanges(await make_engine())
    await start_adapter(service, attachment_timeout_s=0.5)
    notes = fake.add_file("notes.txt", b"first line\nsecond line\n")
    photo = fake.add_file("cat.png", b"\x89PNG not really", content_type="image/png")
    huge = fake.add_file("huge.log", size=50_000_000, filler=LINES)
    stuck = fake.add_file("stuck.txt", hang=True)
    fake.push_message(DM, "", attachments=[notes, photo, huge, stuck])  # no text: not dropped
    await wait_until(lambda: len(service.events) == 1, what="the message reaches the engine")
    (event,) = service.events
    assert event.text == ""
    assert [(a.name, a.mime_type, a.size, a.image) for a in event.attachments] == [
        ("notes.txt", "text/plain; charset=utf-8", 23, False),
        ("cat.png", "image/png", 15, True),
        ("huge.log", "text/plain; charset=utf-8", 50_000_000, False),
        ("stuck.txt", "text/plain; charset=utf-8", 1024, False),
    ]
    first, _, third, fourth = event.attachments
    whole = await first.download(1000)
    assert (whole.data, whole.complete) == (b"first line\nsecond line\n", True)
    start = await third.download(262_144)
    assert (len(start.data), start.complete) == (262_144, False)
    served = fake.files[int(huge["id"])]
    await fake.wait_for(lambda: served.active == 0)  # the fake saw the client go
    assert served.completed == 0 and served.bytes_sent < 50_000_000  # never all sent
    with pytest.raises(AttachmentUnavailable):
        await fourth.download(1000)  # hangs: given up after attachment_timeout_s
    # Signed URLs stay out of the logs.
    ours = [record for record in caplog.records if record.name.startswith(("adapters", "bot", "http"))]
    assert not any("fake-signature" in record.getMessage() for record in ours)


async def test_a_guild_file_needs_a_mention_as_text_does(
    fake: FakeDiscord, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    service = RecordsChanges(await make_engine())
    await start_adapter(service)
    fake.push_message(GENERAL, "", guild=True, attachments=[fake.add_file("a.txt", b"a")])
    fake.push_message(GENERAL, mention(""), guild=True, attachments=[fake.add_file("b.txt", b"b")])
    await wait_until(lambda: len(service.events) == 2, what="both messages reach the engine")
    assert [(e.addressed, e.text, [a.name for a in e.attachments]) for e in service.events] == [
        (False, "", ["a.txt"]),
        (True, "", ["b.txt"]),
    ]


async def test_edits_and_deletes_reach_the_engine_with_the_channels_key(
    fake: FakeDiscord, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    service = RecordsChanges(await make_engine())
    await start_adapter(service)
    asked = fake.push_message(GENERAL, mention("what is 2+2?"), guild=True)
    await fake.wait_for(lambda: len(fake.sent) == 1)
    fake.partial_update(asked)  # a link preview without content: no edit, and no reconnect
    fake.edit_message(asked, mention("what is 2+3?"))
    in_dm = fake.push_message(DM, "hello")
    await fake.wait_for(lambda: len(fake.sent) == 2)
    fake.edit_message(in_dm, "hello there")
    fake.delete_messages(DM, [int(in_dm["id"])])
    fake.delete_messages(GENERAL, [int(asked["id"]), 12345, int(fake.sent[0].id)])
    await wait_until(lambda: len(service.deletes) == 2, what="the deletes reach the engine")
    assert [(e.channel_key, e.message_id, e.text) for e in service.edits] == [
        (f"discord:{GENERAL}", asked["id"], "what is 2+3?"),
        (f"discord:{DM}", in_dm["id"], "hello there"),
    ]
    assert service.deletes == [
        (f"discord:{DM}", [in_dm["id"]]),
        (f"discord:{GENERAL}", sorted([asked["id"], "12345", str(fake.sent[0].id)], key=int)),
    ]
    assert fake.identifies == 1  # the partial update did not cost the connection
    assert len(service.events) == 2  # nothing was answered again


async def test_the_bots_own_reply_edits_are_not_edits(
    fake: FakeDiscord, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    service = RecordsChanges(await make_engine(SlowEchoBackend(0.05)))
    await start_adapter(service, first_post_delay_s=0.0, edit_interval_s=0.1)
    words = " ".join(f"w{n}" for n in range(12))
    asked = fake.push_message(DM, words)
    await fake.wait_for(lambda: fake.texts(DM) == [f"echo[0]: {words}"])
    assert len(fake.sent[0].versions) >= 2  # streamed: the fake announced the bot's edits
    fake.edit_message(asked, "marker")  # a person's edit, after all of the bot's
    await wait_until(lambda: len(service.edits) == 1, what="the marker edit reaches the engine")
    assert [(event.message_id, event.text) for event in service.edits] == [(asked["id"], "marker")]


# --- whole conversations with the real engine --------------------------------------------------


def png(width: int = 64, height: int = 48) -> bytes:
    """A real PNG, made with Pillow."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), "red").save(out, format="PNG")
    return out.getvalue()


def zip_bytes() -> bytes:
    """A real zip archive (what a `.txt` name can hide)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("secret.bin", bytes(range(256)) * 64)
    return out.getvalue()


def last_user_content(model: RemoteModel) -> Any:
    """The content of the last user message of the newest generation request."""
    return [message for message in model.requests[-1]["messages"] if message["role"] == "user"][-1]["content"]


async def test_a_text_file_reaches_the_model_with_its_name(
    fake: FakeDiscord, start_adapter: StartAdapter
) -> None:
    await start_adapter()
    notes = fake.add_file("notes.txt", "first line\nsecond line, with ünïcödé\n".encode())
    fake.push_message(DM, "summarise this", attachments=[notes])
    [reply] = await replies(fake, DM, 1)
    assert reply.startswith("echo[0]: summarise this")
    assert "notes.txt" in reply and "second line, with ünïcödé" in reply


async def test_an_image_without_vision_gets_the_words_answered_and_a_notice(
    fake: FakeDiscord, start_adapter: StartAdapter
) -> None:
    await start_adapter()
    photo = fake.add_file("photo.png", png(), content_type="image/png")
    fake.push_message(DM, "what colour is it?", attachments=[photo])
    [reply] = await replies(fake, DM, 1)
    assert reply.startswith("echo[0]: what colour is it?") and "can't see images" in reply


async def test_with_vision_the_image_goes_to_the_model_as_a_content_part(
    fake: FakeDiscord, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    async with remote_model(vision=True) as model:
        await start_adapter(await make_engine(model.backend, model={"vision": True}))
        photo = fake.add_file("photo.png", png(), content_type="image/png")
        fake.push_message(DM, "what colour is it?", attachments=[photo])
        assert await replies(fake, DM, 1) == ["Hello there!"]
        text, image = last_user_content(model)
        assert text["type"] == "text" and "what colour is it?" in text["text"]
        assert image["type"] == "image_url" and image["image_url"]["url"].startswith("data:image/")


async def test_an_edit_changes_what_the_model_reads_and_is_not_answered(
    fake: FakeDiscord, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    async with remote_model() as model:
        await start_adapter(await make_engine(model.backend))
        asked = fake.push_message(GENERAL, mention("what is 2+2?"), guild=True)
        await replies(fake, GENERAL, 1)
        fake.edit_message(asked, mention("what is 2+3?"))
        fake.push_message(GENERAL, mention("and now?"), guild=True)
        # Answered in order: an answer to the edit would come before the one to "and now?".
        assert await replies(fake, GENERAL, 2) == ["Hello there!", "Hello there!"]
        assert len(model.requests) == 2
        history = json.dumps(model.requests[-1]["messages"])
        assert "what is 2+3?" in history and "2+2" not in history


async def test_a_deleted_message_and_the_reply_to_it_leave_the_history(
    fake: FakeDiscord, start_adapter: StartAdapter
) -> None:
    await start_adapter()
    first = fake.push_message(DM, "one")
    fake.push_message(DM, "two")
    assert await replies(fake, DM, 2) == ["echo[0]: one", "echo[2]: two"]
    fake.delete_messages(DM, [int(first["id"])])
    fake.push_message(DM, "three")
    assert (await replies(fake, DM, 3))[2] == "echo[2]: three"  # not echo[4]: two messages fewer


async def test_a_bulk_delete_takes_out_several(fake: FakeDiscord, start_adapter: StartAdapter) -> None:
    await start_adapter()
    asked = [fake.push_message(GENERAL, mention(word), guild=True) for word in ("one", "two", "three")]
    assert await replies(fake, GENERAL, 3) == ["echo[0]: one", "echo[2]: two", "echo[4]: three"]
    # A moderator's purge takes the bot's own messages along: ids the engine ignores.
    purged = [int(asked[0]["id"]), int(asked[1]["id"]), fake.sent[0].id, fake.sent[1].id]
    fake.delete_messages(GENERAL, purged)
    fake.push_message(GENERAL, mention("four"), guild=True)
    assert (await replies(fake, GENERAL, 4))[3] == "echo[2]: four"


# --- bad input: a short notice or nothing, never a crash; the channel keeps working -------------


async def test_a_50_mb_file_is_cut_and_never_downloaded_whole(
    fake: FakeDiscord, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    # A small cut, so that the echo of what was read fits one Discord message.
    await start_adapter(await make_engine(chat={"max_attachment_bytes": 1000}))
    huge = fake.add_file("huge.log", size=50_000_000, filler=LINES)
    fake.push_message(DM, "what went wrong?", attachments=[huge])
    [reply] = await replies(fake, DM, 1)
    assert reply.startswith("echo[0]: what went wrong?") and "huge.log" in reply
    assert LINES.decode().strip() in reply
    assert "huge.log is longer than" in reply and "I read its first" in reply  # the notice
    served = fake.files[int(huge["id"])]
    await fake.wait_for(lambda: served.active == 0)
    assert served.completed == 0 and served.bytes_sent < 50_000_000
    fake.push_message(DM, "still there?")
    assert (await replies(fake, DM, 2))[1].startswith("echo[2]: still there?")


async def test_a_zip_named_txt_is_not_read_and_the_words_are_answered(
    fake: FakeDiscord, start_adapter: StartAdapter
) -> None:
    await start_adapter()
    fake.push_message(DM, "read my notes", attachments=[fake.add_file("notes.txt", zip_bytes())])
    [reply] = await replies(fake, DM, 1)
    assert reply.startswith("echo[0]: read my notes") and "notes.txt isn't a text file" in reply
    assert "secret.bin" not in reply and "PK" not in reply


async def test_a_download_that_hangs_gets_a_notice_after_the_timeout(
    fake: FakeDiscord, start_adapter: StartAdapter
) -> None:
    await start_adapter(attachment_timeout_s=0.5)
    stuck = fake.add_file("stuck.txt", hang=True)
    fake.push_message(DM, "are you there?", attachments=[stuck])
    [reply] = await replies(fake, DM, 1)
    assert reply.startswith("echo[0]: are you there?") and "couldn't download stuck.txt" in reply
    fake.push_message(DM, "and now?")
    assert (await replies(fake, DM, 2))[1].startswith("echo[2]: and now?")


async def test_an_edit_of_a_message_never_stored_changes_nothing(
    fake: FakeDiscord, start_adapter: StartAdapter
) -> None:
    await start_adapter()
    chatter = fake.push_message(GENERAL, "just chatting", guild=True)  # not addressed: not stored
    fake.edit_message(chatter, "just chatting, edited")
    fake.edit_message({**chatter, "id": "12345"}, "a message from before the bot")
    fake.push_message(GENERAL, mention("hello"), guild=True)
    assert await replies(fake, GENERAL, 1) == ["echo[0]: hello"]
    assert fake.identifies == 1


async def test_a_delete_of_a_forgotten_message_does_nothing(
    fake: FakeDiscord, start_adapter: StartAdapter
) -> None:
    await start_adapter()
    first = fake.push_message(DM, "remember me")
    await replies(fake, DM, 1)
    fake.push_message(DM, "/forget")
    assert "forgot" in (await replies(fake, DM, 2))[1].lower()
    fake.delete_messages(DM, [int(first["id"])])
    fake.push_message(DM, "hello again")
    assert (await replies(fake, DM, 3))[2] == "echo[0]: hello again"
