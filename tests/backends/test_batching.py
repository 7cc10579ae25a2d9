"""The batch scheduler: correctness, not speed (speed is measured in bench/).

Batched greedy output must be the same, token for token, as unbatched greedy output; a request
that joins a running batch gets the text it gets alone; a cached channel context gives the text a
fresh encode gives; cancelling frees the slot; a full queue answers "busy". Most tests use the
tiny random GPT-2 (milliseconds per token); the equality test also runs on the bundled SmolLM2.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import torch

from bot.backends.base import PreparedPrompt, QueueReporting
from bot.backends.batching_settings import BatchingSettings
from bot.backends.dtype_choice import bfloat16_is_faster, cpu_has_native_bf16
from bot.backends.local import LocalBackend, _Anchors
from bot.errors import BackendBusy, GenerationCancelled
from bot.events import ChatEvent
from bot.failures import BUSY_REPLY, CANCELLED_NOTICE
from bot.ports import Conversation, SamplingSettings, Turn, member_context_key
from storage.repository import ChatRepository
from tests.backends.tiny_models import started
from tests.conftest import EngineFactory
from tests.fakes.waiting import wait_until

WAIT = 60.0
QUESTIONS = (
    "Hello there, how are you today?",
    "Do you like cats or dogs better?",
    "What is the capital of France?",
    "Numbers: one two three four five six seven eight nine ten. Go on!",
    "The weather is lovely",
    "My friends are cool but they eat too many carbs. That's unfortunate, isn't it?",
)


def greedy(max_new_tokens: int) -> SamplingSettings:
    return SamplingSettings(temperature=0, max_new_tokens=max_new_tokens, repetition_penalty=1.1)


def conversation(message: str, key: str | None = None, history: tuple[Turn, ...] = ()) -> Conversation:
    return Conversation("You are terse.", history, message, context_key=key)


async def text_of(stream: AsyncIterator[str]) -> str:
    async def run() -> str:
        return "".join([chunk async for chunk in stream])

    return await asyncio.wait_for(run(), WAIT)


async def answer(backend: LocalBackend, conv: Conversation, settings: SamplingSettings) -> str:
    prompt = await backend.prepare(conv, settings.max_new_tokens)
    return await text_of(backend.generate(prompt, settings))


def tiny(directory: Path, cache: Path, **batching: int) -> LocalBackend:
    return LocalBackend(
        str(directory), cache_dir=cache, prompt_format="dialogpt", batching=BatchingSettings(**batching)
    )


@pytest.fixture(scope="module")
def serial(tiny_gpt2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    """The tutorial way: one `model.generate` per request."""
    yield from started(
        LocalBackend(str(tiny_gpt2_dir), cache_dir=tmp_path_factory.mktemp("c"), prompt_format="dialogpt")
    )


@pytest.fixture
async def batched(tiny_gpt2_dir: Path, tmp_path: Path) -> AsyncIterator[LocalBackend]:
    backend = tiny(tiny_gpt2_dir, tmp_path)
    await backend.start()
    yield backend
    await backend.stop()


async def test_batched_greedy_equals_unbatched_greedy_token_for_token(
    serial: LocalBackend, batched: LocalBackend
) -> None:
    """Six prompts of different lengths arrive together while another reply is generating: they
    are encoded together (left-padded) and join the batch; each gets the text `generate` gives
    it alone. A sampled row with its own settings runs in the same batch."""
    settings = greedy(40)
    expected = [await answer(serial, conversation(q), settings) for q in QUESTIONS]
    assert all(expected)
    scheduler = batched.scheduler
    assert scheduler is not None
    prompts = [await batched.prepare(conversation(q, key=f"c{i}"), 40) for i, q in enumerate(QUESTIONS)]
    sampled = await batched.prepare(conversation("Tell me something random", key="sampled"), 40)
    running = batched.generate(await batched.prepare(conversation("Go on"), 900), greedy(900))
    try:
        assert await asyncio.wait_for(anext(running), WAIT)  # the scheduler is busy stepping
        together = await asyncio.gather(
            *(text_of(batched.generate(prompt, settings)) for prompt in prompts),
            text_of(
                batched.generate(sampled, SamplingSettings(temperature=1.0, top_p=0.9, max_new_tokens=40))
            ),
        )
    finally:
        await running.aclose()
    assert list(together[: len(QUESTIONS)]) == expected
    assert scheduler.grouped_prefills >= 1  # new prompts were encoded several at once
    assert scheduler.peak_batch >= 4  # and generated together
    # The model thread retires a finished row after handing over its last text.
    await wait_until(lambda: scheduler.depth == 0, WAIT, what="the scheduler has no rows left")


async def test_a_request_joining_a_running_batch_gets_the_same_text_as_alone(batched: LocalBackend) -> None:
    scheduler = batched.scheduler
    assert scheduler is not None
    joiner = conversation(QUESTIONS[1])
    alone = await answer(batched, joiner, greedy(30))
    long_prompt = await batched.prepare(conversation(QUESTIONS[0]), 900)
    long_stream = batched.generate(long_prompt, greedy(900))
    try:
        assert await asyncio.wait_for(anext(long_stream), WAIT)  # the long one is generating
        steps_before = scheduler.steps
        joined = await answer(batched, joiner, greedy(30))
        assert scheduler.steps > steps_before
        assert scheduler.peak_batch == 2  # it joined the running generation, not waited for it
        assert joined == alone
        assert await asyncio.wait_for(anext(long_stream), WAIT)  # the long one still runs
    finally:
        await long_stream.aclose()


async def test_full_queue_answers_busy_and_cancelling_frees_the_slot(
    tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    backend = tiny(tiny_gpt2_dir, tmp_path, max_batch=1, max_waiting=1)
    await backend.start()
    try:
        scheduler = backend.scheduler
        assert scheduler is not None
        prompt = await backend.prepare(conversation(QUESTIONS[0]), 900)
        running = backend.generate(prompt, greedy(900))
        assert await asyncio.wait_for(anext(running), WAIT)
        waiting = asyncio.create_task(text_of(backend.generate(prompt, greedy(5))))
        await wait_until(lambda: scheduler.depth == 2, WAIT, what="the second request is queued")
        assert isinstance(backend, QueueReporting) and backend.queue_depth() == 2  # the metrics gauge
        with pytest.raises(BackendBusy):
            await text_of(backend.generate(prompt, greedy(5)))
        await running.aclose()  # frees the slot: the waiting one runs now
        assert await asyncio.wait_for(waiting, WAIT)
        assert await text_of(backend.generate(prompt, greedy(5)))
        assert scheduler.depth == backend.queue_depth() == 0
    finally:
        await backend.stop()
    assert backend.queue_depth() == 0  # stopped: no queue, not an error


async def test_forget_cancels_the_channel_and_drops_its_context(batched: LocalBackend) -> None:
    scheduler = batched.scheduler
    assert scheduler is not None
    await answer(batched, conversation(QUESTIONS[2], key="chan"), greedy(10))
    assert "chan" in scheduler.contexts
    prompt = await batched.prepare(conversation(QUESTIONS[3], key="chan"), 900)
    stream = batched.generate(prompt, greedy(900))
    other = asyncio.create_task(answer(batched, conversation(QUESTIONS[4], key="other"), greedy(20)))
    assert await asyncio.wait_for(anext(stream), WAIT)
    batched.forget("chan")
    with pytest.raises(GenerationCancelled):
        await text_of(stream)
    assert await asyncio.wait_for(other, WAIT)  # another channel is not disturbed
    # The model thread drops the context when it handles the cancellation, after the stream ended.
    await wait_until(lambda: "chan" not in scheduler.contexts, WAIT, what="the context is dropped")
    assert "other" in scheduler.contexts


ROOM = "web:room"
ALICE = member_context_key(ROOM, "alice")
BOB = member_context_key(ROOM, "bob")
NEIGHBOUR = "web:room2"  # another channel whose key starts like ROOM's
NEIGHBOUR_MEMBER = member_context_key(NEIGHBOUR, "carol")


async def test_each_member_conversation_of_a_channel_reuses_its_own_context(batched: LocalBackend) -> None:
    """Member mode: one context key per member of a channel. Played in turns (Alice, Bob, a
    member of another channel, again), each second turn starts with the whole prompt of the
    same member's first turn, taken from the cache; then forgetting the channel drops both of
    its members' contexts, and the other channel's stays."""
    scheduler = batched.scheduler
    assert scheduler is not None
    speakers = {ALICE: "Alice", BOB: "Bob", NEIGHBOUR_MEMBER: "Carol"}
    histories: dict[str, tuple[Turn, ...]] = dict.fromkeys(speakers, ())
    first_prompts: dict[str, PreparedPrompt] = {}
    for turn in range(2):
        for index, (key, speaker) in enumerate(speakers.items()):
            question = QUESTIONS[turn * 3 + index]
            conv = Conversation("You are terse.", histories[key], question, context_key=key, speaker=speaker)
            prompt = await batched.prepare(conv, 16)
            assert prompt.input_text.startswith(f"{speakers[key]}: ")
            hits, reused = scheduler.contexts.hits, scheduler.contexts.reused_tokens
            got = await text_of(batched.generate(prompt, greedy(16)))
            if turn == 0:
                first_prompts[key] = prompt
                assert scheduler.contexts.hits == hits
            else:
                assert scheduler.contexts.hits == hits + 1
                # Its own first prompt (another member's starts with another name) came from the cache.
                assert prompt.token_ids[: len(first_prompts[key].token_ids)] == first_prompts[key].token_ids
                assert scheduler.contexts.reused_tokens - reused >= len(first_prompts[key].token_ids)
            exchange = (Turn("user", question, speaker=speaker), Turn("assistant", got))
            histories[key] = (*histories[key], *exchange)
    assert all(key in scheduler.contexts for key in speakers)

    batched.forget(ROOM)
    await wait_until(
        lambda: ALICE not in scheduler.contexts and BOB not in scheduler.contexts,
        WAIT,
        what="both members' contexts are dropped",
    )
    assert NEIGHBOUR_MEMBER in scheduler.contexts


async def test_forgetting_a_channel_cancels_every_member_generation(batched: LocalBackend) -> None:
    streams = [
        batched.generate(await batched.prepare(conversation(QUESTIONS[i], key=key), 900), greedy(900))
        for i, key in enumerate((ALICE, BOB))
    ]
    neighbour = asyncio.create_task(answer(batched, conversation(QUESTIONS[4], key=NEIGHBOUR), greedy(20)))
    for stream in streams:
        assert await asyncio.wait_for(anext(stream), WAIT)  # both members' replies are generating
    batched.forget(ROOM)
    for stream in streams:
        with pytest.raises(GenerationCancelled):
            await text_of(stream)
    assert await asyncio.wait_for(neighbour, WAIT)  # a channel whose key starts alike goes on


async def test_dropping_a_channels_contexts_cancels_nothing(batched: LocalBackend) -> None:
    """`/forget`'s drop: the channel's cached member contexts go, the replies being written go on."""
    scheduler = batched.scheduler
    assert scheduler is not None
    await answer(batched, conversation(QUESTIONS[0], key=ALICE), greedy(8))
    assert ALICE in scheduler.contexts
    stream = batched.generate(await batched.prepare(conversation(QUESTIONS[1], key=BOB), 40), greedy(40))
    assert await asyncio.wait_for(anext(stream), WAIT)  # Bob's reply is generating
    batched.drop_contexts(ROOM)
    await wait_until(lambda: ALICE not in scheduler.contexts, WAIT, what="Alice's context is dropped")
    await text_of(stream)  # ends normally: a cancelled one raises GenerationCancelled


def test_anchors_forget_a_channel_with_its_members_only() -> None:
    anchors = _Anchors(limit=4)
    turns = (Turn("user", "hi"),)
    for key in (ROOM, ALICE, BOB, NEIGHBOUR_MEMBER):
        anchors.put(key, turns)
    anchors.forget_channel(ROOM)
    assert len(anchors) == 1 and NEIGHBOUR_MEMBER in anchors
    # Eviction keeps the channel index in step: an evicted member is not forgotten twice, and
    # a member put back after eviction is forgotten with its channel.
    for key in (ALICE, "web:a", "web:b", "web:c", "web:d"):
        anchors.put(key, turns)
    assert ALICE not in anchors
    anchors.put(ALICE, turns)
    anchors.forget_channel(ROOM)
    assert ALICE not in anchors and len(anchors) == 3
    anchors.clear()
    assert len(anchors) == 0


async def test_a_cached_context_gives_the_text_of_a_fresh_encode(
    serial: LocalBackend, batched: LocalBackend
) -> None:
    """Three turns of one channel: from the second on, the prompt starts with what the previous
    turn processed, so only the new part is encoded; the replies equal full re-encodes."""
    scheduler = batched.scheduler
    assert scheduler is not None
    history: tuple[Turn, ...] = ()
    for question in QUESTIONS[:3]:
        conv = conversation(question, key="long", history=history)
        expected = await answer(serial, conv, greedy(24))
        reused_before = scheduler.contexts.reused_tokens
        got = await answer(batched, conv, greedy(24))
        assert got == expected
        if history:
            assert scheduler.contexts.reused_tokens - reused_before > 10
        history = (*history, Turn("user", question), Turn("assistant", got))
    assert scheduler.contexts.hits == 2


async def cut_moves(directory: Path, cache: Path, slack: float, turns: int = 30) -> tuple[int, int]:
    """Play `turns` exchanges in one channel through `prepare` with a 384-token window; return
    (turns after the history first overflowed, how often the history's first kept turn moved
    in those)."""
    backend = LocalBackend(
        str(directory),
        cache_dir=cache,
        prompt_format="dialogpt",
        context_window=384,
        batching=BatchingSettings(),
        truncation_slack=slack,
    )
    await backend.start()
    try:
        history: list[Turn] = []
        starts: list[tuple[Turn, ...]] = []
        for i in range(turns):
            conv = conversation(f"question {i}?", key="chan", history=tuple(history))
            prompt: PreparedPrompt = await backend.prepare(conv, 32)
            assert len(prompt.token_ids) <= 384 - 32
            if prompt.history_used < len(history):
                first = len(history) - prompt.history_used
                starts.append(tuple(history[first : first + 2]))
            history += [Turn("user", conv.message), Turn("assistant", f"answer {i}, fine.")]
        return len(starts), sum(1 for a, b in itertools.pairwise(starts) if a != b)
    finally:
        await backend.stop()


async def test_truncated_history_keeps_its_start_for_several_turns(
    tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    """Once a conversation outgrows the window, cutting just enough moves the history's start at
    every turn (the cached context never matches); with slack the cut moves in large steps, so
    most turns start where the previous prompt started."""
    overflowed, moves = await cut_moves(tiny_gpt2_dir, tmp_path, slack=0.0)
    assert overflowed >= 10
    assert moves >= overflowed - 2
    overflowed, moves = await cut_moves(tiny_gpt2_dir, tmp_path, slack=0.3)
    assert overflowed >= 10
    assert moves <= overflowed // 3


async def test_engine_answers_busy_keeps_the_message_and_reset_cancels(
    tiny_gpt2_dir: Path, tmp_path: Path, make_engine: EngineFactory, repository: ChatRepository
) -> None:
    backend = tiny(tiny_gpt2_dir, tmp_path, max_batch=1, max_waiting=0)
    await backend.start()
    try:
        engine = await make_engine(backend, model={"max_new_tokens": 900, "temperature": 0})

        def event(channel: str, text: str, admin: bool = False) -> ChatEvent:
            return ChatEvent(
                platform="web", channel=channel, author_id="u1", author_name="U", text=text, is_admin=admin
            )

        long_reply = engine.handle(event("a", QUESTIONS[0]))
        await asyncio.wait_for(anext(aiter(long_reply)), WAIT)  # channel a is generating
        reset = engine.handle(event("a", "/reset", admin=True))
        assert (await asyncio.wait_for(long_reply.text(), WAIT)).endswith(CANCELLED_NOTICE)
        assert "reset" in (await asyncio.wait_for(reset.text(), WAIT)).lower()
        assert await repository.recent_messages("web:a", limit=10) == []  # nothing half-written

        other = engine.handle(event("c", QUESTIONS[1]))
        await asyncio.wait_for(anext(aiter(other)), WAIT)  # the only slot is taken
        assert await asyncio.wait_for(engine.ask(event("b", "hello")), WAIT) == BUSY_REPLY
        assert [m.role for m in await repository.recent_messages("web:b", limit=10)] == ["user"]
        engine.handle(event("c", "/reset", admin=True))
        await asyncio.wait_for(other.text(), WAIT)
        assert await asyncio.wait_for(engine.ask(event("b", "hello again")), WAIT) != BUSY_REPLY
    finally:
        await backend.stop()


@pytest.mark.model
async def test_bundled_model_batched_equals_serial(model_cache_dir: Path) -> None:
    questions = ("Hello, who are you?", "What is the capital of France?", "Tell me a joke.", "Count to five.")
    serial_backend = LocalBackend("bundled:smollm2", cache_dir=model_cache_dir)
    batched_backend = LocalBackend("bundled:smollm2", cache_dir=model_cache_dir, batching=BatchingSettings())
    await serial_backend.start()
    await batched_backend.start()
    try:
        convs = [Conversation("You are a helpful assistant.", [], q, context_key=q) for q in questions]
        expected = [await answer(serial_backend, c, greedy(24)) for c in convs]
        together = await asyncio.gather(*(answer(batched_backend, c, greedy(24)) for c in convs))
        assert list(together) == expected
        assert all(expected)
    finally:
        await serial_backend.stop()
        await batched_backend.stop()


async def test_bfloat16_batched_equals_bfloat16_alone(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    """`model.dtype: bfloat16`: the weights really are bfloat16, and batching still changes no
    greedy token."""
    alone = LocalBackend(str(tiny_gpt2_dir), cache_dir=tmp_path, prompt_format="dialogpt", dtype="bfloat16")
    batched = LocalBackend(
        str(tiny_gpt2_dir),
        cache_dir=tmp_path,
        prompt_format="dialogpt",
        dtype="bfloat16",
        batching=BatchingSettings(),
    )
    await alone.start()
    await batched.start()
    try:
        assert alone.dtype == batched.dtype == "bfloat16"
        expected = [await answer(alone, conversation(q), greedy(24)) for q in QUESTIONS]
        prompts = [await batched.prepare(conversation(q), 24) for q in QUESTIONS]
        together = await asyncio.gather(*(text_of(batched.generate(p, greedy(24))) for p in prompts))
        assert list(together) == expected
    finally:
        await alone.stop()
        await batched.stop()


def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    with_bf16 = tmp_path / "zen4"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni\n")
    without = tmp_path / "old"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    assert cpu_has_native_bf16(str(with_bf16))
    assert not cpu_has_native_bf16(str(without))
    assert not cpu_has_native_bf16(str(tmp_path / "missing"))


def test_auto_takes_bfloat16_only_when_it_is_measured_faster_for_one_row_and_a_batch() -> None:
    def timings(one_row: float, batch: float) -> Callable[[int, int, int, torch.dtype], float]:
        """float32 takes 1.0 per product; bfloat16 `one_row` for a single row, `batch` otherwise."""

        def timer(rows: int, _in: int, _out: int, dtype: torch.dtype) -> float:
            if dtype == torch.float32:
                return 1.0
            return one_row if rows == 1 else batch

        return timer

    assert bfloat16_is_faster(576, 1536, timer=timings(one_row=0.5, batch=0.5))
    assert not bfloat16_is_faster(576, 1536, timer=timings(one_row=30.0, batch=0.5))  # slow gemv
    assert not bfloat16_is_faster(576, 1536, timer=timings(one_row=0.5, batch=0.95))  # no clear gain
