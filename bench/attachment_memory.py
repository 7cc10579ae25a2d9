"""`python -m bench.attachment_memory`: the memory a 50 MB attachment costs the bot.

A local aiohttp server on 127.0.0.1 serves a 50 MB body. Each scenario runs in a fresh Python
process, after a warm-up on a small file (so imports and the first connection are not counted):

- `text`: `read_attachments` reads it as a text file with the default limits: the download
  (`adapters.downloads.download_start`, as the adapters use it) stops at 256 KB and the start is
  decoded and cut;
- `image`: `read_attachments` reads it as an image of undeclared size, with a vision model: the
  download stops at `chat.max_image_bytes` (10 MB) and the image is refused as too large;
- `image-declared`: the same with the size declared (as Telegram and Discord declare it): refused
  before anything is downloaded;
- `baseline`: what the bot would cost without a bounded download: one `httpx` GET that reads the
  whole body into memory.

For each: the Python memory peak (`tracemalloc`, one pass) and the growth of the process's peak RSS
(`VmHWM` after the run minus `VmRSS` before it, another pass; the peak is reset first through
`/proc/self/clear_refs`), the seconds it took, and how many bytes the server got to send before the
client hung up. Medians over `--rounds` (each round runs every scenario in its own process). Prints
a table; writes bench/results/attachment_memory.json. Linux only (it reads /proc). Not part of
`make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import re
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "attachment_memory.json"
SCENARIOS = ("text", "image", "image-declared", "baseline")
BODY_BYTES = 50 * 1024 * 1024
WARM_UP_BYTES = 4096
_CHUNK = b"x" * (64 * 1024)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.attachment_memory", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", choices=SCENARIOS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    return parser.parse_args()


# --- the worker: one scenario in a fresh process ---------------------------------------------------


def _status_kb(key: str) -> int:
    found = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no {key} in /proc/self/status")
    return int(found.group(1))


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return False
    return True


def _scenario(name: str, client: httpx.AsyncClient, base_url: str) -> Callable[[int], Awaitable[str]]:
    """The scenario as a function of the body size to fetch; it returns what the user would see."""
    from adapters.downloads import download_start
    from bot.attachments import AttachmentLimits, read_attachments
    from bot.config import ChatConfig
    from bot.events import Attachment, Downloaded

    limits = AttachmentLimits.from_config(ChatConfig())

    async def run(size: int) -> str:
        url = f"{base_url}/files/{size}"
        if name == "baseline":
            response = await client.get(url)
            response.raise_for_status()
            return f"read {len(response.content):,} bytes"

        async def download(limit: int) -> Downloaded:
            return await download_start(client, url, limit, timeout_s=60)

        declared = size if name == "image-declared" else None
        attachment = Attachment(
            "big.log" if name == "text" else "big.png", None, declared, name != "text", download
        )
        result = await read_attachments([attachment], limits, see_images=True)
        attached = len(result.attached or "")
        return f"attached {attached:,} characters; " + " ".join(result.notices)

    return run


async def _worker(name: str, base_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=60) as client:
        run = _scenario(name, client, base_url)
        await run(WARM_UP_BYTES)

        rss_before_kb = _status_kb("VmRSS")
        peak_reset = _reset_peak_rss()
        started = time.perf_counter()
        outcome = await run(BODY_BYTES)
        seconds = time.perf_counter() - started
        rss_peak_kb = _status_kb("VmHWM")

        tracemalloc.start()
        await run(BODY_BYTES)
        _, python_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return {
        "python_peak_bytes": python_peak,
        "rss_growth_bytes": max(0, rss_peak_kb - rss_before_kb) * 1024,
        "rss_before_bytes": rss_before_kb * 1024,
        "rss_peak_reset": peak_reset,
        "seconds": seconds,
        "outcome": outcome,
    }


# --- the driver: the server, and one process per scenario -------------------------------------------


class BodyServer:
    """`GET /files/{size}` streams `size` bytes; `sent` records what each request got to send."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/files/{size}", self._file)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _file(self, request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["size"])
        response = web.StreamResponse(headers={"Content-Length": str(size), "Content-Type": "text/plain"})
        sent = 0
        try:
            await response.prepare(request)
            while sent < size:
                chunk = _CHUNK[: size - sent]
                await response.write(chunk)
                sent += len(chunk)
        except ConnectionError:
            pass  # the client hung up: the bounded download stopped
        finally:
            self.sent.append(sent)
        return response


async def _run_worker(name: str, server: BodyServer) -> dict[str, Any]:
    first_request = len(server.sent)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.attachment_memory",
        "--worker",
        name,
        "--url",
        server.url,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=600)
    if process.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{stderr.decode()[-3000:]}")
    result: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    await asyncio.sleep(0.2)  # the server's handler notices the hang-up on its next write
    measured = [sent for sent in server.sent[first_request:] if sent != WARM_UP_BYTES]
    result["server_sent_bytes"] = max(measured, default=0)  # both passes fetch the same
    return result


async def _drive(rounds: int) -> dict[str, list[dict[str, Any]]]:
    server = BodyServer()
    await server.start()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in SCENARIOS}
    try:
        for number in range(rounds):
            for name in SCENARIOS[number % len(SCENARIOS) :] + SCENARIOS[: number % len(SCENARIOS)]:
                results[name].append(await _run_worker(name, server))
            print(f"round {number + 1} of {rounds} done", flush=True)
    finally:
        await server.stop()
    return results


def _mb(value: float) -> str:
    return f"{value / 1e6:.2f}"


def report(medians: dict[str, dict[str, Any]]) -> str:
    baseline = medians["baseline"]
    lines = [
        "| scenario | Python peak MB | RSS growth MB | server sent MB | seconds | Python peak vs baseline |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, figures in medians.items():
        share = figures["python_peak_bytes"] / baseline["python_peak_bytes"]
        lines.append(
            f"| {name} | {_mb(figures['python_peak_bytes'])} | {_mb(figures['rss_growth_bytes'])}"
            f" | {_mb(figures['server_sent_bytes'])} | {figures['seconds']:.3f} | {share:.1%} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.worker is not None:
        print(json.dumps(asyncio.run(_worker(args.worker, args.url))))
        return
    rounds = asyncio.run(_drive(args.rounds))
    numeric = ("python_peak_bytes", "rss_growth_bytes", "server_sent_bytes", "seconds")
    medians: dict[str, dict[str, Any]] = {
        name: {key: statistics.median(run[key] for run in runs) for key in numeric}
        | {"outcome": runs[0]["outcome"]}
        for name, runs in rounds.items()
    }
    print(report(medians))
    for name, figures in medians.items():
        print(f"{name}: {figures['outcome']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "what": "memory while one 50 MB attachment is read (bench/attachment_memory.py)",
        "body_bytes": BODY_BYTES,
        "python": platform.python_version(),
        "httpx": httpx.__version__,
        "rss_peak_reset": all(run["rss_peak_reset"] for runs in rounds.values() for run in runs),
        "rounds": rounds,
        "medians": medians,
    }
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
