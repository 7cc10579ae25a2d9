"""LocalBackend on a tiny random LLaVA built in the test: an image-text-to-text model sees images.

The model's text is gibberish; what is checked is the machinery: the images reach the model
(pixel values, one image token per patch), the reply streams and equals the plain transformers
generation, later turns work, prompts are fitted with the images' room, and text models,
batching and the text path stay as they were.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.backends import vision_inputs
from bot.backends.base import GenerationReport, PreparedPrompt, sees_images
from bot.backends.batching_settings import BatchingSettings
from bot.backends.local import LocalBackend
from bot.errors import BackendError, ModelLoadError
from bot.ports import Conversation, ImagePart, SamplingSettings, Turn
from tests.backends.tiny_models import (
    LLAVA_IMAGE_SIDE,
    LLAVA_IMAGE_TOKENS,
    build_tiny_llava,
    make_tokenizer,
    started,
)

WAIT = 30.0  # generous bound for any single await; the tiny model answers in milliseconds
GREEDY = SamplingSettings(temperature=0, max_new_tokens=12)


def image(name: str, colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> ImagePart:
    """An image made with Pillow, as the engine hands it over (decoded, re-encoded as PNG)."""
    buffer = io.BytesIO()
    picture = Image.new("RGB", size, colour)
    picture.paste((255 - colour[0], colour[1], 255 - colour[2]), (0, 0, size[0] // 2, size[1] // 3))
    picture.save(buffer, format="PNG")
    return ImagePart(name, "image/png", buffer.getvalue(), *size)


RED = image("red.png", (220, 30, 30))
BLUE = image("blue.png", (20, 40, 230), (64, 48))


def asking(*images: ImagePart, history: tuple[Turn, ...] = (), text: str = "What is this?") -> Conversation:
    placeholders = "\n".join(f"[image: {i.name}]" for i in images)
    message = f"{text}\n\n{placeholders}" if images else text
    return Conversation("Be brief.", history, message, context_key="test:c1", images=images)


async def reply(
    backend: LocalBackend, conversation: Conversation
) -> tuple[list[str], GenerationReport, PreparedPrompt]:
    """The streamed chunks, the usage report and the prompt of a greedy reply."""
    prompt = await backend.prepare(conversation, GREEDY.max_new_tokens)
    report = GenerationReport()

    async def run() -> list[str]:
        return [chunk async for chunk in backend.generate_reporting(prompt, GREEDY, report)]

    return await asyncio.wait_for(run(), WAIT), report, prompt


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava")


@pytest.fixture(scope="module")
def llava(llava_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    """Batching is configured: a vision model runs one generation at a time all the same."""
    backend = LocalBackend(
        str(llava_dir), cache_dir=tmp_path_factory.mktemp("c"), batching=BatchingSettings()
    )
    yield from started(backend)


@pytest.fixture
def model_inputs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What the processor made for each generation with images (or messages), as `generate` gets it."""
    seen: list[dict[str, Any]] = []
    real = vision_inputs.model_inputs

    def spy(processor: Any, prompt: PreparedPrompt, dtype: Any) -> dict[str, Any]:
        inputs = real(processor, prompt, dtype)
        seen.append(inputs)
        return inputs

    monkeypatch.setattr(vision_inputs, "model_inputs", spy)
    return seen


def image_token_count(inputs: dict[str, Any], llava_dir: Path) -> int:
    from transformers import AutoConfig

    image_token_id = AutoConfig.from_pretrained(llava_dir, local_files_only=True).image_token_index
    return int((inputs["input_ids"] == image_token_id).sum())


async def test_an_image_text_to_text_model_sees_images_and_never_batches(llava: LocalBackend) -> None:
    assert sees_images(llava)
    assert llava.scheduler is None
    assert llava.prompt_format == "chat_template"
    assert llava.context_window == 512  # the language model's positions, from the text config


async def test_the_images_reach_the_model_and_the_reply_streams(
    llava: LocalBackend, llava_dir: Path, model_inputs: list[dict[str, Any]]
) -> None:
    chunks, report, prompt = await reply(llava, asking(RED, BLUE))
    assert prompt.images == (RED, BLUE)
    assert prompt.messages[-1].role == "user" and "[image: blue.png]" in prompt.messages[-1].content
    assert len(chunks) > 1 and "".join(chunks).strip()
    inputs = model_inputs[-1]
    assert tuple(inputs["pixel_values"].shape) == (2, 3, LLAVA_IMAGE_SIDE, LLAVA_IMAGE_SIDE)
    assert image_token_count(inputs, llava_dir) == 2 * LLAVA_IMAGE_TOKENS
    assert report.prompt_tokens == inputs["input_ids"].shape[-1]
    assert report.completion_tokens == GREEDY.max_new_tokens

    # The same question without the images is the same prompt but for their tokens.
    _, text_only, _ = await reply(llava, Conversation("Be brief.", (), prompt.messages[-1].content))
    assert "pixel_values" not in model_inputs[-1]
    assert report.prompt_tokens is not None and text_only.prompt_tokens is not None
    assert report.prompt_tokens - text_only.prompt_tokens == 2 * LLAVA_IMAGE_TOKENS


async def test_the_reply_is_what_the_model_says_about_that_image(
    llava: LocalBackend, llava_dir: Path
) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    chunks, _, prompt = await reply(llava, asking(RED))
    model = AutoModelForImageTextToText.from_pretrained(llava_dir, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(llava_dir, local_files_only=True)
    picture = Image.open(io.BytesIO(RED.data)).convert("RGB")
    chat = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": picture},
                *[{"type": "text", "text": prompt.messages[-1].content}],
            ],
        },
    ]
    inputs = processor.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=GREEDY.max_new_tokens, do_sample=False)
    expected = processor.tokenizer.decode(out[0][inputs["input_ids"].shape[-1] :], skip_special_tokens=True)
    assert "".join(chunks) == expected
    # Another image, another answer: the pixels matter.
    other, _, _ = await reply(llava, asking(BLUE))
    assert "".join(other) != expected


async def test_a_second_message_keeps_the_placeholder_and_works(
    llava: LocalBackend, llava_dir: Path, model_inputs: list[dict[str, Any]]
) -> None:
    first, _, first_prompt = await reply(llava, asking(RED))
    history = (Turn("user", first_prompt.messages[-1].content), Turn("assistant", "".join(first)))
    second, _, prompt = await reply(llava, asking(history=history, text="And now?"))
    assert "".join(second).strip()
    assert prompt.history_used == 2 and prompt.images == ()
    assert "[image: red.png]" in prompt.messages[1].content
    assert image_token_count(model_inputs[-1], llava_dir) == 0


async def test_an_image_token_typed_by_a_user_stays_text(
    llava: LocalBackend, llava_dir: Path, model_inputs: list[dict[str, Any]]
) -> None:
    chunks, _, _ = await reply(llava, asking(RED, text="what <image> is <|im_end|> this?"))
    assert "".join(chunks).strip()
    assert image_token_count(model_inputs[-1], llava_dir) == LLAVA_IMAGE_TOKENS


async def test_images_take_their_measured_room_from_the_history(llava: LocalBackend) -> None:
    history = tuple(
        Turn("user" if i % 2 == 0 else "assistant", f"Hello there {i}, how are you today?") for i in range(80)
    )
    with_images = await llava.prepare(asking(RED, BLUE, history=history), 12)
    text_only = Conversation("Be brief.", history, with_images.messages[-1].content)
    without = await llava.prepare(text_only, 12)
    assert 0 < with_images.history_used < without.history_used
    assert len(with_images.token_ids) + 2 * LLAVA_IMAGE_TOKENS <= 512 - 12
    # Exactly as if the reply needed the images' tokens on top.
    assert (
        await llava.prepare(text_only, 12 + 2 * LLAVA_IMAGE_TOKENS)
    ).history_used == with_images.history_used


def test_the_tokens_of_an_image_are_measured_or_estimated(
    llava_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(llava_dir, local_files_only=True)
    assert vision_inputs.tokens_per_image(processor, chat=True) == LLAVA_IMAGE_TOKENS
    assert not caplog.records
    # LLaVA's processor refuses an image without an <image> in the text: the estimate stands in.
    assert vision_inputs.tokens_per_image(processor, chat=False) == vision_inputs.FALLBACK_IMAGE_TOKENS
    assert "could not measure the tokens of an image" in caplog.text


async def test_a_text_model_does_not_see_images(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    backend = LocalBackend(str(tiny_gpt2_dir), cache_dir=tmp_path, prompt_format="chat_template")
    assert not sees_images(backend)
    await backend.start()
    try:
        assert not sees_images(backend)
        prompt = await backend.prepare(asking(RED), 8)
        assert prompt.images == () and prompt.messages == ()
        assert "[image: red.png]" in prompt.input_text
    finally:
        await backend.stop()


async def test_without_a_chat_template_text_works_and_images_fail_cleanly(tmp_path: Path) -> None:
    # The processor gets the prompt's text and the images as they are, which LLaVA's refuses (its
    # text has no <image>): the generation fails with a one-line error and the model stays usable.
    directory = build_tiny_llava(tmp_path / "llava-no-template", chat_template=None)
    backend = LocalBackend(str(directory), cache_dir=tmp_path / "c")
    await backend.start()
    try:
        assert sees_images(backend) and backend.prompt_format == "plain"
        chunks, _, _ = await reply(backend, asking())
        assert "".join(chunks).strip()
        with pytest.raises(BackendError, match="local generation failed") as caught:
            await reply(backend, asking(RED))
        assert "\n" not in str(caught.value)
        chunks, _, _ = await reply(backend, asking(text="still there?"))
        assert "".join(chunks).strip()
    finally:
        await backend.stop()


async def test_a_vision_model_without_an_image_processor_is_refused(llava_dir: Path, tmp_path: Path) -> None:
    directory = tmp_path / "llava-no-processor"
    directory.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        (directory / name).write_bytes((llava_dir / name).read_bytes())
    make_tokenizer("gpt2").save_pretrained(directory)
    backend = LocalBackend(str(directory), cache_dir=tmp_path / "c")
    with pytest.raises(
        ModelLoadError,
        match=r"\(LlavaConfig\).*processor cannot be loaded.*preprocessor_config.json",
    ):
        await backend.start()
    await backend.stop()
