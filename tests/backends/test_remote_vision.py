"""The openai backend's images: OpenAI content parts through the real `openai` client to the fake
server (design.md §3), only with `model.vision: true`; the tgi backend sends none. The backend
alone, and through the engine from an image attachment to the request the server records."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image

from bot.app import build_backend
from bot.backends.base import sees_images
from bot.backends.openai_chat import OpenAIChatBackend
from bot.backends.remote_prompt import CHARS_PER_TOKEN, IMAGE_TOKENS, budget_chars, fit_conversation
from bot.backends.tgi import TGIBackend
from bot.config import parse_settings
from bot.events import Attachment, ChatEvent, Downloaded
from bot.ports import Conversation, ImagePart, SamplingSettings, Turn
from tests.conftest import EngineFactory
from tests.fakes.openai_server import FakeOpenAI


def image(name: str, colour: str, mime_type: str = "image/png") -> ImagePart:
    """A small image made with Pillow, as the engine hands it over (decoded, re-encoded)."""
    buffer = io.BytesIO()
    Image.new("RGB", (12, 8), colour).save(buffer, format="PNG" if mime_type == "image/png" else "JPEG")
    return ImagePart(name, mime_type, buffer.getvalue(), 12, 8)


CAT = image("cat.png", "orange")
DOG = image("dog.jpg", "brown", "image/jpeg")
CONVERSATION = Conversation(
    system_prompt="Be brief.",
    history=[Turn("user", "hi"), Turn("assistant", "hello")],
    message="what are these?\n\n[image: cat.png]\n[image: dog.jpg]",
    context_key="test:c1",
    images=(CAT, DOG),
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        assert isinstance(server, FakeOpenAI)
        yield server


async def send(fake: FakeOpenAI, conversation: Conversation, *, vision: bool) -> tuple[str, dict[str, Any]]:
    """Prepare and stream `conversation` through a started backend; the reply and the request body."""
    backend = OpenAIChatBackend(base_url=fake.base_url, model_name="fake-chat-1", vision=vision)
    await backend.start()
    try:
        prompt = await backend.prepare(conversation, 16)
        reply = "".join([chunk async for chunk in backend.generate(prompt, SamplingSettings())])
    finally:
        await backend.stop()
    body = fake.generation_requests[-1].body
    assert isinstance(body, dict)
    return reply, body


async def test_with_vision_the_last_user_message_goes_as_text_then_image_parts(fake: FakeOpenAI) -> None:
    reply, body = await send(fake, CONVERSATION, vision=True)
    assert reply == "Hello there!"
    messages = body["messages"]
    assert messages[:-1] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    assert messages[-1] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "what are these?\n\n[image: cat.png]\n[image: dog.jpg]"},
            {"type": "image_url", "image_url": {"url": CAT.data_url}},
            {"type": "image_url", "image_url": {"url": DOG.data_url}},
        ],
    }
    # The data URLs carry the very bytes, and a decoder reads them as the images they were.
    header, _, data = messages[-1]["content"][2]["image_url"]["url"].partition(",")
    assert header == "data:image/jpeg;base64"
    assert Image.open(io.BytesIO(base64.b64decode(data))).size == (12, 8)


async def test_with_vision_a_message_without_images_stays_a_string(fake: FakeOpenAI) -> None:
    _, body = await send(fake, Conversation("Be brief.", [], "just text"), vision=True)
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "just text"},
    ]


async def test_without_vision_every_message_is_a_string_and_no_image_is_sent(fake: FakeOpenAI) -> None:
    backend = OpenAIChatBackend(base_url=fake.base_url, model_name="fake-chat-1")
    assert not sees_images(backend)
    prompt = await backend.prepare(CONVERSATION, 16)
    assert prompt.images == ()
    _, body = await send(fake, CONVERSATION, vision=False)
    assert body["messages"][-1] == {
        "role": "user",
        "content": "what are these?\n\n[image: cat.png]\n[image: dog.jpg]",
    }
    assert all(isinstance(m["content"], str) for m in body["messages"])
    assert "base64" not in str(body)


async def test_sees_images_follows_model_vision_and_tgi_never_does() -> None:
    def openai(vision: bool) -> Any:
        model = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "name": "m", "vision": vision}
        return build_backend(parse_settings({"model": model}).model)

    assert sees_images(openai(True)) and not sees_images(openai(False))
    tgi = TGIBackend(base_url="http://127.0.0.1:9")
    assert not sees_images(tgi)
    prompt = await tgi.prepare(CONVERSATION, 16)
    assert prompt.images == () and "[image: cat.png]" in prompt.input_text


def test_each_image_takes_its_estimate_from_the_budget() -> None:
    # Room for the system prompt, the message and exactly the five newest turns.
    history = [Turn("user" if i % 2 == 0 else "assistant", f"turn {i:02d} " + "x" * 1000) for i in range(40)]
    turn_chars = len(history[0].text) + 16
    conversation = Conversation("sys", history, "look", images=(CAT,))
    budget = 3 + 16 + 4 + 16 + 5 * turn_chars + IMAGE_TOKENS * CHARS_PER_TOKEN
    assert len(fit_conversation(conversation, budget, images=1).history) == 5
    assert len(fit_conversation(conversation, budget, images=0).history) > 5
    assert len(fit_conversation(conversation, budget).history) > 5  # no images unless told
    # However many images, the text keeps half the budget.
    half = fit_conversation(conversation, budget, images=100)
    assert len(half.history) == (budget - budget // 2 - 3 - 16 - 4 - 16) // turn_chars
    assert not half.message_cut


async def test_prepare_counts_the_images_it_sends(fake: FakeOpenAI) -> None:
    history = [Turn("user" if i % 2 == 0 else "assistant", "y" * 400) for i in range(40)]
    conversation = Conversation("sys", history, "look", images=(CAT, DOG))
    window = 4096
    seeing = OpenAIChatBackend(base_url=fake.base_url, model_name="m", context_window=window, vision=True)
    blind = OpenAIChatBackend(base_url=fake.base_url, model_name="m", context_window=window)
    with_images = await seeing.prepare(conversation, 96)
    without = await blind.prepare(conversation, 96)
    assert with_images.history_used < without.history_used
    budget = budget_chars(window, 96)
    assert budget is not None
    assert with_images.history_used == len(fit_conversation(conversation, budget, images=2).history)


# --- through the engine -------------------------------------------------------------------------


def photo_attachment(name: str = "photo.png") -> Attachment:
    """A Pillow-made photo as an adapter hands it over, downloaded from memory."""
    data = image(name, "green").data

    async def download(limit: int) -> Downloaded:
        return Downloaded(data[:limit], complete=len(data) <= limit)

    return Attachment(name, "image/png", len(data), True, download)


def photo_message(text: str, *attachments: Attachment) -> ChatEvent:
    return ChatEvent("test", "c1", "u1", "Ann", text, is_direct=True, attachments=attachments)


@pytest.mark.parametrize("vision", [True, False])
async def test_a_photo_sent_to_the_bot_reaches_the_server_only_with_vision(
    fake: FakeOpenAI, make_engine: EngineFactory, vision: bool
) -> None:
    backend = OpenAIChatBackend(base_url=fake.base_url, model_name="fake-chat-1", vision=vision)
    await backend.start()
    try:
        engine = await make_engine(backend, model={"system_prompt": "Be brief."})
        answer = await engine.ask(photo_message("what is this?", photo_attachment()))
        first = fake.generation_requests[-1].body["messages"][-1]
        await engine.ask(photo_message("and now?"))
        second = fake.generation_requests[-1].body["messages"]
    finally:
        await backend.stop()
    text = "what is this?\n\n[image: photo.png]"
    if vision:
        assert answer == "Hello there!"
        assert first["role"] == "user"
        assert [part["type"] for part in first["content"]] == ["text", "image_url"]
        assert first["content"][0] == {"type": "text", "text": text}
        assert first["content"][1]["image_url"]["url"].startswith(
            ("data:image/png;base64,", "data:image/jpeg;base64,")
        )
    else:
        assert "can't see images" in answer
        assert first == {"role": "user", "content": text}
    # The next turn keeps the placeholder only; every message is a plain string again.
    assert second[1:] == [
        {"role": "user", "content": text},
        {"role": "assistant", "content": "Hello there!"},
        {"role": "user", "content": "and now?"},
    ]
