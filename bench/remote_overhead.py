"""`python -m bench.remote_overhead`: what the remote backend path costs on top of the framework.

The openai and tgi backends talk to the loopback fake servers of the tests (`tests/fakes/`), which
answer at once with a fixed three-token reply, so what is measured is the bot's side: the client
package, HTTP on 127.0.0.1, SSE parsing, retries bookkeeping, stop filtering, the engine and
SQLite. The echo backend runs the same workloads in the same process as the reference. Not part
of `make test`; needs the `remote` and `dev` extras (aiohttp for the fakes).

Workloads: `sequential` sends one message at a time (each awaited), round robin over 20 channels:
per-message latency. `concurrent` lets 10 channels send as fast as their replies come: messages/s.
The backends take turns over several rounds (the order rotating), and each figure is the median
over the rounds, so a burst of load from elsewhere on the machine does not land on one backend.
The fake server runs in the same process and event loop, so its own work (aiohttp, JSON) is
counted too: the figures are an upper bound of the bot's remote overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from bench.harness import engine_over_sqlite, measure
from bench.workloads import echo_concurrent, echo_sequential
from bot.backends.base import Backend
from bot.backends.echo import EchoBackend
from bot.backends.openai_chat import OpenAIChatBackend
from bot.backends.remote_retry import RetryPolicy
from bot.backends.tgi import TGIBackend
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.tgi_server import FakeTGI

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("echo", "openai", "tgi")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.remote_overhead", description=__doc__)
    parser.add_argument("--messages", type=int, default=300, help="messages per workload, backend and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "remote_overhead.json")
    return parser.parse_args()


async def run_kind(kind: str, messages: int, directory: Path) -> dict[str, float]:
    """Both workloads for one backend over a fresh SQLite file."""
    async with AsyncExitStack() as stack:
        backend: Backend
        if kind == "echo":
            backend = EchoBackend()
        elif kind == "openai":
            fake_openai = await stack.enter_async_context(FakeOpenAI())
            backend = OpenAIChatBackend(
                base_url=fake_openai.base_url, model_name="fake-chat-1", retry=RetryPolicy(max_retries=0)
            )
        else:
            fake_tgi = await stack.enter_async_context(FakeTGI())
            backend = TGIBackend(base_url=fake_tgi.base_url, retry=RetryPolicy(max_retries=0))
        await backend.start()
        stack.push_async_callback(backend.stop)
        engine, _ = await stack.enter_async_context(engine_over_sqlite(backend, directory, name=kind))
        await echo_sequential(engine, 20, 5)  # warm-up: connections, caches
        sequential = await measure(lambda: echo_sequential(engine, messages, 20), len)
        concurrent = await measure(lambda: echo_concurrent(engine, max(1, messages // 10), 10), len)
        failed = [r.text for r in sequential.replies + concurrent.replies if "not reachable" in r.text]
        if failed:
            raise RuntimeError(f"{kind}: {len(failed)} replies failed, e.g. {failed[0]!r}")
        return {
            "messages_per_s_sequential": len(sequential.replies) / sequential.wall_s,
            "messages_per_s_concurrent": len(concurrent.replies) / concurrent.wall_s,
            "p50_ms": sequential.summary()["latency_p50_s"] * 1000,
            "p99_ms": sequential.summary()["latency_p99_s"] * 1000,
        }


def medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds."""
    return {key: round(statistics.median(r[key] for r in rounds), 2) for key in rounds[0]}


def report(results: dict[str, dict[str, float]]) -> str:
    """A markdown table: each backend's figures and its ratio to echo."""
    echo = results["echo"]
    lines = [
        "| backend | msg/s sequential | msg/s 10 channels | p50 ms | p99 ms | p50 vs echo | msg/s vs echo |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, r in results.items():
        lines.append(
            f"| {kind} | {r['messages_per_s_sequential']:.0f} | {r['messages_per_s_concurrent']:.0f}"
            f" | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['p50_ms'] / echo['p50_ms']:.2f}x"
            f" | {r['messages_per_s_sequential'] / echo['messages_per_s_sequential']:.2f}x |"
        )
    return "\n".join(lines)


async def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    rounds: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory(prefix="chinwag-remote-bench-") as tmp:
        for number in range(args.rounds):
            order = KINDS[number % len(KINDS) :] + KINDS[: number % len(KINDS)]
            for kind in order:
                directory = Path(tmp) / f"round-{number}"
                directory.mkdir(exist_ok=True)
                rounds[kind].append(await run_kind(kind, args.messages, directory))
            print(f"round {number + 1} of {args.rounds} done ({', '.join(order)})", flush=True)
    results = {kind: medians(figures) for kind, figures in rounds.items()}
    print(report(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {"messages": args.messages, "rounds": rounds, "medians": results}
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
