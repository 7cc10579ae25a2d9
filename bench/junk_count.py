"""`python -m bench.junk_count`: how many sampled replies are junk, the bot's way and `generate`'s.

A user saw a sampled reply turn into "1. ⓠ🍴🍃🏼🎊… ######## #EspressoLemonade": the scheduler
sampled without transformers' default top-k of 50, so top-p alone let the long tail of emoji and
byte tokens through. This script samples `--replies` replies to one fixed four-turn conversation
with the bundled SmolLM2 at temperature 0.7, top-p 0.9, top-k 50, repetition penalty 1.1:

- "chinwag": the bot's own path, `LocalBackend` with the batch scheduler (built by
  `bot.app.build_backend` from the default model config, as the bot builds it), all replies
  submitted at once, each in its own channel;
- "generate": plain `model.generate` with the same settings on the same prompt tokens;
- "chinwag-no-top-k": the bot's path with `top_k: 0`, i.e. what the scheduler did before.

A reply is junk (`is_junk`) when it holds "####" (a Markdown heading's leading hashes excepted),
or a run of three or more "odd" characters in a row, or when odd characters are more than 5% of its
characters. Odd: anything that is not a letter, digit, punctuation mark, whitespace or printable
ASCII (emoji, pictographs, circled letters, symbols from other blocks, U+FFFD).

Prints the counts and writes them, with every reply, to bench/results/junk_count.json. Sampling is
random: the seed is fixed, but the scheduler's batch composition changes the draws anyway, so
counts vary a little between runs. The seconds recorded per side are wall time, for orientation
only (nothing else is held still; bench/hf_batching.py measures speed). Not part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
import unicodedata
from pathlib import Path
from typing import Any

from bot.app import build_backend
from bot.backends.base import PreparedPrompt
from bot.backends.local import LocalBackend
from bot.config import ModelConfig
from bot.ports import Conversation, SamplingSettings, Turn

RESULTS = Path(__file__).resolve().parent / "results" / "junk_count.json"

HISTORY = (
    Turn("user", "Hi! I'm trying to cut down on sugar. Any ideas for a refreshing drink in summer?"),
    Turn(
        "assistant",
        "Sure! Try sparkling water with a squeeze of lemon or lime, iced herbal tea, or cold brew "
        "coffee with a splash of milk. They are refreshing and have little or no sugar.",
    ),
    Turn("user", "Cold brew sounds good. How do I make it at home?"),
    Turn(
        "assistant",
        "Mix one part coarsely ground coffee with about eight parts cold water, let it steep in the "
        "fridge for 12 to 18 hours, then strain it through a paper filter. It keeps for a week.",
    ),
)
MESSAGE = "Nice. Can you give me a numbered list of fun ways to flavour it without adding sugar?"

ODD_SHARE = 0.05
ODD_RUN = 3


def is_odd(char: str) -> bool:
    """Not a letter, digit, punctuation mark, whitespace or printable ASCII character."""
    if char.isspace() or " " <= char <= "~":
        return False
    return unicodedata.category(char)[0] not in "LNP"


def is_junk(text: str) -> bool:
    """The rule stated in the module docstring."""
    if "####" in re.sub(r"(?m)^#{1,6} ", "", text):
        return True
    odd = [is_odd(c) for c in text]
    run = longest = 0
    for flag in odd:
        run = run + 1 if flag else 0
        longest = max(longest, run)
    return longest >= ODD_RUN or (bool(text) and sum(odd) / len(text) > ODD_SHARE)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.junk_count", description=__doc__)
    parser.add_argument("--replies", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--cache-dir", type=Path, default=Path(ModelConfig().cache_dir).expanduser())
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args()


async def bot_replies(backend: LocalBackend, settings: SamplingSettings, count: int) -> list[str]:
    """`count` replies through the scheduler, submitted together, one channel each."""

    async def one(index: int) -> str:
        conversation = Conversation(
            ModelConfig().system_prompt, HISTORY, MESSAGE, context_key=f"junk-{index}"
        )
        prompt = await backend.prepare(conversation, settings.max_new_tokens)
        return "".join([chunk async for chunk in backend.generate(prompt, settings)])

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def generate_replies(
    model: Any, tokenizer: Any, ids: list[int], settings: SamplingSettings, count: int
) -> list[str]:
    """`count` replies from one `model.generate` call (the same prompt repeated)."""
    import torch

    from bot.backends.local_worker import end_of_turn_ids

    eos = [tokenizer.eos_token_id, *end_of_turn_ids(tokenizer, tokenizer.chat_template)]
    with torch.inference_mode():
        output = model.generate(
            input_ids=torch.tensor([ids] * count, dtype=torch.long),
            attention_mask=torch.ones((count, len(ids)), dtype=torch.long),
            max_new_tokens=settings.max_new_tokens,
            do_sample=True,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            repetition_penalty=settings.repetition_penalty,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0],
        )
    return [
        str(tokenizer.decode(row[len(ids) :], skip_special_tokens=True, clean_up_tokenization_spaces=False))
        for row in output
    ]


def arm(name: str, replies: list[str], seconds: float) -> dict[str, Any]:
    """One side's figures. `odd_chars` counts odd characters over all replies: a finer signal
    than the junk count when no reply crosses the junk line."""
    junk = [i for i, reply in enumerate(replies) if is_junk(reply)]
    odd = "".join(c for reply in replies for c in reply if is_odd(c))
    chars = sum(len(reply) for reply in replies)
    print(
        f"{name:>18}: {len(junk):2d} junk of {len(replies)} replies, {len(odd)} odd characters"
        f" of {chars} ({seconds:.0f} s)"
    )
    return {
        "junk": len(junk),
        "odd_chars": len(odd),
        "odd": odd,
        "chars": chars,
        "replies": len(replies),
        "junk_indices": junk,
        "seconds": round(seconds, 1),
        "texts": replies,
    }


async def main() -> None:
    args = parse_args()
    import torch
    import transformers

    from bot.backends.model_loading import load_model, resolve_model_source

    config = ModelConfig(
        cache_dir=str(args.cache_dir),
        temperature=0.7,
        top_p=0.9,
        top_k=50,
        repetition_penalty=1.1,
        generation_timeout_s=3600,  # a shared machine may be slow; this counts junk, not time
    )
    settings = SamplingSettings(
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        repetition_penalty=config.repetition_penalty,
        max_new_tokens=args.max_new_tokens,
    )
    backend = build_backend(config)
    assert isinstance(backend, LocalBackend)
    await backend.start()
    arms: dict[str, Any] = {}
    try:
        assert backend.scheduler is not None, "the default config batches"
        torch.manual_seed(args.seed)
        started = time.perf_counter()
        arms["chinwag"] = arm(
            "chinwag", await bot_replies(backend, settings, args.replies), time.perf_counter() - started
        )

        loaded = await asyncio.to_thread(load_model, resolve_model_source(config.path), args.cache_dir)
        prompt: PreparedPrompt = await backend.prepare(
            Conversation(config.system_prompt, HISTORY, MESSAGE), settings.max_new_tokens
        )
        ids = list(prompt.token_ids) or loaded.tokenizer.encode(prompt.input_text)
        torch.manual_seed(args.seed)
        started = time.perf_counter()
        replies = await asyncio.to_thread(
            generate_replies, loaded.model.eval(), loaded.tokenizer, ids, settings, args.replies
        )
        arms["generate"] = arm("generate", replies, time.perf_counter() - started)

        untopped = SamplingSettings(**{**_fields(settings), "top_k": 0})
        torch.manual_seed(args.seed)
        started = time.perf_counter()
        arms["chinwag-no-top-k"] = arm(
            "chinwag-no-top-k",
            await bot_replies(backend, untopped, args.replies),
            time.perf_counter() - started,
        )
    finally:
        await backend.stop()
    result = {
        "what": "junk replies among sampled replies to one fixed 4-turn conversation (bench/junk_count.py)",
        "rule": f"'####' (not a heading's), or a run of >= {ODD_RUN} odd characters, or odd characters"
        f" > {ODD_SHARE:.0%} of the reply; odd = not a letter, digit, punctuation, whitespace or"
        " printable ASCII",
        "model": config.path,
        "settings": {**_fields(settings), "stop": list(settings.stop)},
        "seed": args.seed,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "arms": arms,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


def _fields(settings: SamplingSettings) -> dict[str, Any]:
    return {
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "top_k": settings.top_k,
        "repetition_penalty": settings.repetition_penalty,
        "max_new_tokens": settings.max_new_tokens,
    }


if __name__ == "__main__":
    asyncio.run(main())
