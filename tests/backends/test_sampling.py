"""Sampling in the batch scheduler is `generate`'s sampling: the same processors, in the same
order, with the same parameters (`RowSampler` against `GenerationMixin._get_logits_processor`);
top-k keeps every draw among the k likeliest tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from bot.backends.row_sampler import RowSampler
from bot.ports import SamplingSettings

SETTINGS = [
    SamplingSettings(temperature=0.7, top_p=0.9, top_k=50, repetition_penalty=1.1),
    SamplingSettings(temperature=1.3, top_p=0.5, top_k=3, repetition_penalty=1.0),
    SamplingSettings(temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.5),
    SamplingSettings(temperature=0.5, top_p=0.95, top_k=0, repetition_penalty=1.0),
    SamplingSettings(temperature=0, top_p=0.9, top_k=50, repetition_penalty=1.2),  # greedy
]


@pytest.fixture(scope="module")
def tiny_model(tiny_gpt2_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()


def generate_processors(model: Any, settings: SamplingSettings, ids: torch.Tensor) -> list[Any]:
    """The processors `generate` builds for these settings (as `ModelWorker.generate` passes them)."""
    kwargs: dict[str, Any] = {"repetition_penalty": settings.repetition_penalty, "num_beams": 1}
    if settings.temperature > 0:
        kwargs.update(
            do_sample=True, temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p
        )
    else:
        kwargs.update(do_sample=False)
    config, _ = model._prepare_generation_config(None, **kwargs)
    return list(
        model._get_logits_processor(
            generation_config=config,
            input_ids_seq_length=ids.shape[1],
            encoder_input_ids=ids,
            prefix_allowed_tokens_fn=None,
            logits_processor=None,
            device="cpu",
            model_kwargs={"attention_mask": torch.ones_like(ids)},
        )
    )


def parameters(processor: Any) -> dict[str, Any]:
    """A processor's settings, comparable across instances (tensors as lists)."""
    return {
        name: value.tolist() if isinstance(value, torch.Tensor) else value
        for name, value in vars(processor).items()
        if name != "prompt_ignore_length"  # generate's is the left padding: zeros for one unpadded row
    }


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: f"t{s.temperature}-p{s.top_p}-k{s.top_k}")
def test_the_processor_chain_is_the_one_generate_builds(tiny_model: Any, settings: SamplingSettings) -> None:
    torch.manual_seed(1)
    vocab = tiny_model.config.vocab_size
    ids = torch.randint(0, vocab, (1, 12))
    theirs = generate_processors(tiny_model, settings, ids)
    ours = RowSampler(settings, capacity=ids.shape[1]).processors
    assert [type(p) for p in ours] == [type(p) for p in theirs]
    assert [parameters(p) for p in ours] == [parameters(p) for p in theirs]
    # And the same scores come out of both chains for the same logits.
    logits = torch.randn(1, vocab) * 4
    expected, got = logits.clone(), logits.clone()
    for processor in theirs:
        expected = processor(ids, expected)
    for processor in ours:
        got = processor(ids, got)
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    assert torch.allclose(got[~torch.isinf(got)], expected[~torch.isinf(expected)])


def test_the_default_top_k_is_the_one_generate_uses() -> None:
    from transformers import GenerationConfig

    from bot.config import ModelConfig

    assert (
        ModelConfig().top_k
        == SamplingSettings().top_k
        == GenerationConfig._get_default_generation_params()["top_k"]
    )


def draws(settings: SamplingSettings, logits: torch.Tensor, count: int) -> set[int]:
    sampler = RowSampler(settings, capacity=4)
    return {sampler.next_token(logits, [1, 2, 3]) for _ in range(count)}


def test_a_sampled_token_is_always_among_the_top_k() -> None:
    torch.manual_seed(7)
    logits = torch.randn(500)  # a flat-ish distribution: the tail holds most of the mass
    top = set(torch.topk(logits, 5).indices.tolist())
    hot = SamplingSettings(temperature=2.0, top_p=1.0, top_k=5)
    seen = draws(hot, logits, 2000)
    assert seen <= top
    assert len(seen) > 1  # it did sample, not pick the argmax
    # Without the cut the same draws leave the top 5 (so the check above can fail).
    assert draws(SamplingSettings(temperature=2.0, top_p=1.0, top_k=0), logits, 2000) - top


def test_top_k_applies_before_top_p() -> None:
    # Probabilities 0.4, 0.3, 0.2, 0.1; top-k 3, top-p 0.75. Top-k first leaves 4/9, 3/9, 2/9, and
    # top-p then drops 2/9 (the tokens whose ascending cumulative mass stays within 1 - 0.75):
    # {0, 1}. Top-p first would drop only 0.1 and keep {0, 1, 2}.
    logits = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    settings = SamplingSettings(temperature=1.0, top_p=0.75, top_k=3, repetition_penalty=1.0)
    assert draws(settings, logits, 3000) == {0, 1}


def test_greedy_ignores_top_k_and_top_p() -> None:
    sampler = RowSampler(SamplingSettings(temperature=0, top_k=1, top_p=0.1), capacity=4)
    assert sampler.plain_greedy
    assert sampler.processors == []
