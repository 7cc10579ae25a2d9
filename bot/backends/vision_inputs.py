"""Model inputs with images for a local image-text-to-text model; runs on the worker thread.

With a chat template (`ProcessorChatFormat`; the prompt carries its fitted messages) the messages
are rendered once more by the processor's `apply_chat_template`, now with one image entry per
image at the start of the last user message, and tokenized there: the processor expands each
image entry into the model's image tokens and computes the pixel values, drops a BOS that the
template wrote already, and (`sanitize_control_tokens`) keeps control tokens that users typed,
an `<image>` among them, as plain text. Without one (a processor with no chat template, or a
`model.prompt_format` other than `auto` / `chat_template`), the prompt's text goes to the
processor with the images as they are: that suits processors that place image inputs themselves
(GIT, BLIP-2, Fuyu, PaliGemma).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Any

from PIL import Image

from bot.backends.base import PreparedPrompt, PromptMessage
from bot.ports import ImagePart

logger = logging.getLogger("bot.backends.local")

PROBE_SIDE = 1024
"""The side of the square image measured at start for `tokens_per_image` (the default
`chat.max_image_side`: the largest image the engine hands over, for models whose count grows
with the size)."""
FALLBACK_IMAGE_TOKENS = 1024
"""Per image, when measuring fails (the same estimate as `bot.backends.remote_prompt`'s)."""


def pil_images(parts: Sequence[ImagePart]) -> list[Image.Image]:
    """The images decoded, as RGB (the engine re-encoded them as JPEG or PNG)."""
    images: list[Image.Image] = []
    for part in parts:
        with Image.open(io.BytesIO(part.data)) as opened:
            images.append(opened.convert("RGB"))
    return images


def chat_with_images(
    messages: Sequence[PromptMessage], images: Sequence[Image.Image]
) -> list[dict[str, Any]]:
    """`messages` as a processor's chat template takes them: contents as parts, the images as
    image entries in front of the last user message's text (where LLaVA, SmolVLM and Qwen2-VL
    put them)."""
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    chat: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}]
        if index == last_user:
            parts[:0] = [{"type": "image", "image": image} for image in images]
        chat.append({"role": message.role, "content": parts})
    return chat


def model_inputs(processor: Any, prompt: PreparedPrompt, dtype: Any) -> dict[str, Any]:
    """`generate`'s inputs for `prompt` and its images (see the module docstring): `input_ids`,
    `attention_mask`, and whatever the model takes with images (`pixel_values`, ...) in `dtype`."""
    images = pil_images(prompt.images)
    if prompt.messages:
        batch = processor.apply_chat_template(
            chat_with_images(prompt.messages, images),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            sanitize_control_tokens=True,
        )
    else:
        batch = processor(text=[prompt.input_text], images=[images] if images else None, return_tensors="pt")
    return {key: _as(value, dtype) for key, value in batch.items()}


def _as(value: Any, dtype: Any) -> Any:
    """Floating tensors (pixel values) in the weights' number format; ids and masks unchanged."""
    if getattr(value, "is_floating_point", None) is not None and value.is_floating_point():
        return value.to(dtype)
    return value


def tokens_per_image(processor: Any, *, chat: bool) -> int:
    """How many tokens one image adds to a prompt (image tokens, and the template's text around
    them), measured with a `PROBE_SIDE` square; `FALLBACK_IMAGE_TOKENS` when that fails."""
    probe = Image.new("RGB", (PROBE_SIDE, PROBE_SIDE), (128, 128, 128))
    message = (PromptMessage("user", "x"),)
    try:
        if chat:
            with_image = _input_length(processor.apply_chat_template, chat_with_images(message, [probe]))
            without = _input_length(processor.apply_chat_template, chat_with_images(message, []))
        else:
            with_image = len(processor(text=["x"], images=[[probe]])["input_ids"][0])
            without = len(processor(text=["x"])["input_ids"][0])
    except Exception as exc:
        logger.warning(
            "could not measure the tokens of an image (%s); counting %d per image",
            type(exc).__name__,
            FALLBACK_IMAGE_TOKENS,
        )
        return FALLBACK_IMAGE_TOKENS
    return max(1, with_image - without)


def _input_length(apply_chat_template: Any, chat: list[dict[str, Any]]) -> int:
    batch = apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
    return len(batch["input_ids"][0])
