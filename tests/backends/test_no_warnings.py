"""Generating, batched or not, prints no warning: a deprecated keyword (`past_key_values`, which
transformers 5 renamed `cache`) once printed a FutureWarning in the middle of a terminal reply."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.backends.batching_settings import BatchingSettings
from bot.backends.local import LocalBackend
from bot.ports import Conversation, SamplingSettings
from tests.backends.tiny_models import started


@pytest.fixture(scope="module", params=["batched", "serial"])
def backend(
    request: pytest.FixtureRequest, tiny_gpt2_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalBackend]:
    batching = BatchingSettings() if request.param == "batched" else None
    yield from started(
        LocalBackend(
            str(tiny_gpt2_dir),
            cache_dir=tmp_path_factory.mktemp("c"),
            prompt_format="dialogpt",
            batching=batching,
        )
    )


@pytest.mark.parametrize(
    "settings",
    [
        SamplingSettings(temperature=0, max_new_tokens=8),
        SamplingSettings(max_new_tokens=8, repetition_penalty=1.1),
    ],
    ids=["greedy", "sampled"],
)
async def test_generation_emits_no_warning(backend: LocalBackend, settings: SamplingSettings) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for turn in range(2):  # the second turn of the channel starts from its cached context
            conversation = Conversation("Be brief.", (), f"Hello there {turn}", context_key="c")
            prompt = await backend.prepare(conversation, settings.max_new_tokens)
            text = "".join([chunk async for chunk in backend.generate(prompt, settings)])
            assert text
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
