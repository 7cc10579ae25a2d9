"""`python -m bench.community_overhead`: what the access check and the quota bookkeeping cost per
message, with the echo backend (no model: the framework alone), against main before they existed.

Three configurations run the same workloads on a fresh SQLite file each, every one in a fresh
process, in rotating order over several rounds (each figure is the median over the rounds):

- `before`: the code of `--baseline-tree` (a checkout of main before the community features;
  `git worktree add ../base dc3cb51`), which has neither;
- `off`: this code with the defaults (no access list, no quota; every reply still records its
  token cost, which `/usage` reads, and group turns carry speaker names);
- `access`: this code with 1,000 allowed and 1,000 blocked users and a blocked channel list;
- `quota`: this code with a daily quota that every message checks (one read; the reply's charge
  is written in the reply's own transaction, as in `off`).

Workloads: `sequential`, one group message at a time round robin over 20 channels (per-message
latency), and `concurrent`, 10 channels sending as fast as their replies come (messages/s). Not
part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("before", "off", "access", "quota")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.community_overhead", description=__doc__)
    parser.add_argument("--baseline-tree", type=Path, required=True, help="a checkout of main before")
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "community_overhead.json")
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--directory", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


# --- the worker: runs in a subprocess, on this tree or the baseline's (only APIs both have) -------


async def _worker(config: str, messages: int, directory: Path) -> dict[str, float]:
    from bot.app import build_engine
    from bot.backends.echo import EchoBackend
    from bot.config import ChatConfig, ModelConfig, RateLimitConfig
    from bot.events import ChatEvent
    from storage.db import Database

    extra: dict[str, Any] = {}
    chat: dict[str, Any] = {"rate_limit": RateLimitConfig(messages=1_000_000, per_seconds=1)}
    if config == "access":
        from bot.config import AccessConfig

        extra["access"] = AccessConfig(
            allowed_users=tuple(f"telegram:{n}" for n in range(1000)),
            blocked_users=tuple(f"telegram:{n}" for n in range(10_000, 11_000)),
            blocked_channels=("telegram:-999",),
        )
    if config == "quota":
        from bot.config import QuotaConfig

        chat["quota"] = QuotaConfig(tokens_per_day=10**12)
    database = Database(f"sqlite+aiosqlite:///{directory / config}.db")
    await database.start()
    model = ModelConfig(backend="echo", temperature=0.0, generation_timeout_s=3600)
    engine = build_engine(database, EchoBackend(), model, ChatConfig(**chat), **extra)

    def event(channel: int, text: str) -> ChatEvent:
        return ChatEvent("telegram", str(-100 - channel), str(channel), f"Member {channel}", text)

    async def one(channel: int, text: str) -> float:
        started = time.perf_counter()
        reply = engine.handle(event(channel, text))
        answer = await reply.text()
        if not answer.startswith("echo["):
            raise RuntimeError(f"{config}: unexpected reply {answer!r}")
        return time.perf_counter() - started

    async def channel_run(channel: int, count: int) -> None:
        for number in range(count):
            await one(channel, f"message {number}")

    try:
        for number in range(40):  # warm-up
            await one(number % 20, "warm up")
        started = time.perf_counter()
        latencies = [await one(number % 20, f"message {number}") for number in range(messages)]
        sequential_s = time.perf_counter() - started
        started = time.perf_counter()
        await asyncio.gather(*(channel_run(100 + c, messages // 10) for c in range(10)))
        concurrent_s = time.perf_counter() - started
    finally:
        await engine.close(grace_s=5)
        await database.stop()
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "messages_per_s_sequential": messages / sequential_s,
        "messages_per_s_concurrent": (messages // 10) * 10 / concurrent_s,
    }


# --- the driver -----------------------------------------------------------------------------------


def run_config(config: str, args: argparse.Namespace, directory: Path) -> dict[str, float]:
    tree = args.baseline_tree.resolve() if config == "before" else ROOT
    command = [sys.executable, str(Path(__file__).resolve()), "--baseline-tree", str(args.baseline_tree)]
    command += ["--worker", config, "--messages", str(args.messages), "--directory", str(directory)]
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        command, cwd=tree, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{config} failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def report(results: dict[str, dict[str, float]]) -> str:
    before = results["before"]
    lines = [
        "| config | p50 ms/message | msg/s sequential | msg/s 10 channels "
        "| p50 vs before | msg/s vs before |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for config, r in results.items():
        lines.append(
            f"| {config} | {r['p50_ms']:.2f} | {r['messages_per_s_sequential']:.0f}"
            f" | {r['messages_per_s_concurrent']:.0f} | {r['p50_ms'] / before['p50_ms']:.2f}x"
            f" | {r['messages_per_s_sequential'] / before['messages_per_s_sequential']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.worker is not None:
        print(json.dumps(asyncio.run(_worker(args.worker, args.messages, args.directory))))
        return
    rounds: dict[str, list[dict[str, float]]] = {config: [] for config in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="chinwag-community-bench-") as tmp:
        for number in range(args.rounds):
            order = CONFIGS[number % len(CONFIGS) :] + CONFIGS[: number % len(CONFIGS)]
            for config in order:
                directory = Path(tmp) / f"{config}-{number}"
                directory.mkdir()
                rounds[config].append(run_config(config, args, directory))
            print(f"round {number + 1} of {args.rounds} done ({', '.join(order)})", flush=True)
    results = {
        config: {key: round(statistics.median(r[key] for r in figures), 3) for key in figures[0]}
        for config, figures in rounds.items()
    }
    print(report(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"messages": args.messages, "rounds": rounds, "medians": results}, indent=2) + "\n"
    )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
