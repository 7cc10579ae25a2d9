"""`python -m bench.hf_batching`: Chinwag's scheduler against transformers' own ways of batching.

The same N short prompts, greedy, the same number of new tokens, the bundled SmolLM2 in float32,
in one process, alternating so that a slower moment of a shared machine hits both sides:
(a) one padded `model.generate` call for all prompts (the ceiling for prompts that arrive together),
(b) Chinwag's scheduler (`LocalBackend` with the default batching, every prompt submitted at once),
(c) transformers' continuous batching, `model.generate_batch` (paged attention), once at the end.
Not part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from bot.app import batching_settings
from bot.backends.base import PreparedPrompt
from bot.backends.local import LocalBackend
from bot.backends.model_loading import load_model, resolve_model_source
from bot.config import ModelConfig
from bot.ports import SamplingSettings

TOPICS = ("the sea", "mountains", "bread", "cats", "rain", "trains", "music", "chess", "tea", "bees")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.hf_batching", description=__doc__)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "chinwag" / "models")
    return parser.parse_args()


def padded_generate(model: Any, tokenizer: Any, prompts: list[list[int]], new_tokens: int) -> float:
    import torch

    tokenizer.padding_side = "left"
    batch = tokenizer.pad({"input_ids": prompts}, return_tensors="pt")
    with torch.inference_mode():
        started = time.perf_counter()
        model.generate(
            **batch,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        elapsed = time.perf_counter() - started
    return len(prompts) * new_tokens / elapsed


def generate_batch(model: Any, tokenizer: Any, prompts: list[list[int]], new_tokens: int) -> float:
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=-1,  # every request runs its full length, as in the other two
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.inference_mode():
        started = time.perf_counter()
        outputs = model.generate_batch(inputs=prompts, generation_config=config)
        elapsed = time.perf_counter() - started
    return sum(len(output.generated_tokens) for output in outputs.values()) / elapsed


async def scheduler(
    backend: LocalBackend, tokenizer: Any, prompts: list[list[int]], new_tokens: int
) -> float:
    settings = SamplingSettings(temperature=0.0, max_new_tokens=new_tokens, repetition_penalty=1.0)

    async def one(ids: list[int]) -> int:
        prompt = PreparedPrompt("", 0, token_ids=tuple(ids))
        parts = [chunk async for chunk in backend.generate(prompt, settings)]
        # Tokens counted again from the text: an end-of-turn token may end a reply early.
        return len(tokenizer("".join(parts), add_special_tokens=False).input_ids)

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(ids) for ids in prompts))
    return sum(counts) / (time.perf_counter() - started)


async def main() -> None:
    args = parse_args()
    model_config = ModelConfig(cache_dir=str(args.cache_dir))
    backend = LocalBackend(
        model_config.path,
        cache_dir=args.cache_dir,
        batching=batching_settings(model_config.batching),
        truncation_slack=model_config.batching.truncation_slack,
    )
    await backend.start()
    try:
        # A second copy of the same cached weights for the transformers side: the scheduler's copy
        # belongs to its thread.
        loaded = await asyncio.to_thread(load_model, resolve_model_source(model_config.path), args.cache_dir)
        model, tokenizer = loaded.model.eval(), loaded.tokenizer
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": f"Tell me something about {TOPICS[i % len(TOPICS)]} ({i})."}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
            )["input_ids"]
            for i in range(args.prompts)
        ]
        await scheduler(backend, tokenizer, prompts[:1], 4)  # warm-up
        for round_ in range(1, args.rounds + 1):
            padded = padded_generate(model, tokenizer, prompts, args.new_tokens)
            ours = await scheduler(backend, tokenizer, prompts, args.new_tokens)
            print(
                f"round {round_}: padded generate {padded:.1f} tok/s, Chinwag scheduler {ours:.1f} tok/s"
                f" ({ours / padded:.2f}x)",
                flush=True,
            )
        hf = generate_batch(model, tokenizer, prompts, args.new_tokens)
        print(f"transformers generate_batch {hf:.1f} tok/s", flush=True)
    finally:
        await backend.stop()


if __name__ == "__main__":
    asyncio.run(main())
