"""Files, photos and edits on Telegram, end to end: the real python-telegram-bot against the fake
Bot API (getFile and the file route included), the real engine, the echo backend or the fake
OpenAI-compatible server. Images are made with Pillow here; assertions are on what the fake saw
(the calls the bot made, the bytes it sent) and what the user was shown."""

from __future__ import annotations

import asyncio
import io
import logging
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr
from telegram import Bot

from adapters.telegram import TelegramAdapter
from adapters.telegram_files import TelegramFiles, file_base_url
from adapters.telegram_format import visible_text
from bot.config import ChatConfig, TelegramConfig
from bot.errors import AttachmentUnavailable
from bot.events import ChatEvent
from bot.ports import ChatService
from storage.db import Database
from storage.inbox import UpdateInbox
from storage.repository import ChatRepository
from tests.adapters.doubles import ForwardingService
from tests.adapters.remote_model import remote_model
from tests.adapters.test_telegram import ports
from tests.conftest import EngineFactory
from tests.fakes.telegram_server import BOT_USERNAME, FakeFile, FakeTelegram
from tests.fakes.waiting import ReplyLog, wait_until

TOKEN = "123456:TEST-token-never-logged"
USER = 111
GROUP = -1001000000002
MB = 1024 * 1024

StartAdapter = Callable[..., Awaitable[TelegramAdapter]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(token=TOKEN, max_long_poll_s=0.5) as server:
        yield server


@pytest.fixture
async def start_adapter(fake: FakeTelegram, database: Database) -> AsyncIterator[StartAdapter]:
    """Start an adapter with `engine`, the attachment limits of `chat` and `telegram:` options."""
    adapters: list[TelegramAdapter] = []

    async def start(
        engine: ChatService, *, chat: dict[str, Any] | None = None, **options: Any
    ) -> TelegramAdapter:
        config = TelegramConfig(
            token=SecretStr(TOKEN), base_url=fake.base_url, poll_timeout_s=1, edit_interval_s=0.2, **options
        )
        adapter = TelegramAdapter(config, engine, *ports(database), chat=ChatConfig(**(chat or {})))
        adapters.append(adapter)
        await adapter.start()
        return adapter

    yield start
    for adapter in adapters:
        await adapter.stop()


async def replies(fake: FakeTelegram, chat_id: int, count: int) -> list[str]:
    """Wait until the bot sent `count` messages to `chat_id` and each shows a finished reply's
    whole text as a user reads it (the Markdown rendered: a file's lines lose trailing spaces)."""
    await fake.wait_for(lambda: len(fake.texts(chat_id)) >= count)
    await wait_until(
        lambda: ReplyLog.of_this_test().all_final(fake.texts(chat_id), lambda text: [visible_text(text)]),
        what="the replies settle",
    )
    return fake.texts(chat_id)


def jpeg(side: int) -> bytes:
    """A `side` x `side` JPEG of noise, made here (noise, so that a larger side is a larger file)."""
    buffer = io.BytesIO()
    Image.effect_noise((side, side), 64).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def photo_sizes(fake: FakeTelegram) -> list[tuple[FakeFile, int, int]]:
    """One photo in the three sizes Telegram makes of it, smallest first."""
    return [(fake.add_file(jpeg(side), extension="jpg"), side, side) for side in (90, 320, 800)]


async def inbox_state(database: Database, update: dict[str, Any]) -> str | None:
    return await UpdateInbox(database, "telegram").state(int(update["update_id"]))


async def until_done(database: Database, update: dict[str, Any]) -> None:
    async def done() -> bool:
        return await inbox_state(database, update) == "done"

    await wait_until(done, what=f"update {update['update_id']} is marked done")


async def user_rows(database: Database, chat_id: int) -> list[str]:
    """The stored texts of the users' messages of a chat, oldest first."""
    rows = await ChatRepository(database).recent_messages(f"telegram:{chat_id}", limit=100)
    return [row.content for row in rows if row.role == "user"]


# --- downloads: getFile, then the file route (the real library, no engine) -------------------


@pytest.fixture
async def files(fake: FakeTelegram) -> AsyncIterator[Callable[[float], TelegramFiles]]:
    """`TelegramFiles` on a real `Bot` pointed at the fake, as the adapter builds them (and with
    httpx's URL logging off, as the adapter turns it off: the URLs hold the token)."""
    quiet = [logging.getLogger(name) for name in ("httpx", "httpcore")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.WARNING)
    base_file_url = file_base_url(fake.base_url)
    assert base_file_url is not None
    bot = Bot(TOKEN, base_url=fake.base_url, base_file_url=base_file_url)
    await bot.initialize()
    client = httpx.AsyncClient()

    async def direct(call: Callable[[], Awaitable[Any]]) -> Any:
        return await call()

    def make(timeout_s: float = 5.0) -> TelegramFiles:
        return TelegramFiles(bot=bot, client=client, timeout_s=timeout_s, requester=direct)

    yield make
    await client.aclose()
    await bot.shutdown()
    for logger, level in zip(quiet, levels, strict=True):
        logger.setLevel(level)


async def test_a_file_comes_from_getfile_then_the_file_route(
    fake: FakeTelegram, files: Callable[[float], TelegramFiles]
) -> None:
    notes = fake.add_file(b"The tea is green.\n", extension="txt")
    got = await files(5.0).download(notes.file_id)(1000)
    assert (got.data, got.complete) == (b"The tea is green.\n", True)
    assert [(call.method, call.params) for call in fake.calls] == [
        ("getMe", {}),
        ("getFile", {"file_id": notes.file_id}),
        ("download", {"file_path": notes.file_path}),  # GET /file/bot<token>/<file_path>
    ]
    exact = await files(5.0).download(notes.file_id)(len(b"The tea is green.\n"))
    assert exact.complete  # a file of exactly the limit is whole
    cut = await files(5.0).download(notes.file_id)(7)
    assert (cut.data, cut.complete) == (b"The tea", False)


async def test_a_50_mb_file_is_read_only_up_to_the_limit(
    fake: FakeTelegram, files: Callable[[float], TelegramFiles]
) -> None:
    big = fake.add_file(b"a" * (64 * 1024), repeat=800, declared_size=None, extension="txt")  # 50 MB
    assert big.size == 50 * MB
    got = await files(10.0).download(big.file_id)(262_144)
    assert (len(got.data), got.complete) == (262_144, False)
    # The client stopped reading: the server could push at most what the sockets buffer.
    await wait_until(lambda: big.downloads_ended == 1, what="the server stops sending")
    assert big.bytes_sent < 20 * MB


async def test_telegram_refusing_a_file_over_20_mb_is_a_readable_reason(
    fake: FakeTelegram, files: Callable[[float], TelegramFiles], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    huge = fake.add_file(b"x", declared_size=25 * MB)
    with pytest.raises(AttachmentUnavailable, match="20 MB") as caught:
        await files(5.0).download(huge.file_id)(1000)
    assert huge.downloads == 0
    assert "TEST-token" not in str(caught.value) and "TEST-token" not in caplog.text


async def test_a_download_that_hangs_gives_up_at_the_deadline(
    fake: FakeTelegram, files: Callable[[float], TelegramFiles], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    stuck = fake.add_file(b"never sent", hang=True)
    with pytest.raises(AttachmentUnavailable, match=r"0\.3 s") as caught:
        await files(0.3).download(stuck.file_id)(1000)
    assert stuck.downloads == 1 and stuck.bytes_sent == 0
    assert "TEST-token" not in str(caught.value) and "TEST-token" not in caplog.text


async def test_a_closed_adapter_downloads_nothing(
    fake: FakeTelegram, files: Callable[[float], TelegramFiles]
) -> None:
    notes = fake.add_file(b"text")
    made = files(5.0)
    await made.client.aclose()
    with pytest.raises(AttachmentUnavailable, match="shutting down"):
        await made.download(notes.file_id)(10)
    assert fake.calls_to("getFile") == []


async def test_the_adapter_asks_for_edits_and_reads_files_from_the_file_url(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    await start_adapter(await make_engine())
    await fake.wait_for(lambda: bool(fake.calls_to("getUpdates")))
    assert fake.calls_to("getUpdates")[0].params["allowed_updates"] == ["message", "edited_message"]


# --- end to end: what users send, what they see -----------------------------------------------


async def test_a_text_document_is_read_into_the_turn(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory, database: Database
) -> None:
    await start_adapter(await make_engine())
    notes = fake.add_file(b"The tea is green.\nThe pot is blue.\n", extension="txt")
    fake.push_document(USER, notes, file_name="notes.txt", mime_type="text/plain", caption="summarise")
    (reply,) = await replies(fake, USER, 1)
    assert reply.startswith("echo[0]: summarise")
    assert "notes.txt" in reply and "The tea is green.\nThe pot is blue." in reply
    assert [call.method for call in fake.calls if call.method in ("getFile", "download")] == [
        "getFile",
        "download",
    ]
    assert await user_rows(database, USER) == ["summarise"]  # the file's text is kept beside it


async def test_group_files_are_answered_when_addressed_like_text(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    await start_adapter(await make_engine())
    # A photo shared with the group is chatter; one whose caption mentions the bot is a question.
    fake.push_photo(GROUP, photo_sizes(fake), caption="our cat")
    fake.push_photo(GROUP, photo_sizes(fake), caption=f"@{BOT_USERNAME} what breed is this?")
    (first,) = await replies(fake, GROUP, 1)  # in order: an answer to the chatter would come first
    assert first.startswith("echo[0]: what breed is this?") and "image" in first
    # A document without a caption, replying to the bot.
    log = fake.add_file(b"ERROR disk full\n", extension="log")
    asked = fake.push_document(GROUP, log, file_name="app.log", mime_type="text/plain", reply_to=fake.sent[0])
    texts = await replies(fake, GROUP, 2)
    assert "app.log" in texts[1] and "ERROR disk full" in texts[1]
    assert fake.sent[1].reply_to == asked["message"]["message_id"]


async def test_a_photo_without_vision_answers_the_caption_and_says_it_cannot_see(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    await start_adapter(await make_engine())
    fake.push_photo(USER, photo_sizes(fake), caption="what colour is this?")
    (reply,) = await replies(fake, USER, 1)
    assert "what colour is this?" in reply
    assert "image" in reply.lower()


async def test_a_photo_with_vision_reaches_the_model_as_content_parts(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    sizes = photo_sizes(fake)
    (_, _, _), (medium, _, _), (large, _, _) = sizes
    # The limit falls between the two larger sizes: the medium one is the largest that fits.
    limits = {"max_image_bytes": (medium.size + large.size) // 2}
    async with remote_model(vision=True) as model:
        engine = await make_engine(model.backend, model={"vision": True}, chat=limits)
        await start_adapter(engine, chat=limits)
        fake.push_photo(USER, sizes, caption="what colour is this?")
        await fake.wait_for(lambda: len(fake.calls_to("sendMessage")) >= 1)
        await wait_until(lambda: bool(model.requests), what="the model is asked")
        *_, last = model.requests[-1]["messages"]
        assert last["role"] == "user"
        text, image = last["content"]
        assert text["type"] == "text" and "what colour is this?" in text["text"]
        assert image["type"] == "image_url"
        assert image["image_url"]["url"].startswith("data:image/jpeg;base64,")
    # The largest size under chat.max_image_bytes was fetched, and only that one.
    assert [call.params["file_id"] for call in fake.calls_to("getFile")] == [medium.file_id]
    assert medium.downloads == 1


async def test_an_edit_replaces_the_stored_text_and_is_not_answered(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory, database: Database
) -> None:
    await start_adapter(await make_engine())
    first = fake.push_message(USER, "I like tea")
    assert await replies(fake, USER, 1) == ["echo[0]: I like tea"]
    edit = fake.push_edit(first, "I like coffee")
    await until_done(database, edit)
    assert len(fake.calls_to("sendMessage")) == 1  # the edit itself got no answer
    fake.push_message(USER, "what do I like?")
    assert (await replies(fake, USER, 2))[1] == "echo[2]: what do I like?"
    assert await user_rows(database, USER) == ["I like coffee", "what do I like?"]


class EditsNeverFinish(ForwardingService):
    """The engine, except that an edit never finishes: the process "dies" while applying it."""

    def __init__(self, engine: ChatService) -> None:
        super().__init__(engine)
        self.edits: list[ChatEvent] = []

    def edit(self, event: ChatEvent) -> asyncio.Task[bool]:
        self.edits.append(event)
        return asyncio.get_running_loop().create_task(self._forever())

    async def _forever(self) -> bool:
        await asyncio.Event().wait()  # cancelled when the adapter stops
        return False


async def test_an_edit_left_pending_by_a_crash_is_applied_at_the_next_start(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory, database: Database
) -> None:
    """kill -9 safety holds for edits: an edit received (committed to the inbox, confirmed to
    Telegram) but not applied when the process died is applied at the next start and marked
    done; nothing is posted for it."""
    dying = EditsNeverFinish(await make_engine())
    first_run = await start_adapter(dying, drain_s=0.1)
    first = fake.push_message(USER, "meet at 5")
    await replies(fake, USER, 1)
    edit = fake.push_edit(first, "meet at 6")
    await wait_until(lambda: len(dying.edits) == 1, what="the edit reaches the engine")
    await first_run.stop()  # the worker is cancelled mid-edit, as by a kill
    assert fake.unconfirmed == []  # Telegram will not send the edit again
    assert await inbox_state(database, edit) == "pending"
    assert await user_rows(database, USER) == ["meet at 5"]

    await start_adapter(await make_engine())
    await until_done(database, edit)
    assert await user_rows(database, USER) == ["meet at 6"]
    assert len(fake.calls_to("sendMessage")) == 1


async def test_an_edit_of_a_message_never_stored_changes_nothing(
    fake: FakeTelegram,
    start_adapter: StartAdapter,
    make_engine: EngineFactory,
    database: Database,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await start_adapter(await make_engine())
    hello = fake.push_message(USER, "hello")
    await replies(fake, USER, 1)
    never_stored = {"message": {**hello["message"], "message_id": 4242}}  # e.g. sent before the bot ran
    with caplog.at_level(logging.INFO, logger="adapters.telegram"):
        edit = fake.push_edit(never_stored, "edited text")
        await until_done(database, edit)
    assert "changed nothing" in caplog.text
    assert await user_rows(database, USER) == ["hello"]
    assert len(fake.calls_to("sendMessage")) == 1
    fake.push_message(USER, "still fine?")
    assert (await replies(fake, USER, 2))[1] == "echo[2]: still fine?"


async def test_a_50_mb_document_is_cut_and_never_read_whole(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    # A small text limit keeps the echoed reply to one Telegram message; 50 MB is far past it.
    await start_adapter(await make_engine(chat={"max_attachment_bytes": 2000}))
    big = fake.add_file(b"tea " * (16 * 1024), repeat=800, declared_size=None, extension="txt")  # 50 MB
    fake.push_document(USER, big, file_name="big.txt", mime_type="text/plain", caption="read it")
    (reply,) = await replies(fake, USER, 1)
    assert reply.startswith("echo[0]: read it") and "big.txt" in reply
    assert "(big.txt is longer than 2 KB: I read its first 2 KB.)" in reply
    await wait_until(lambda: big.downloads_ended == 1, what="the server stops sending")
    assert big.bytes_sent < 20 * MB


async def test_a_zip_renamed_txt_gets_a_binary_notice_and_its_caption_an_answer(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    await start_adapter(await make_engine())
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("secret.bin", bytes(range(256)) * 64)
    zipped = fake.add_file(packed.getvalue(), extension="txt")
    fake.push_document(USER, zipped, file_name="notes.txt", mime_type="text/plain", caption="open this")
    (reply,) = await replies(fake, USER, 1)
    assert "open this" in reply
    assert "notes.txt" in reply and "PK" not in reply
    assert any(notice in reply for notice in ("binary", "not text", "isn't a text"))


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        ("Grüße aus Köln, café crème".encode("utf-16"), "Grüße aus Köln, café crème"),  # UTF-16 with a BOM
        (b"valid start \xff\xfe\xc3 then broken bytes", "valid start"),  # not valid UTF-8
    ],
    ids=["utf-16-bom", "invalid-utf-8"],
)
async def test_encodings_are_decoded_or_replaced_never_a_crash(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory, body: bytes, shown: str
) -> None:
    await start_adapter(await make_engine())
    file = fake.add_file(body, extension="txt")
    fake.push_document(USER, file, file_name="letter.txt", mime_type="text/plain", caption="read")
    (reply,) = await replies(fake, USER, 1)
    assert "letter.txt" in reply and shown in reply
    fake.push_message(USER, "still there?")
    assert (await replies(fake, USER, 2))[1] == "echo[2]: still there?"


async def test_a_file_telegram_will_not_hand_out_gets_a_notice(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    await start_adapter(await make_engine())
    huge = fake.add_file(b"x", declared_size=25 * MB, extension="txt")
    fake.push_document(USER, huge, file_name="dump.txt", mime_type="text/plain", caption="look")
    (reply,) = await replies(fake, USER, 1)
    assert "look" in reply and "dump.txt" in reply and "20 MB" in reply
    assert huge.downloads == 0


async def test_a_download_that_hangs_gets_a_notice_and_the_chat_goes_on(
    fake: FakeTelegram,
    start_adapter: StartAdapter,
    make_engine: EngineFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    limits = {"attachment_timeout_s": 0.5}
    await start_adapter(await make_engine(chat=limits), chat=limits)
    stuck = fake.add_file(b"never sent", hang=True, extension="txt")
    fake.push_document(USER, stuck, file_name="slow.txt", mime_type="text/plain", caption="wait for it")
    (reply,) = await replies(fake, USER, 1)
    assert "wait for it" in reply and "slow.txt" in reply and "0.5 s" in reply
    fake.push_message(USER, "next")
    assert (await replies(fake, USER, 2))[1].endswith(": next")
    assert "TEST-token" not in caplog.text
