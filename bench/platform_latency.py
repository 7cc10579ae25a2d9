"""`python -m bench.platform_latency`: the reply latency a user sees through each platform adapter.

The real adapters (python-telegram-bot, discord.py, the FastAPI web adapter) run in this process
against the project's fake platform servers in `tests/fakes/`, exactly as the adapter tests start
them, with the real `ChatEngine` over a fresh SQLite file per platform. A message is timed from the
moment the fake injects it (Telegram: the update is queued for `getUpdates`; Discord: the
MESSAGE_CREATE dispatch is queued for the gateway; web: the POST is sent) to the moment the fake
receives the reply's final text (the last sendMessage / editMessageText, POST / PATCH of a message;
web: the last SSE delta), and to the first visible text (the first message posted; web: the first
delta).

Rounds, per platform and backend: one user sends N messages one after another in one channel
(each after the previous reply was complete), then C users in C channels each send M messages the
same way, all at once. Backends: `echo` (the framework alone) and `local` (the bundled SmolLM2,
greedy, `--max-new-tokens`, the default `model.batching` config). Adapters use the default
timings of `config.yaml` (Telegram edits at most once per 1.0 s; Discord posts after 0.5 s and
edits once per 1.5 s), so the figures include that pacing. The engine's per-user rate limit is
lifted (every web request comes from 127.0.0.1, i.e. one user). One warm-up message per platform
is not counted.

Writes bench/results/platform_latency.json and prints a table. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import SecretStr

from adapters.discord import DiscordAdapter, discord_pieces
from adapters.telegram import TelegramAdapter
from adapters.telegram_format import visible_pieces
from bench.harness import bench_engine, fresh_sqlite, percentile
from bot.app import build_backend
from bot.backends.base import Backend
from bot.config import ChatConfig, DiscordConfig, ModelConfig, TelegramConfig
from bot.engine import ChatEngine
from bot.events import ChatEvent
from bot.ports import Conversation, SamplingOverrides
from bot.reply import CutReason, Reply
from storage.db import Database
from storage.inbox import UpdateInbox
from storage.locks import claim_exclusive
from storage.repository import ChatRepository
from tests.fakes.discord_server import Call as DiscordCall
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.telegram_server import Call as TelegramCall
from tests.fakes.telegram_server import FakeTelegram
from tests.fakes.web_harness import running_web, web_client

ROOT = Path(__file__).resolve().parents[1]
PLATFORMS = ("telegram", "discord", "web")
BACKENDS = ("echo", "local")
TELEGRAM_TOKEN = "123456:BENCH-token"
DISCORD_TOKEN = "MTIz.BENCH-discord-token"
DM_BASE = 600_000_000_000_000_000  # Discord DM channel ids: DM_BASE + channel number
USER_BASE = 500_000_000_000_000_000  # Discord user ids: USER_BASE + channel number
TELEGRAM_CHAT_BASE = 10_000  # Telegram private chats (= user ids): base + channel number
_T = TypeVar("_T")
QUESTIONS = (
    "What is the capital of France?",
    "Give me one tip for sleeping better.",
    "Why is the sky blue?",
    "Name three fruits that are red.",
    "How do I boil an egg?",
    "What is a good name for a cat?",
    "Explain what a computer is in one sentence.",
    "What should I cook for dinner tonight?",
)


@dataclass(frozen=True, slots=True)
class Sample:
    """One message as its user saw it: seconds from injection to the first and the final text, and
    the final text (split pieces joined); `engine_s`: to the engine finishing the reply."""

    first_s: float
    final_s: float
    engine_s: float  # when the engine had finished the reply (generation and storage)
    text: str


@dataclass(slots=True)
class RoundResult:
    platform: str
    backend: str
    round: str
    channels: int
    per_channel: int
    wall_s: float = 0.0
    others_cpu: float = 0.0  # CPU cores other processes kept busy during the round, on average
    samples: list[Sample] = field(default_factory=list)
    wrong: int = 0  # echo: replies whose text is not the expected `echo[N]: message`

    def summary(self) -> dict[str, Any]:
        final = [s.final_s for s in self.samples]
        first = [s.first_s for s in self.samples]
        return {
            "platform": self.platform,
            "backend": self.backend,
            "round": self.round,
            "channels": self.channels,
            "messages_per_channel": self.per_channel,
            "messages": len(self.samples),
            "wall_s": round(self.wall_s, 3),
            "other_processes_cpu_cores": round(self.others_cpu, 2),
            "messages_per_s": round(len(self.samples) / self.wall_s, 2) if self.wall_s else 0.0,
            "final_p50_s": round(percentile(final, 50), 4),
            "final_p99_s": round(percentile(final, 99), 4),
            "final_max_s": round(max(final, default=0.0), 4),
            "first_p50_s": round(percentile(first, 50), 4),
            "first_p99_s": round(percentile(first, 99), 4),
            "first_max_s": round(max(first, default=0.0), 4),
            "engine_p50_s": round(percentile([s.engine_s for s in self.samples], 50), 4),
            "wrong_replies": self.wrong,
            "example_reply": self.samples[0].text[:300] if self.samples else "",
            # Every message in the order the channels' users sent them: [first_s, final_s, engine_s].
            "samples": [
                [round(s.first_s, 4), round(s.final_s, 4), round(s.engine_s, 4)] for s in self.samples
            ],
        }


class RecordingEngine:
    """The real engine behind the adapters' `ChatService` port; it also notes every `Reply` the
    engine hands out (the `index`-th of a channel key) and when the engine finished it, so the
    benchmark knows a reply's final text and how long the engine alone took (the adapters are not
    touched)."""

    def __init__(self, engine: ChatEngine) -> None:
        self._engine = engine
        self._count: defaultdict[str, int] = defaultdict(int)
        self._replies: dict[tuple[str, int], asyncio.Future[Reply]] = {}
        self._finished: dict[tuple[str, int], asyncio.Future[float]] = {}
        self._watchers: set[asyncio.Task[None]] = set()

    def handle(self, event: ChatEvent) -> Reply:
        reply = self._engine.handle(event)
        slot = (event.channel_key, self._count[event.channel_key])
        self._count[event.channel_key] += 1
        self._future(self._replies, slot).set_result(reply)
        watcher = asyncio.create_task(self._note_finish(slot, reply))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return reply

    def move_channel(self, old_key: str, new_key: str) -> asyncio.Task[None]:
        return self._engine.move_channel(old_key, new_key)

    def complete(self, conversation: Conversation, overrides: SamplingOverrides, user_key: str) -> Reply:
        return self._engine.complete(conversation, overrides, user_key)

    def stop(self, channel_key: str, reason: CutReason = CutReason.STOPPED) -> bool:
        return self._engine.stop(channel_key, reason)

    def edit(self, event: ChatEvent) -> asyncio.Task[bool]:
        return self._engine.edit(event)

    def delete(self, channel_key: str, platform_message_ids: Sequence[str]) -> asyncio.Task[int]:
        return self._engine.delete(channel_key, platform_message_ids)

    def handed_out(self, channel_key: str) -> int:
        """How many replies the engine handed out for `channel_key` so far."""
        return self._count[channel_key]

    async def final_text(self, channel_key: str, index: int) -> str:
        """Wait for the `index`-th reply in `channel_key` to be handed out and finished; its text."""
        reply = await self._future(self._replies, (channel_key, index))
        text = await reply.text()
        if reply.silent:
            raise RuntimeError(f"{channel_key}: reply {index} is silent ({reply.status.value})")
        return text

    async def finished_at(self, channel_key: str, index: int) -> float:
        """The monotonic time the engine finished the `index`-th reply in `channel_key`."""
        return await self._future(self._finished, (channel_key, index))

    async def _note_finish(self, slot: tuple[str, int], reply: Reply) -> None:
        await reply.text()
        self._future(self._finished, slot).set_result(time.monotonic())

    @staticmethod
    def _future(
        table: dict[tuple[str, int], asyncio.Future[_T]], slot: tuple[str, int]
    ) -> asyncio.Future[_T]:
        if slot not in table:
            table[slot] = asyncio.get_running_loop().create_future()
        return table[slot]


async def delivered_at(
    engine: RecordingEngine,
    channel_key: str,
    index: int,
    *,
    pieces: Callable[[str], list[str]],
    texts: Callable[[], list[str]],
    texts_before: int,
    wait_for: Callable[[Callable[[], bool]], Awaitable[None]],
    times: list[float],
) -> tuple[float, str]:
    """When the fake received the last request that made the channel show the reply's final text
    (its pieces, as the adapter splits it), and that text. Waits for the engine to finish the
    reply, then for the fake to show it (checked now and after every request the fake answers)."""
    text = await engine.final_text(channel_key, index)
    expected = pieces(text)
    found: list[float] = []

    def complete() -> bool:
        shown = texts()
        fresh = len(shown) - texts_before
        if fresh < len(expected) or shown[len(shown) - len(expected) :] != expected:
            return False
        found.append(times[-1])
        return True

    await wait_for(complete)
    return found[0], "".join(expected)


# --- platforms -------------------------------------------------------------------------------------

Exchange = Callable[[int, str, float], Awaitable[Sample]]
"""Send one message in channel number n and wait (bounded) until its reply is fully delivered."""


class TextCallLog:
    """Monotonic arrival times of the requests that post or edit reply text, per channel."""

    def __init__(self) -> None:
        self.times: defaultdict[int, list[float]] = defaultdict(list)

    def add(self, channel: int, at: float) -> None:
        self.times[channel].append(at)


@asynccontextmanager
async def telegram_platform(
    engine: RecordingEngine, database: Database, requests: Counter[str]
) -> AsyncIterator[Exchange]:
    log = TextCallLog()

    def on_call(call: TelegramCall) -> None:
        if call.method in ("sendMessage", "editMessageText"):
            log.add(int(call.params["chat_id"]), call.at)

    async with FakeTelegram(token=TELEGRAM_TOKEN, max_long_poll_s=1.0) as fake:
        fake.on_call = on_call
        config = TelegramConfig(token=SecretStr(TELEGRAM_TOKEN), base_url=fake.base_url)
        adapter = TelegramAdapter(
            config,
            engine,
            UpdateInbox(database, "telegram"),
            lambda name: claim_exclusive(database, name),
        )
        try:
            await adapter.start()

            async def exchange(channel: int, text: str, within: float) -> Sample:
                chat_id = TELEGRAM_CHAT_BASE + channel
                key = f"telegram:{chat_id}"
                index = engine.handed_out(key)
                texts_before = len(fake.texts(chat_id))
                calls_before = len(log.times[chat_id])
                injected = time.monotonic()
                fake.push_message(chat_id, text)
                async with asyncio.timeout(within):
                    final, reply = await delivered_at(
                        engine,
                        key,
                        index,
                        pieces=visible_pieces,
                        texts=lambda: fake.texts(chat_id),
                        texts_before=texts_before,
                        wait_for=lambda condition: fake.wait_for(condition, within),
                        times=log.times[chat_id],
                    )
                    finished = await engine.finished_at(key, index)
                return Sample(
                    log.times[chat_id][calls_before] - injected, final - injected, finished - injected, reply
                )

            yield exchange
        finally:
            await adapter.stop()
            requests.update(call.method for call in fake.calls)


@asynccontextmanager
async def discord_platform(
    engine: RecordingEngine, database: Database, requests: Counter[str]
) -> AsyncIterator[Exchange]:
    log = TextCallLog()

    def on_call(call: DiscordCall) -> None:
        parts = call.path.strip("/").split("/")
        posted = call.method == "POST" and len(parts) == 3
        edited = call.method == "PATCH" and len(parts) == 4
        if parts[0] == "channels" and parts[2:3] == ["messages"] and (posted or edited):
            log.add(int(parts[1]), call.at)

    async with FakeDiscord(token=DISCORD_TOKEN) as fake:
        fake.on_call = on_call
        config = DiscordConfig(
            token=SecretStr(DISCORD_TOKEN),
            api_base=fake.api_base,
            gateway_url=fake.gateway_url,
            ready_timeout_s=10.0,
        )
        # guild_ready_timeout_s: start-up only (as in the tests): READY sooner.
        adapter = DiscordAdapter(config, engine, guild_ready_timeout_s=0.05)
        try:
            await adapter.start()

            async def exchange(channel: int, text: str, within: float) -> Sample:
                channel_id = DM_BASE + channel
                key = f"discord:{channel_id}"
                index = engine.handed_out(key)
                texts_before = len(fake.texts(channel_id))
                calls_before = len(log.times[channel_id])
                injected = time.monotonic()
                fake.push_message(channel_id, text, user_id=USER_BASE + channel, name=f"User{channel}")
                async with asyncio.timeout(within):
                    final, reply = await delivered_at(
                        engine,
                        key,
                        index,
                        pieces=discord_pieces,
                        texts=lambda: fake.texts(channel_id),
                        texts_before=texts_before,
                        wait_for=lambda condition: fake.wait_for(condition, within),
                        times=log.times[channel_id],
                    )
                    finished = await engine.finished_at(key, index)
                return Sample(
                    log.times[channel_id][calls_before] - injected,
                    final - injected,
                    finished - injected,
                    reply,
                )

            yield exchange
        finally:
            await adapter.stop()
            requests.update(f"{call.method} {_route(call.path)}" for call in fake.calls)


def _route(path: str) -> str:
    """A REST path with its ids replaced: `/channels/{id}/messages/{id}`."""
    return "/".join("{id}" if part.isdigit() else part for part in path.split("/"))


@asynccontextmanager
async def web_platform(
    engine: RecordingEngine, database: Database, requests: Counter[str]
) -> AsyncIterator[Exchange]:
    async with running_web(engine, ChatRepository(database)) as web, web_client(web) as client:

        async def exchange(channel: int, text: str, within: float) -> Sample:
            key = f"web:bench-{channel}"
            index = engine.handed_out(key)
            deltas: list[float] = []
            chunks: list[str] = []
            done = False
            injected = time.monotonic()
            async with asyncio.timeout(within):
                async with client.stream(
                    "POST",
                    f"/api/channels/bench-{channel}/messages",
                    json={"text": text},
                    headers={"Accept": "text/event-stream"},
                ) as response:
                    response.raise_for_status()
                    event = "message"
                    async for line in response.aiter_lines():
                        if line.startswith("event:"):
                            event = line.removeprefix("event:").strip()
                        elif line.startswith("data:"):
                            if event == "done":
                                done = True
                            else:
                                deltas.append(time.monotonic())
                                chunks.append(json.loads(line.removeprefix("data:"))["delta"])
                        elif not line:
                            event = "message"
                finished = await engine.finished_at(key, index)
            if not done or not deltas:
                raise RuntimeError(f"web: the reply in bench-{channel} ended without text or `done`")
            return Sample(deltas[0] - injected, deltas[-1] - injected, finished - injected, "".join(chunks))

        yield exchange


PLATFORM_FACTORIES: dict[
    str, Callable[[RecordingEngine, Database, Counter[str]], AbstractAsyncContextManager[Exchange]]
] = {
    "telegram": telegram_platform,
    "discord": discord_platform,
    "web": web_platform,
}


# --- rounds ----------------------------------------------------------------------------------------


def message_text(backend: str, channel: int, number: int) -> str:
    if backend == "echo":
        return f"hello from channel {channel}, message {number}"
    return QUESTIONS[(channel + number) % len(QUESTIONS)]


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds spent so far by the whole machine (all cores, /proc/stat) and by this process."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    ticks = os.sysconf("SC_CLK_TCK")
    ours = os.times()
    return busy / ticks, ours.user + ours.system


async def run_round(
    exchange: Exchange,
    result: RoundResult,
    first_channel: int,
    *,
    per_message_timeout: float,
) -> None:
    """`result.channels` users at once, each sending `result.per_channel` messages in turn."""

    async def user(channel: int) -> list[Sample]:
        samples: list[Sample] = []
        for number in range(result.per_channel):
            text = message_text(result.backend, channel, number)
            sample = await exchange(channel, text, per_message_timeout)
            # Each earlier exchange left a message and its answer in the channel's history, of which
            # the engine loads `chat.history_messages` at most.
            history = min(2 * number, ChatConfig().history_messages)
            if result.backend == "echo" and sample.text != f"echo[{history}]: {text}":
                result.wrong += 1
            samples.append(sample)
        return samples

    cpu_before = cpu_seconds()
    started = time.monotonic()
    async with asyncio.timeout(per_message_timeout * result.per_channel + 30):
        per_user = await asyncio.gather(*(user(first_channel + offset) for offset in range(result.channels)))
    result.wall_s = time.monotonic() - started
    machine, ours = (after - before for after, before in zip(cpu_seconds(), cpu_before, strict=True))
    result.others_cpu = max(0.0, machine - ours) / result.wall_s
    result.samples = [sample for samples in per_user for sample in samples]


@asynccontextmanager
async def engine_on_fresh_sqlite(
    backend: Backend, directory: Path, name: str, max_new_tokens: int
) -> AsyncIterator[tuple[RecordingEngine, Database]]:
    """The benchmarks' engine (`bench_engine`), recording its replies, over a fresh SQLite file;
    the database too, which the Telegram adapter's inbox needs."""
    async with fresh_sqlite(directory, name) as database:
        engine = bench_engine(database, backend, max_new_tokens=max_new_tokens)
        try:
            yield RecordingEngine(engine), database
        finally:
            await engine.close(grace_s=5.0)


async def run_platform(
    platform: str,
    backend_name: str,
    backend: Backend,
    args: argparse.Namespace,
    directory: Path,
    *,
    requests: Counter[str],
) -> list[RoundResult]:
    """The warm-up message, the sequential and the concurrent round; `requests` counts the
    platform API requests the adapter made (by method), warm-up included."""
    model = backend_name == "local"
    timeout = args.model_timeout if model else args.echo_timeout
    sequential = RoundResult(
        platform, backend_name, "sequential", 1, args.model_messages if model else args.echo_messages
    )
    concurrent = RoundResult(
        platform,
        backend_name,
        "concurrent",
        args.model_channels if model else args.echo_channels,
        args.model_per_channel if model else args.echo_per_channel,
    )
    async with (
        engine_on_fresh_sqlite(backend, directory, f"{platform}-{backend_name}", args.max_new_tokens) as (
            engine,
            database,
        ),
        PLATFORM_FACTORIES[platform](engine, database, requests) as exchange,
    ):
        await exchange(0, message_text(backend_name, 0, 99), timeout)  # warm-up, not counted
        await run_round(exchange, sequential, 1, per_message_timeout=timeout)
        await run_round(exchange, concurrent, 100, per_message_timeout=timeout)
    return [sequential, concurrent]


# --- reporting -------------------------------------------------------------------------------------


class WarningLog(logging.Handler):
    """Keeps the warnings and errors logged while the benchmark runs (adapters' complaints)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "voice will NOT be supported" in record.getMessage():
            return  # discord.py's note that its optional voice packages are missing
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def secs(seconds: float) -> str:
    return f"{seconds:.3f}" if seconds < 10 else f"{seconds:.1f}"


def table(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        f"{'platform':<9} {'backend':<7} {'round':<10} {'n':>3} "
        f"{'final p50':>9} {'p99':>6} {'max':>6}  {'first p50':>9} {'p99':>6} {'max':>6}  "
        f"{'engine p50':>10}  {'msg/s':>6}  {'others':>6}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        shape = f"{row['round'][:3]} {row['channels']}x{row['messages_per_channel']}"
        lines.append(
            f"{row['platform']:<9} {row['backend']:<7} {shape:<10} {row['messages']:>3} "
            f"{secs(row['final_p50_s']):>9} {secs(row['final_p99_s']):>6} {secs(row['final_max_s']):>6}  "
            f"{secs(row['first_p50_s']):>9} {secs(row['first_p99_s']):>6} {secs(row['first_max_s']):>6}  "
            f"{secs(row['engine_p50_s']):>10}  {row['messages_per_s']:>6.1f}  "
            f"{row['other_processes_cpu_cores']:>6.2f}"
        )
    lines += [
        "seconds from the fake injecting the message: final = the last text delivered (last send/edit;",
        "web: last SSE delta), first = the first text visible, engine = the engine finished the reply;",
        "seq = one channel, one message after another; con CxM = C channels at once, M messages each;",
        "others = CPU cores other processes on this machine kept busy during the round (shared machine)",
    ]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.platform_latency", description=__doc__)
    parser.add_argument("--platforms", nargs="+", choices=PLATFORMS, default=list(PLATFORMS))
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--echo-messages", type=int, default=50, help="sequential round, echo")
    parser.add_argument("--echo-channels", type=int, default=20, help="concurrent round, echo")
    parser.add_argument("--echo-per-channel", type=int, default=3)
    parser.add_argument("--model-messages", type=int, default=5, help="sequential round, local")
    parser.add_argument("--model-channels", type=int, default=4, help="concurrent round, local")
    parser.add_argument("--model-per-channel", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--echo-timeout", type=float, default=20.0, help="seconds per message")
    parser.add_argument("--model-timeout", type=float, default=120.0, help="seconds per message")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "platform_latency.json")
    return parser.parse_args()


async def run_backend(
    backend_name: str, args: argparse.Namespace, directory: Path, results: dict[str, Any]
) -> list[RoundResult]:
    """Every platform with one backend (loaded once); request counts and failures go to `results`."""
    rounds: list[RoundResult] = []
    backend = build_backend(
        ModelConfig.model_validate(
            {"backend": backend_name, "temperature": 0.0, "max_new_tokens": args.max_new_tokens}
        )
    )
    loading = time.monotonic()
    await backend.start()
    if backend_name == "local":
        results["model_load_s"] = round(time.monotonic() - loading, 2)
        print(f"[local] model loaded in {results['model_load_s']:.1f} s", flush=True)
    try:
        for platform in args.platforms:
            platform_started = time.monotonic()
            requests: Counter[str] = Counter()
            try:
                done = await run_platform(platform, backend_name, backend, args, directory, requests=requests)
            except Exception as error:  # one platform failing still reports the others
                traceback.print_exc()
                failure = f"{platform}/{backend_name}: {type(error).__name__}: {error}"
                results["errors"].append(failure)
                print(f"[{backend_name}] {platform}: FAILED ({failure})", flush=True)
                continue
            if requests:
                messages = 1 + sum(len(r.samples) for r in done)
                results["requests_per_message"][f"{platform}/{backend_name}"] = {
                    method: round(count / messages, 2) for method, count in sorted(requests.items())
                }
            rounds.extend(done)
            print(
                f"[{backend_name}] {platform}: "
                + "; ".join(f"{r.round} final p50 {secs(r.summary()['final_p50_s'])} s" for r in done)
                + f" ({time.monotonic() - platform_started:.1f} s)",
                flush=True,
            )
    finally:
        await backend.stop()
    return rounds


async def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings = WarningLog()
    logging.getLogger().addHandler(warnings)
    load_before = os.getloadavg()
    started = time.monotonic()
    results: dict[str, Any] = {
        "commit": commit(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpus": os.cpu_count(),
        "settings": {k: str(v) for k, v in vars(args).items() if k != "out"},
        "adapter_timings": {
            "telegram": TelegramConfig().model_dump(include={"edit_interval_s", "poll_timeout_s"}),
            "discord": DiscordConfig().model_dump(include={"edit_interval_s", "first_post_delay_s"}),
        },
        "model": ModelConfig().model_dump(include={"path", "dtype", "threads", "context_window", "batching"}),
    }
    results["requests_per_message"] = {}
    results["errors"] = []
    rounds: list[RoundResult] = []
    with tempfile.TemporaryDirectory(prefix="chinwag-platform-latency-") as tmp:
        for backend_name in args.backends:
            rounds += await run_backend(backend_name, args, Path(tmp), results)
    rows = [r.summary() for r in rounds]
    results["rounds"] = rows
    results["total_s"] = round(time.monotonic() - started, 1)
    results["loadavg_before"] = [round(x, 2) for x in load_before]
    results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    results["warnings"] = warnings.lines[:50]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".json.tmp")
    partial.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    partial.replace(args.out)
    print(table(rows))
    print(
        f"total {results['total_s']} s; load average before {results['loadavg_before'][0]}, "
        f"after {results['loadavg_after'][0]} ({results['cpus']} CPUs); "
        f"{len(warnings.lines)} warning(s) logged; wrote {args.out}"
    )
    for line in sorted(set(warnings.lines))[:10]:
        print("  " + line)
    for failure in results["errors"]:
        print("FAILED " + failure)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
