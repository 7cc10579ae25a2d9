"""The bundled SmolLM2 GGUF model through LocalBackend, and the converted-model cache.

The `model` tests use the persistent cache (`CHINWAG_MODEL_CACHE`, else ~/.cache/chinwag/models),
so only the first run pays the ~25 s GGUF conversion. The cache mechanics themselves are tested
on a stand-in .gguf file whose "conversion" yields the tiny GPT-2, which takes no time.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI

import bot.backends.model_loading as loading
from adapters.web import create
from bot.backends import gguf_cache
from bot.backends.base import PreparedPrompt
from bot.backends.local import LocalBackend
from bot.backends.local_worker import end_of_turn_ids
from bot.config import ModelConfig, WebConfig
from bot.ports import Conversation, SamplingSettings
from storage.repository import ChatRepository
from tests.backends.tiny_models import SIMPLE_CHAT_TEMPLATE, make_tokenizer, started
from tests.conftest import EngineFactory

LOG = "bot.backends.local"


@pytest.fixture(scope="module")
def smollm2(model_cache_dir: Path) -> Iterator[LocalBackend]:
    yield from started(LocalBackend("bundled:smollm2", cache_dir=model_cache_dir, context_window=2048))


QUESTION = Conversation("You are a helpful assistant.", [], "What is the capital of France?")


async def reply(backend: LocalBackend, prompt: PreparedPrompt) -> str:
    settings = SamplingSettings(temperature=0, max_new_tokens=8)
    return "".join([chunk async for chunk in backend.generate(prompt, settings)])


@pytest.mark.model
async def test_bundled_smollm2_answers_greedily(smollm2: LocalBackend) -> None:
    assert smollm2.prompt_format == "chat_template"
    assert smollm2.load_origin in {"gguf-cache", "gguf-converted"}
    prompt = await smollm2.prepare(QUESTION, max_new_tokens=8)
    assert prompt.input_text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert prompt.input_text.endswith("<|im_start|>assistant\n")

    first = await asyncio.wait_for(reply(smollm2, prompt), 60)
    assert first.strip()
    assert "<|im_end|>" not in first
    assert await asyncio.wait_for(reply(smollm2, prompt), 60) == first


@pytest.mark.model
async def test_second_start_loads_from_the_cache(
    smollm2: LocalBackend,
    model_cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def no_conversion(gguf: Path) -> Any:
        raise AssertionError(f"converted {gguf} again instead of using the cache")

    monkeypatch.setattr(loading, "_convert_gguf", no_conversion)
    caplog.set_level(logging.INFO, logger=LOG)
    again = LocalBackend("bundled:smollm2", cache_dir=model_cache_dir)
    await again.start()
    try:
        assert again.load_origin == "gguf-cache"
        assert any("gguf-cache" in r.getMessage() for r in caplog.records if r.name == LOG)
        # The cached model is the same model: same greedy reply as the fixture's (which, on the
        # very first run, is the freshly converted one).
        prompt = await again.prepare(QUESTION, max_new_tokens=8)
        assert await asyncio.wait_for(reply(again, prompt), 60) == await asyncio.wait_for(
            reply(smollm2, prompt), 60
        )
    finally:
        await again.stop()


# --- cache mechanics on a stand-in GGUF file -----------------------------------------------------


@pytest.fixture
def fake_gguf(
    tmp_path: Path, tiny_gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, list[Path]]:
    """A .gguf file whose conversion loads the tiny GPT-2; returns it and the conversions made."""
    gguf = tmp_path / "models" / "Tiny-Chat.Q4_0.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF stand-in")
    conversions: list[Path] = []
    real_load_directory = loading._load_directory

    def convert(path: Path) -> Any:
        conversions.append(path)
        return real_load_directory(tiny_gpt2_dir)

    monkeypatch.setattr(loading, "_convert_gguf", convert)
    return gguf, conversions


async def test_gguf_is_converted_once_then_loaded_from_the_cache(
    fake_gguf: tuple[Path, list[Path]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gguf, conversions = fake_gguf
    cache = tmp_path / "cache"
    caplog.set_level(logging.INFO, logger=LOG)
    first = LocalBackend(str(gguf), cache_dir=cache)
    await first.start()
    await first.stop()
    assert first.load_origin == "gguf-converted"
    second = LocalBackend(str(gguf), cache_dir=cache)
    await second.start()
    try:
        assert second.load_origin == "gguf-cache"
        assert conversions == [gguf]
        prompt = await second.prepare(Conversation("", [], "hi"), 4)
        chunks = [c async for c in second.generate(prompt, SamplingSettings(temperature=0, max_new_tokens=4))]
        assert "".join(chunks)
    finally:
        await second.stop()
    entries = [p.name for p in cache.iterdir()]
    assert len(entries) == 1  # one finished cache dir, no temp leftovers
    assert entries[0].startswith("Tiny-Chat.Q4_0-")
    messages = [r.getMessage() for r in caplog.records if r.name == LOG]
    assert any("gguf-converted" in m for m in messages)
    assert any("gguf-cache" in m for m in messages)


async def test_changed_gguf_file_gets_a_new_cache_entry_and_the_old_one_goes(
    fake_gguf: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    gguf, conversions = fake_gguf
    cache = tmp_path / "cache"
    await asyncio.to_thread(loading.load_model, loading.resolve_model_source(str(gguf)), cache)
    old = loading.gguf_cache_dir(gguf, cache)
    gguf.write_bytes(b"GGUF stand-in, a newer version")
    loaded = await asyncio.to_thread(loading.load_model, loading.resolve_model_source(str(gguf)), cache)
    assert loaded.origin == "gguf-converted"
    assert len(conversions) == 2
    new = loading.gguf_cache_dir(gguf, cache)
    assert new != old
    assert list(cache.iterdir()) == [new]


def test_the_same_content_with_another_mtime_or_path_is_not_converted_again(
    fake_gguf: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    # A fresh clone: the same file, written later, somewhere else.
    gguf, conversions = fake_gguf
    cache = tmp_path / "cache"
    assert loading.load_model(loading.resolve_model_source(str(gguf)), cache).origin == "gguf-converted"
    clone = tmp_path / "clone" / gguf.name
    clone.parent.mkdir()
    clone.write_bytes(gguf.read_bytes())
    os.utime(clone, ns=(gguf.stat().st_atime_ns, gguf.stat().st_mtime_ns + 10**9))
    os.utime(gguf, ns=(gguf.stat().st_atime_ns, gguf.stat().st_mtime_ns + 5 * 10**9))
    for path in (clone, gguf):
        assert loading.load_model(loading.resolve_model_source(str(path)), cache).origin == "gguf-cache"
    assert conversions == [gguf]
    assert list(cache.iterdir()) == [loading.gguf_cache_dir(gguf, cache)]


def test_a_known_file_is_not_hashed_again(
    fake_gguf: tuple[Path, list[Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf, _ = fake_gguf
    cache = tmp_path / "cache"
    source = loading.resolve_model_source(str(gguf))
    loading.load_model(source, cache)
    hashed: list[Path] = []
    real_hash = gguf_cache._hash_file

    def counting(path: Path) -> str:
        hashed.append(path)
        return real_hash(path)

    monkeypatch.setattr(gguf_cache, "_hash_file", counting)
    assert loading.load_model(source, cache).origin == "gguf-cache"
    assert hashed == []  # the entry's marker knows this path, size and mtime
    os.utime(gguf, ns=(gguf.stat().st_atime_ns, gguf.stat().st_mtime_ns + 10**9))  # touched
    assert loading.load_model(source, cache).origin == "gguf-cache"
    assert hashed == [gguf]  # hashed once, found the same content, and remembered
    assert loading.load_model(source, cache).origin == "gguf-cache"
    assert hashed == [gguf]


def test_outdated_entries_of_the_model_are_removed_and_other_models_kept(
    fake_gguf: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    gguf, _ = fake_gguf
    cache = tmp_path / "cache"
    # What earlier releases left: entries keyed by mtime, one per clone; and another model's entry.
    for key in ("0123456789abcdef", "fedcba9876543210"):
        (cache / f"{gguf.stem}-{key}").mkdir(parents=True)
        (cache / f"{gguf.stem}-{key}" / "chinwag-gguf-cache.json").write_text("{}")
    other = cache / "Other-Model.Q8_0-0123456789abcdef"
    other.mkdir()
    loading.load_model(loading.resolve_model_source(str(gguf)), cache)
    assert sorted(cache.iterdir()) == sorted([loading.gguf_cache_dir(gguf, cache), other])


def test_losing_a_conversion_race_keeps_one_complete_cache(
    fake_gguf: tuple[Path, list[Path]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Two processes converting at once: the other one finishes while this one is converting.
    # (Simulated in one thread: transformers' model loading is not safe across threads.)
    gguf, conversions = fake_gguf
    cache = tmp_path / "cache"
    source = loading.resolve_model_source(str(gguf))
    convert = loading._convert_gguf

    def racing(path: Path) -> Any:
        result = convert(path)
        if len(conversions) == 1:
            assert loading.load_model(source, cache).origin == "gguf-converted"  # the other process
        return result

    monkeypatch.setattr(loading, "_convert_gguf", racing)
    caplog.set_level(logging.INFO, logger=LOG)
    assert loading.load_model(source, cache).origin == "gguf-converted"
    assert len(conversions) == 2
    assert any("another process" in r.getMessage() for r in caplog.records)
    [entry] = list(cache.iterdir())  # the winner's cache, no temp dirs left behind
    assert entry == loading.gguf_cache_dir(gguf, cache)
    assert loading.load_model(source, cache).origin == "gguf-cache"


def test_incomplete_cache_dir_is_replaced(fake_gguf: tuple[Path, list[Path]], tmp_path: Path) -> None:
    gguf, conversions = fake_gguf
    cache = tmp_path / "cache"
    target = loading.gguf_cache_dir(gguf, cache)
    target.mkdir(parents=True)  # e.g. copied by hand or left half-written: no completion marker
    (target / "config.json").write_text("{}")
    source = loading.resolve_model_source(str(gguf))
    assert loading.load_model(source, cache).origin == "gguf-converted"
    assert loading.load_model(source, cache).origin == "gguf-cache"
    assert len(conversions) == 1
    assert [p.name for p in cache.iterdir()] == [target.name]


def test_unreadable_cache_is_rebuilt(fake_gguf: tuple[Path, list[Path]], tmp_path: Path) -> None:
    gguf, conversions = fake_gguf
    cache = tmp_path / "cache"
    source = loading.resolve_model_source(str(gguf))
    loading.load_model(source, cache)
    target = loading.gguf_cache_dir(gguf, cache)
    (target / "model.safetensors").write_bytes(b"garbage")
    assert loading.load_model(source, cache).origin == "gguf-converted"
    assert len(conversions) == 2
    assert loading.load_model(source, cache).origin == "gguf-cache"


def test_end_of_turn_tokens_come_from_the_template() -> None:
    tok = make_tokenizer("gpt2", SIMPLE_CHAT_TEMPLATE)
    assert end_of_turn_ids(tok, tok.chat_template) == [tok.convert_tokens_to_ids("<|im_end|>")]
    assert end_of_turn_ids(tok, None) == []


def test_unwritable_cache_dir_still_serves_the_model(
    fake_gguf: tuple[Path, list[Path]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gguf, conversions = fake_gguf
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache dir should be")
    source = loading.resolve_model_source(str(gguf))
    with caplog.at_level(logging.WARNING, logger=LOG):
        loaded = loading.load_model(source, blocker / "cache")
    assert loaded.origin == "gguf-converted"
    assert conversions == [gguf]
    assert any("could not write the model cache" in r.getMessage() for r in caplog.records)


@pytest.mark.model
async def test_the_bundled_model_reports_length_stop_and_usage(
    smollm2: LocalBackend, make_engine: EngineFactory, repository: ChatRepository
) -> None:
    engine = await make_engine(smollm2, model={"temperature": 0})
    # As the composition root builds it, from the default model settings (bundled:smollm2).
    web = create(WebConfig(port=0), ModelConfig(), engine, repository)
    assert web is not None
    await web.start()
    try:
        client = AsyncOpenAI(base_url=f"{web.url}/v1", api_key="unused", max_retries=0, timeout=120.0)
        question = [{"role": "user", "content": "What is the capital of France?"}]
        cut = await client.chat.completions.create(model="x", messages=question, max_tokens=5, temperature=0)  # type: ignore[arg-type]
        short = await client.chat.completions.create(
            model="x",
            messages=[{"role": "user", "content": "Reply with one word: hello."}],
            max_tokens=200,  # it says ~58 tokens: room to spare, so the model ends it
            temperature=0,
        )
        stream = await client.chat.completions.create(
            model="x",
            messages=question,  # type: ignore[arg-type]
            max_tokens=5,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        await client.close()
    finally:
        await web.stop()
    assert cut.model == "bundled:smollm2"
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None and cut.usage.completion_tokens == 5
    assert cut.usage.prompt_tokens > 5
    assert cut.usage.total_tokens == cut.usage.prompt_tokens + cut.usage.completion_tokens

    assert short.choices[0].finish_reason == "stop"
    assert short.usage is not None and 0 < short.usage.completion_tokens < 200
    assert short.usage.total_tokens == short.usage.prompt_tokens + short.usage.completion_tokens

    *_, finish, last = chunks
    assert finish.choices[0].finish_reason == "length"
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (cut.usage.prompt_tokens, 5)
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == cut.choices[0].message.content
    )
