"""`python -m bench` (`make bench`): Chinwag's scheduler against the tutorial baseline.

Every workload runs through the real `ChatEngine` and SQLite storage with the bundled SmolLM2,
greedy, in this one process: first with the baseline (`model.generate` per message, one at a
time: `model.batching.enabled: false`), then with the batch scheduler. Same prompts, same arrival
times, so the ratios compare like with like. The framework's own overhead is measured with the
echo backend. Results go to bench/results/latest.json, a plot to docs/performance.png and the
table into docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from bench.harness import Outcome, engine_over_sqlite, measure
from bench.report import write_report
from bench.workloads import (
    burst,
    echo_concurrent,
    echo_sequential,
    long_conversations,
    one_after_another,
    poisson,
)
from bot.backends.batching_settings import BatchingSettings
from bot.backends.echo import EchoBackend
from bot.backends.local import LocalBackend
from storage.db import DatabaseOptions

ROOT = Path(__file__).resolve().parents[1]
MODES = ("baseline", "scheduler", "scheduler-bf16")
_SINGLE_STREAM_MESSAGES = 4
"""baseline: float32, `generate` per message; scheduler: the default config (float32);
scheduler-bf16: `model.dtype: bfloat16` (the opt-in speed mode)."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--poisson-rate", type=float, default=1.0, help="messages per second")
    parser.add_argument("--poisson-count", type=int, default=24)
    parser.add_argument("--long-channels", type=int, default=3)
    parser.add_argument("--long-turns", type=int, default=18, help="seeded exchanges (~85 tokens each)")
    parser.add_argument("--echo-messages", type=int, default=2000)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "chinwag" / "models")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--skip-model", action="store_true", help="only the echo overhead")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    return parser.parse_args()


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


async def echo_overhead(args: argparse.Namespace, directory: Path, synchronous: str) -> dict[str, Any]:
    """Echo through engine + SQLite with `storage.sqlite_synchronous` = `synchronous`."""

    def words(text: str) -> int:
        return len(text.split())

    options = DatabaseOptions(sqlite_synchronous="normal" if synchronous == "normal" else "full")
    async with engine_over_sqlite(EchoBackend(), directory, name=f"echo-{synchronous}", options=options) as (
        engine,
        _,
    ):
        await echo_sequential(engine, 50, 10)  # warm-up: connections, caches
        sequential = await measure(lambda: echo_sequential(engine, args.echo_messages, 20), words)
        concurrent = await measure(lambda: echo_concurrent(engine, args.echo_messages // 50, 50), words)
    return {
        "sequential": sequential.summary(),
        "concurrent": concurrent.summary(),
        "messages_per_s": round(len(concurrent.replies) / concurrent.wall_s, 1),
    }


async def model_mode(args: argparse.Namespace, mode: str, directory: Path) -> dict[str, Any]:
    backend = LocalBackend(
        "bundled:smollm2",
        cache_dir=args.cache_dir,
        context_window=2048,
        dtype="bfloat16" if mode == "scheduler-bf16" else "float32",
        batching=None if mode == "baseline" else BatchingSettings(),
        truncation_slack=0.25,
        # The default 120 s would cut the baseline's queued replies short at 64 channels (its
        # 64th reply waits ~220 s), which made the baseline look faster than it is.
        generation_timeout_s=3600.0,
    )
    started = time.perf_counter()
    await backend.start()
    print(f"[{mode}] model loaded in {time.perf_counter() - started:.1f} s", flush=True)
    result: dict[str, Any] = {"burst": {}}
    try:
        async with engine_over_sqlite(backend, directory, max_new_tokens=args.max_new_tokens, name=mode) as (
            engine,
            repository,
        ):
            count = backend.count_tokens
            await burst(engine, 1, f"{mode}-warmup")
            for channels in args.concurrency:
                tag = f"{mode}-burst{channels}"
                # One channel: a few messages in turn (one stream's speed from one 48-token reply
                # varies by ±10% from run to run on a shared machine).
                work = (
                    partial(one_after_another, engine, _SINGLE_STREAM_MESSAGES, tag)
                    if channels == 1
                    else partial(burst, engine, channels, tag)
                )
                outcome = await measure(work, count)
                result["burst"][str(channels)] = outcome.summary()
                report_line(mode, f"{channels} at once", outcome)
            outcome = await measure(
                lambda: poisson(engine, args.poisson_rate, args.poisson_count, f"{mode}-poisson"), count
            )
            result["poisson"] = outcome.summary() | {"rate_per_s": args.poisson_rate}
            report_line(mode, f"poisson {args.poisson_rate}/s", outcome)
            long = await long_conversations(
                engine,
                repository,
                channels=args.long_channels,
                seeded_turns=args.long_turns,
                tag=f"{mode}-long",
            )
            for phase in ("cold", "warm"):
                phase_outcome = Outcome(replies=long[phase])
                phase_outcome.tokens = sum(count(r.text) for r in long[phase])
                result[f"long_{phase}"] = phase_outcome.summary()
                report_line(mode, f"long history, {phase}", phase_outcome)
            result["history_tokens"] = await history_tokens(backend, repository, f"bench:{mode}-long-0")
            scheduler = backend.scheduler
            if scheduler is not None:
                result["scheduler"] = {
                    "decode_steps": scheduler.steps,
                    "rows_stepped": scheduler.rows_stepped,
                    "peak_batch": scheduler.peak_batch,
                    "context_hits": scheduler.contexts.hits,
                    "context_misses": scheduler.contexts.misses,
                    "reused_tokens": scheduler.contexts.reused_tokens,
                }
    finally:
        await backend.stop()
    return result


async def history_tokens(backend: LocalBackend, repository: Any, channel_key: str) -> int:
    messages = await repository.recent_messages(channel_key, limit=1000)
    return sum(backend.count_tokens(m.content) for m in messages)


def report_line(mode: str, workload: str, outcome: Outcome) -> None:
    s = outcome.summary()
    print(
        f"[{mode}] {workload:<22} {s['tokens_per_s']:>7.1f} tok/s  ttft p50 {s['ttft_p50_s']:.3f} s"
        f"  latency p50 {s['latency_p50_s']:.2f} s p99 {s['latency_p99_s']:.2f} s"
        f"  rss {s['peak_rss_mb']:.0f} MB",
        flush=True,
    )


async def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    results: dict[str, Any] = {"commit": commit(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    results["settings"] = {k: str(v) for k, v in vars(args).items()}
    with tempfile.TemporaryDirectory(prefix="chinwag-bench-") as tmp:
        directory = Path(tmp)
        # "echo": the default storage.sqlite_synchronous (full); "echo-normal": the faster option.
        for key, synchronous in (("echo", "full"), ("echo-normal", "normal")):
            results[key] = echo = await echo_overhead(args, directory, synchronous)
            print(
                f"[echo, synchronous={synchronous}] per message"
                f" p50 {echo['sequential']['latency_p50_s'] * 1000:.2f} ms"
                f" p99 {echo['sequential']['latency_p99_s'] * 1000:.2f} ms;"
                f" {echo['messages_per_s']:.0f} messages/s with 50 channels",
                flush=True,
            )
        if not args.skip_model:
            for mode in args.modes:
                results[mode] = await model_mode(args, mode, directory)
    write_report(results, args.out, ROOT / "docs")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
