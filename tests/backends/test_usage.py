"""Usage and finish reasons from the local backend, on the tiny GPT-2 (serial and batched). The
bundled model's, through the OpenAI-compatible endpoint, are in test_bundled_model.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.backends.base import GenerationReport, UsageReporting
from bot.backends.batching_settings import BatchingSettings
from bot.backends.local import LocalBackend
from bot.ports import Conversation, SamplingSettings
from tests.backends.tiny_models import started

CHAT = Conversation("Be brief.", [], "Tell me a story about a cat.")


@pytest.fixture(scope="module", params=["serial", "batched"])
def gpt2(
    request: pytest.FixtureRequest, tiny_gpt2_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalBackend]:
    """The tiny GPT-2 with one `generate` call per request, and through the batch scheduler."""
    backend = LocalBackend(
        str(tiny_gpt2_dir),
        cache_dir=tmp_path_factory.mktemp("cache"),
        prompt_format="dialogpt",
        batching=BatchingSettings() if request.param == "batched" else None,
    )
    yield from started(backend)


async def generate(
    backend: LocalBackend, limit: int, stop: tuple[str, ...] = ()
) -> tuple[str, GenerationReport]:
    prompt = await backend.prepare(CHAT, max_new_tokens=limit)
    assert prompt.token_ids
    report = GenerationReport()
    settings = SamplingSettings(temperature=0, max_new_tokens=limit, stop=stop)
    text = "".join([chunk async for chunk in backend.generate_reporting(prompt, settings, report)])
    assert report.prompt_tokens == len(prompt.token_ids)
    return text, report


async def test_a_reply_cut_by_the_limit_reports_length(gpt2: LocalBackend) -> None:
    assert isinstance(gpt2, UsageReporting)
    text, report = await asyncio.wait_for(generate(gpt2, 12), 60)
    assert text
    assert report.finish_reason == "length"
    assert report.completion_tokens == 12
    usage = report.usage()
    assert usage is not None and usage.total_tokens == usage.prompt_tokens + 12


async def test_a_reply_ended_by_a_stop_sequence_reports_stop(gpt2: LocalBackend) -> None:
    whole, _ = await asyncio.wait_for(generate(gpt2, 12), 60)
    # A piece of the greedy reply as a stop sequence: the same reply now ends there, early.
    stop = whole[len(whole) // 2 :][:3]
    assert stop.strip()
    text, report = await asyncio.wait_for(generate(gpt2, 12, stop=(stop,)), 60)
    assert stop not in text and whole.startswith(text)
    assert report.finish_reason == "stop"
    assert report.completion_tokens is not None and 0 < report.completion_tokens < 12
