"""The benchmark's workloads, each a coroutine over a `ChatEngine` that returns the timed replies."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from bench.harness import Timed, event, timed_reply
from bot.engine import ChatEngine
from storage.repository import ChatRepository

QUESTIONS = tuple(
    f"{opening} {topic}?"
    for topic in (
        "the moon",
        "volcanoes",
        "honey bees",
        "the Roman empire",
        "jazz music",
        "black holes",
        "the Amazon river",
        "chess openings",
    )
    for opening in (
        "What can you tell me about",
        "Why do people find it interesting to learn about",
        "Give me three facts about",
        "Explain to a child",
        "What is the history of",
        "Write a short poem about",
        "What are common myths about",
        "How would you summarise",
    )
)
"""64 different questions: each channel of a burst asks its own."""


async def burst(engine: ChatEngine, channels: int, tag: str) -> list[Timed]:
    """`channels` channels each send one message at the same moment."""
    return list(
        await asyncio.gather(
            *(
                timed_reply(engine, event(f"{tag}-{i}", QUESTIONS[i % len(QUESTIONS)]))
                for i in range(channels)
            )
        )
    )


async def one_after_another(engine: ChatEngine, count: int, tag: str) -> list[Timed]:
    """`count` messages in different channels, each sent when the previous reply has ended: one
    stream at a time, several times over, so that a single stream's speed is not one short sample."""
    return [
        await timed_reply(engine, event(f"{tag}-{i}", QUESTIONS[i % len(QUESTIONS)])) for i in range(count)
    ]


async def poisson(engine: ChatEngine, rate_per_s: float, count: int, tag: str, seed: int = 7) -> list[Timed]:
    """`count` messages from different channels, arriving at random (Poisson) at `rate_per_s`;
    the same arrival times for every mode (fixed seed)."""
    rng = random.Random(seed)
    tasks: list[asyncio.Task[Timed]] = []
    for i in range(count):
        await asyncio.sleep(rng.expovariate(rate_per_s))
        message = event(f"{tag}-{i}", QUESTIONS[(i * 7) % len(QUESTIONS)])
        tasks.append(asyncio.create_task(timed_reply(engine, message)))
    return list(await asyncio.gather(*tasks))


_FILLER = (
    "That is a good question, and the answer depends on how far back you want to look. "
    "Historians usually start with the earliest written records, then compare them with what "
    "archaeologists found, because the two sources often disagree in interesting ways. "
)


async def seed_long_history(repository: ChatRepository, channel_key: str, turns: int) -> None:
    """`turns` earlier exchanges (about 85 tokens each) stored directly, as if chatted before."""
    for i in range(turns):
        await repository.append_message(
            channel_key, "user", f"Turn {i}: tell me more about part {i} of the story, please."
        )
        await repository.append_message(channel_key, "assistant", f"Part {i}. {_FILLER}")


async def long_conversations(
    engine: ChatEngine, repository: ChatRepository, *, channels: int, seeded_turns: int, tag: str
) -> dict[str, Any]:
    """Channels with ~`seeded_turns` exchanges of history each send two more messages, one
    after the other: the first must encode the whole history (nothing cached yet), the second
    can reuse what the first processed. Returns both groups of timed replies."""
    cold: list[Timed] = []
    warm: list[Timed] = []
    for c in range(channels):
        channel = f"{tag}-{c}"
        await seed_long_history(repository, f"bench:{channel}", seeded_turns)
        cold.append(await timed_reply(engine, event(channel, "And what happened after that?")))
        warm.append(await timed_reply(engine, event(channel, "Thanks. Can you sum it all up?")))
    return {"cold": cold, "warm": warm}


async def echo_sequential(engine: ChatEngine, messages: int, channels: int) -> list[Timed]:
    """One message at a time (each awaited), round robin over `channels`: per-message overhead."""
    out: list[Timed] = []
    for i in range(messages):
        out.append(await timed_reply(engine, event(f"seq-{i % channels}", f"message {i}")))
    return out


async def echo_concurrent(engine: ChatEngine, messages_per_channel: int, channels: int) -> list[Timed]:
    """`channels` channels each send `messages_per_channel` messages as fast as replies come."""

    async def one_channel(c: int) -> list[Timed]:
        return [
            await timed_reply(engine, event(f"conc-{c}", f"message {i}")) for i in range(messages_per_channel)
        ]

    per_channel = await asyncio.gather(*(one_channel(c) for c in range(channels)))
    return [timed for replies in per_channel for timed in replies]
