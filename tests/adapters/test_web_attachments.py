"""Files sent with a message and messages deleted, through the web API: real server, real engine."""

from __future__ import annotations

import asyncio
import base64
import io

import pytest
from PIL import Image

from adapters.web_attachments import AttachmentIn, BadAttachment, ReceivedFile, clean_name, to_attachments
from bot.events import Downloaded
from storage.repository import ChatRepository
from tests.bot.doubles import LineBackend
from tests.conftest import EngineFactory
from tests.fakes.waiting import wait_until
from tests.fakes.web_harness import running_web, web_client

PRIVATE = "p-" + "A" * 32  # the shape of the ids the chat page makes
OTHER_PRIVATE = "p-" + "B" * 32
ADMIN_KEY = "admin-secret-456"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png(width: int = 8, height: int = 6) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def text_file(name: str, text: str) -> dict[str, str]:
    return {"name": name, "type": "text/plain", "data": b64(text.encode())}


# --- the request's files become Attachments ---------------------------------------------------


async def test_received_files_download_what_came_up_to_the_limit() -> None:
    whole = ReceivedFile(b"0123456789")
    assert await whole(100) == Downloaded(b"0123456789", complete=True)
    assert await whole(10) == Downloaded(b"0123456789", complete=True)
    assert await whole(4) == Downloaded(b"0123", complete=False)
    with pytest.raises(ValueError, match="negative"):
        await whole(-1)


async def test_request_files_become_attachments_with_clean_names_and_types() -> None:
    files = [
        AttachmentIn(name="C:\\fakepath\\notes.txt", type="text/plain; charset=UTF-8", data=b64(b"hi")),
        AttachmentIn(name="../../dot.PNG", type="Image/PNG", data=b64(png())),
        AttachmentIn(name="trace\x00\u202e.log", type="", data="bGluZSAx\nDQpvaw=="),
    ]
    notes, dot, trace = to_attachments(files, max_count=4)
    assert (notes.name, notes.mime_type, notes.size, notes.image) == ("notes.txt", "text/plain", 2, False)
    assert (dot.name, dot.mime_type, dot.image) == ("dot.PNG", "image/png", True)
    assert (await dot.download(10_000)).data == png()
    assert (trace.name, trace.mime_type, trace.image) == ("trace.log", None, False)
    assert (await trace.download(100)).data == b"line 1\r\nok"  # base64 with a line break in it


def test_bad_request_files_are_refused_with_the_reason() -> None:
    def refusal(files: list[AttachmentIn], max_count: int = 4) -> str:
        with pytest.raises(BadAttachment) as caught:
            to_attachments(files, max_count)
        return str(caught.value)

    good = AttachmentIn(name="a.txt", type="text/plain", data=b64(b"a"))
    assert refusal([good] * 3, max_count=2) == "too many attachments (3): at most 2 files per message"
    assert refusal([good], max_count=0) == "too many attachments (1): attachments are switched off"
    bad_data = AttachmentIn(name="x.txt", type="text/plain", data="not base64!")
    assert refusal([good, bad_data]) == "attachments[1] (x.txt): data is not valid base64"
    assert "data is not valid base64" in refusal([AttachmentIn(name="x", type=None, data="abc")])  # padding
    assert (
        refusal([AttachmentIn(name="a/", type=None, data="")]) == "attachments[0].name: the file needs a name"
    )
    bad_type = AttachmentIn(name="a.txt", type="text plain", data="")
    assert refusal([bad_type]) == "attachments[0].type: not a MIME type such as text/plain or image/png"
    assert clean_name("x" * 300 + ".txt") == "x" * 255


# --- over HTTP --------------------------------------------------------------------------------


async def test_a_text_file_is_read_with_the_message(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    async with running_web(await make_engine(), repository) as web, web_client(web) as client:
        body = {
            "text": "what does it say?",
            "message_id": "m-file-1",
            "attachments": [text_file("notes.txt", "the cat sat on the mat")],
        }
        sent = await client.post(f"/api/channels/{PRIVATE}/messages", json=body)
        history = (await client.get(f"/api/channels/{PRIVATE}/messages")).json()["messages"]
    assert sent.status_code == 200
    reply = sent.json()["reply"]
    assert reply.startswith("echo[0]: what does it say?")
    assert "notes.txt" in reply and "the cat sat on the mat" in reply
    user = history[0]
    assert (user["role"], user["content"], user["message_id"]) == ("user", "what does it say?", "m-file-1")
    assert "notes.txt" in user["attached"] and "the cat sat on the mat" in user["attached"]
    assert history[1]["message_id"] is None and history[1]["attached"] is None


async def test_a_file_alone_needs_no_text(make_engine: EngineFactory, repository: ChatRepository) -> None:
    async with running_web(await make_engine(), repository) as web, web_client(web) as client:
        body = {"text": "", "attachments": [text_file("todo.md", "- buy milk")]}
        sent = await client.post("/api/channels/files-only/messages", json=body)
    assert sent.status_code == 200
    assert sent.json()["status"] == "answered"
    assert "todo.md" in sent.json()["reply"] and "- buy milk" in sent.json()["reply"]


async def test_an_image_for_a_model_that_cannot_see_gets_told_so(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    async with running_web(await make_engine(), repository) as web, web_client(web) as client:
        body = {
            "text": "what is this?",
            "attachments": [{"name": "red.png", "type": "image/png", "data": b64(png())}],
        }
        sent = await client.post("/api/channels/pictures/messages", json=body)
    assert sent.status_code == 200
    reply = sent.json()["reply"]
    assert reply.startswith("echo[0]: what is this?")
    assert "image" in reply.lower() and "see" in reply.lower()


async def test_a_body_over_the_upload_cap_gets_413_and_nothing_is_stored(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    async with (
        running_web(await make_engine(), repository, max_upload_bytes=64 * 1024) as web,
        web_client(web) as client,
    ):
        big = {"text": "take this", "attachments": [text_file("big.txt", "x" * 60_000)]}
        refused = await client.post("/api/channels/up/messages", json=big)
        small = {"text": "and this", "attachments": [text_file("small.txt", "x" * 30_000)]}
        accepted = await client.post("/api/channels/up/messages", json=small)
    assert refused.status_code == 413
    assert refused.json() == {"error": "request body too large (at most 65536 bytes)"}
    assert accepted.status_code == 200 and accepted.json()["reply"].startswith("echo[0]: and this")


async def test_malformed_files_get_400_and_nothing_is_stored(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    async with (
        running_web(await make_engine(), repository, max_attachments=2) as web,
        web_client(web) as client,
    ):
        url = "/api/channels/bad/messages"
        bad_base64 = await client.post(
            url, json={"text": "hi", "attachments": [{"name": "a.txt", "type": "text/plain", "data": "%%%"}]}
        )
        bad_type = await client.post(
            url, json={"text": "hi", "attachments": [{"name": "a.txt", "type": "not a type", "data": ""}]}
        )
        too_many = await client.post(
            url, json={"text": "hi", "attachments": [text_file(f"{n}.txt", "x") for n in range(3)]}
        )
        missing_data = await client.post(url, json={"text": "hi", "attachments": [{"name": "a.txt"}]})
        bad_id = await client.post(url, json={"text": "hi", "message_id": "has space"})
    assert bad_base64.status_code == 400
    assert bad_base64.json() == {"error": "attachments[0] (a.txt): data is not valid base64"}
    assert bad_type.status_code == 400 and "not a MIME type" in bad_type.json()["error"]
    assert too_many.status_code == 400
    assert too_many.json() == {"error": "too many attachments (3): at most 2 files per message"}
    # The JSON's own shape is checked as every field of the API is: 422 naming the field.
    assert missing_data.status_code == 422 and "attachments.0.data" in missing_data.json()["error"]
    assert bad_id.status_code == 422
    assert "message id must be 1 to 128 of the characters" in bad_id.json()["error"]
    assert await repository.message_count("web:bad") == 0


async def test_the_limits_are_told_to_the_page(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    options = {"max_attachments": 3, "max_upload_bytes": 5000}
    async with running_web(await make_engine(), repository, **options) as web, web_client(web) as client:
        limits = await client.get("/api/limits")
    assert limits.json() == options


# --- deleting a message -----------------------------------------------------------------------


async def test_deleting_a_message_removes_it_and_its_reply(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    messages = f"/api/channels/{PRIVATE}/messages"
    async with running_web(await make_engine(), repository) as web, web_client(web) as client:
        await client.post(messages, json={"text": "one", "message_id": "id-one"})
        second = await client.post(messages, json={"text": "two", "message_id": "id-two"})
        assert second.json()["reply"] == "echo[2]: two"
        deleted = await client.delete(f"{messages}/id-one")
        third = await client.post(messages, json={"text": "three", "message_id": "id-three"})
        history = (await client.get(messages)).json()["messages"]
        again = await client.delete(f"{messages}/id-one")
        unknown = await client.delete(f"{messages}/never-sent")
        bad_id = await client.delete(f"{messages}/not%20an%20id")
    assert deleted.status_code == 200 and deleted.json() == {"deleted": 2}
    assert third.json()["reply"] == "echo[2]: three"  # "two" and its reply: one exchange fewer
    assert [item["content"] for item in history] == ["two", "echo[2]: two", "three", "echo[2]: three"]
    for gone in (again, unknown):
        assert gone.status_code == 404
        assert gone.json() == {
            "error": "no message with that id in this channel (never stored, or deleted already)"
        }
    assert bad_id.status_code == 422


async def test_a_delete_reaches_only_its_own_channel(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with (
        running_web(await make_engine(), repository, admin_api_key=ADMIN_KEY) as web,
        web_client(web) as client,
    ):
        await client.post(
            f"/api/channels/{PRIVATE}/messages", json={"text": "mine", "message_id": "shared-id"}
        )
        await client.post("/api/channels/lobby/messages", json={"text": "public", "message_id": "lobby-id"})
        # Another page's channel names the same id: the message is out of its reach.
        elsewhere = await client.delete(f"/api/channels/{OTHER_PRIVATE}/messages/shared-id")
        # A named channel belongs to no page: deleting there needs the admin key.
        anonymous = await client.delete("/api/channels/lobby/messages/lobby-id")
        wrong_key = await client.delete(
            "/api/channels/lobby/messages/lobby-id", headers={"Authorization": "Bearer nope"}
        )
        assert await repository.message_count(f"web:{PRIVATE}") == 2
        assert await repository.message_count("web:lobby") == 2
        with_key = await client.delete("/api/channels/lobby/messages/lobby-id", headers=admin)
    assert elsewhere.status_code == 404
    assert anonymous.status_code == 401 and wrong_key.status_code == 403
    assert with_key.json() == {"deleted": 2}
    assert await repository.message_count("web:lobby") == 0
    assert await repository.message_count(f"web:{PRIVATE}") == 2


def is_engine_delete(task: asyncio.Task[object]) -> bool:
    return task.get_name().startswith("chinwag:delete:")


async def test_a_delete_waits_for_the_reply_being_written(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    """A delete takes its turn after the channel's pending messages: the reply still being written
    is finished, stored, and deleted with its question."""
    backend = LineBackend()
    backend.hold("slow")
    messages = f"/api/channels/{PRIVATE}/messages"
    async with running_web(await make_engine(backend), repository) as web, web_client(web) as client:
        asking = asyncio.create_task(client.post(messages, json={"text": "slow", "message_id": "id-slow"}))
        await wait_until(lambda: backend.running == ["slow"], what="the reply is being written")
        deleting = asyncio.create_task(client.delete(f"{messages}/id-slow"))
        # The server runs in this loop: the engine's delete task is queued behind the reply.
        await wait_until(lambda: any(is_engine_delete(task) for task in asyncio.all_tasks()), what="queued")
        assert not deleting.done()
        backend.release("slow")
        answered, deleted = await asyncio.wait_for(asyncio.gather(asking, deleting), 10)
    assert answered.json()["reply"] == "echo[0]: slow"
    assert deleted.json() == {"deleted": 2}
    assert await repository.message_count(f"web:{PRIVATE}") == 0


async def test_a_megabyte_file_fits_the_default_limits_and_is_cut_with_a_notice(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    """Far over `web.max_body_bytes` (64 KiB), well under `web.max_upload_bytes` (25 MiB); the
    engine reads its first `chat.max_attachment_bytes` (256 KiB), not the whole megabyte."""
    async with running_web(await make_engine(), repository) as web, web_client(web) as client:
        body = {"text": "long one", "attachments": [text_file("big.log", "line\n" * 200_000)]}
        sent = await client.post("/api/channels/big-file/messages", json=body)
    assert sent.status_code == 200
    reply = sent.json()["reply"]
    assert reply.startswith("echo[0]: long one\n\n[file: big.log, first 256 KB]\nline\n")
    assert reply.endswith("line\n[end of file]\n\n(big.log is longer than 256 KB: I read its first 256 KB.)")
    assert 256 * 1024 < len(reply) < 257 * 1024
