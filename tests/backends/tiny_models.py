"""Tiny tokenizers and random-weight models built offline, for tests that need real transformers objects.

Nothing here downloads anything: tokenizers are trained on a few sentences with the `tokenizers`
library, models are built from small configs with a fixed seed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.backends.local import LocalBackend

CORPUS = [
    "Hello there, how are you today?",
    "I am fine, thank you. And you?",
    "The weather is lovely and the sun is shining.",
    "Do you like cats or dogs better?",
    "My friends are cool but they eat too many carbs.",
    "That's unfortunate. Are they trying to lose weight?",
    "What is the capital of France? Paris is the capital.",
    "Numbers: one two three four five six seven eight nine ten.",
    "Ünïcode wörds and emoji 🙂 keep the byte level honest.",
]

SIMPLE_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A ChatML template like SmolLM2's, accepting system messages."""

NO_SYSTEM_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A strict template like Gemma's or Llama 2's: no system role, roles must alternate starting with user."""


def make_tokenizer(kind: str = "gpt2", chat_template: str | None = None) -> Any:
    """A byte-level BPE tokenizer wrapped as a transformers fast tokenizer.

    kind "gpt2": one special token <|endoftext|> used as bos/eos/pad (like GPT-2/DialoGPT), plus the
    ChatML tokens so chat templates can use them. kind "blenderbot": <s> </s> <pad> <unk>, and
    </s> appended to every encoded text (like BlenderBot's tokenizer).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "gpt2":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    elif kind == "blenderbot":
        specials = ["<s>", "<pad>", "</s>", "<unk>"]
    else:
        raise ValueError(kind)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    if kind == "gpt2":
        wrapped = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<|endoftext|>",
            eos_token="<|endoftext|>",
            pad_token="<|endoftext|>",
            additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        )
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
        )
        wrapped = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
        )
    if chat_template is not None:
        wrapped.chat_template = chat_template
    return wrapped


def build_tiny_gpt2(directory: Path, chat_template: str | None = SIMPLE_CHAT_TEMPLATE) -> Path:
    """Save a 2-layer, 32-wide random GPT-2 (1024 positions) and its tokenizer into `directory`.

    The (tied) embedding rows of EOS and of the lone byte tokens that decode to U+FFFD are
    zeroed, so their logit is 0 while the best of the others is positive: greedy decoding never
    ends early and always produces readable text, which the streaming, stop and timeout tests
    rely on.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = make_tokenizer("gpt2", chat_template)
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=1024,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        weights = model.get_output_embeddings().weight
        weights[eos].zero_()
        for token_id in range(len(tokenizer)):
            if "\ufffd" in tokenizer.decode([token_id]):
                weights[token_id].zero_()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_tiny_blenderbot(directory: Path) -> Path:
    """Save a 1+1-layer, 32-wide random BlenderBot (64 positions) and its tokenizer into `directory`.

    Its generation config asks for beam search and an n-gram ban like the real BlenderBot's, so
    the backend has to override the beams to stream. EOS is made unreachable as in the GPT-2.
    """
    import torch
    from transformers import BlenderbotConfig, BlenderbotForConditionalGeneration

    tokenizer = make_tokenizer("blenderbot")
    config = BlenderbotConfig(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    model = BlenderbotForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight[tokenizer.eos_token_id].zero_()
        model.final_logits_bias.zero_()
    model.generation_config.num_beams = 4
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def started(backend: LocalBackend) -> Iterator[LocalBackend]:
    """Start `backend` for a module-scoped fixture (`yield from started(...)`), stop it afterwards.

    The backend keeps nothing bound to an event loop between calls, so a short-lived loop
    starts it and each test's own loop uses it.
    """
    asyncio.run(backend.start())
    try:
        yield backend
    finally:
        asyncio.run(backend.stop())


IMAGE_TOKEN = "<image>"
LLAVA_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for part in m['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""SIMPLE_CHAT_TEMPLATE for contents that are lists of parts, an image part as `<image>` (the
shape of LLaVA's and SmolVLM's processor templates)."""
LLAVA_IMAGE_SIDE = 16
LLAVA_PATCH = 4
LLAVA_IMAGE_TOKENS = (LLAVA_IMAGE_SIDE // LLAVA_PATCH) ** 2
"""What one image becomes in the prompt: one token per patch (the CLS token is dropped)."""


def build_tiny_llava(directory: Path, chat_template: str | None = LLAVA_CHAT_TEMPLATE) -> Path:
    """Save a random LLaVA (a 1-layer CLIP vision tower on 16-pixel images in 4-pixel patches, a
    2-layer 32-wide Llama, 512 positions) and its processor (a CLIP image processor, the GPT-2
    style tokenizer with an `<image>` token, `chat_template`) into `directory`.

    Every image is resized and cropped to 16×16 pixels: 16 image tokens. As in the GPT-2, EOS and
    the tokens that decode to U+FFFD are never the greedy choice.
    """
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = make_tokenizer("gpt2")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", IMAGE_TOKEN]})
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    eos = tokenizer.eos_token_id
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": LLAVA_IMAGE_SIDE},
            crop_size={"height": LLAVA_IMAGE_SIDE, "width": LLAVA_IMAGE_SIDE},
        ),
        tokenizer=tokenizer,
        patch_size=LLAVA_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, which the "default" strategy drops
        chat_template=chat_template,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            image_size=LLAVA_IMAGE_SIDE,
            patch_size=LLAVA_PATCH,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            projection_dim=16,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=512,
            bos_token_id=eos,
            eos_token_id=eos,
            pad_token_id=eos,
        ),
        image_token_index=image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        weights = model.get_output_embeddings().weight
        weights[eos].zero_()
        weights[image_token_id].zero_()
        for token_id in range(len(tokenizer)):
            if "\ufffd" in tokenizer.decode([token_id]):
                weights[token_id].zero_()
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
