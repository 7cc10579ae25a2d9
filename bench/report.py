"""Turns the benchmark's results into JSON, a printed table, a plot and the table in
docs/performance.md (between its `bench:begin` / `bench:end` markers)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if a and b else "–"


def _measured(value: float, template: str) -> str:
    """`value` formatted, or a dash where the workload does not measure it (the long-history
    phases time each reply, not a whole run's tokens/s or memory)."""
    return template.format(value) if value else "–"


def _rows(base: dict[str, Any], other: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    def label(n: str) -> str:
        return "1 channel, messages in turn" if n == "1" else f"{n} channels at once"

    rows = [(label(n), base["burst"][n], other["burst"][n]) for n in base["burst"]]
    rows.append((f"Poisson arrivals, {base['poisson']['rate_per_s']}/s", base["poisson"], other["poisson"]))
    rows.append(("long history, first turn (cold)", base["long_cold"], other["long_cold"]))
    rows.append(("long history, next turn (cached)", base["long_warm"], other["long_warm"]))
    return rows


def _comparison(base: dict[str, Any], other: dict[str, Any], name: str) -> list[str]:
    lines = [
        f"| workload | baseline tok/s | {name} tok/s | ratio | TTFT p50 baseline → {name} "
        f"| latency p50 / p99 baseline | latency p50 / p99 {name} | peak RSS baseline / {name} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, b, s in _rows(base, other):
        lines.append(
            f"| {label} | {_measured(b['tokens_per_s'], '{:.1f}')} "
            f"| {_measured(s['tokens_per_s'], '{:.1f}')} "
            f"| {_ratio(s['tokens_per_s'], b['tokens_per_s'])} "
            f"| {b['ttft_p50_s']:.3f} s → {s['ttft_p50_s']:.3f} s "
            f"| {b['latency_p50_s']:.2f} / {b['latency_p99_s']:.2f} s "
            f"| {s['latency_p50_s']:.2f} / {s['latency_p99_s']:.2f} s "
            f"| {_measured(b['peak_rss_mb'], '{:.0f} MB')} / {_measured(s['peak_rss_mb'], '{:.0f} MB')} |"
        )
    return lines


def table(results: dict[str, Any]) -> str:
    """Markdown tables: each scheduler mode against the baseline, the echo overhead, the targets."""
    lines = [
        f"Commit `{results['commit']}`, run {results['started']}, bundled SmolLM2-135M (greedy, "
        f"{results['settings']['max_new_tokens']} new tokens at most), 2 CPU cores. Baseline: float32, "
        "`generate` per message, one at a time.",
    ]
    base = results.get("baseline")
    for mode, title in (
        ("scheduler", "scheduler, float32 (the default)"),
        ("scheduler-bf16", "scheduler, bfloat16"),
    ):
        if base and results.get(mode):
            lines += ["", f"**{title}**", "", *_comparison(base, results[mode], mode)]
    for key, setting in (("echo", "full, the default"), ("echo-normal", "normal")):
        if key not in results:
            continue
        echo = results[key]
        p50, p99 = (echo["sequential"][f"latency_{q}_s"] * 1000 for q in ("p50", "p99"))
        lines += [
            "",
            f"Framework overhead (echo backend, engine + SQLite, `storage.sqlite_synchronous: {setting}`): "
            f"per message p50 {p50:.2f} ms, p99 {p99:.2f} ms (one at a time); "
            f"{echo['messages_per_s']:.0f} messages/s (50 channels at once).",
        ]
    if base and results.get("scheduler"):
        lines += ["", "| target | measured: float32 scheduler (bfloat16) | met |", "|---|---|---|"]
        for name, value, ok in targets(results):
            lines.append(f"| {name} | {value} | {'yes' if ok else 'no'} |")
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Issue #4's targets: the measured value with the default (float32) scheduler, the
    bfloat16 one in brackets, and whether the default met it."""
    base, sched, echo = results["baseline"], results["scheduler"], results["echo"]
    bf16 = results.get("scheduler-bf16")

    def speedup(mode: dict[str, Any], channels: str) -> float:
        return float(mode["burst"][channels]["tokens_per_s"] / base["burst"][channels]["tokens_per_s"])

    out: list[tuple[str, str, bool]] = []
    for channels, wanted in (("16", 6.0), ("64", 10.0), ("1", 1.0)):
        if channels in base["burst"] and channels in sched["burst"]:
            ratio = speedup(sched, channels)
            extra = f" ({speedup(bf16, channels):.2f}×)" if bf16 and channels in bf16["burst"] else ""
            out.append(
                (
                    f"{channels} channel(s): tokens/s ≥ {wanted:g}× baseline",
                    f"{ratio:.2f}×{extra}",
                    ratio >= wanted,
                )
            )
    cached = sched["long_warm"]["ttft_p50_s"] / base["long_warm"]["ttft_p50_s"]
    out.append(
        (
            f"TTFT, ~{sched.get('history_tokens', '?')}-token history cached, ≤ 1/5 of re-encoding",
            f"{cached:.3f}× (1/{1 / cached:.1f})" if cached else "n/a",
            cached <= 0.2,
        )
    )
    single = sched["burst"].get("1", {}).get("tokens_per_s", 0.0)
    single_bf16 = bf16["burst"].get("1", {}).get("tokens_per_s", 0.0) if bf16 else 0.0
    out.append(("stretch: one stream ≥ 40 tokens/s", f"{single:.1f} ({single_bf16:.1f})", single >= 40))
    normal = results.get("echo-normal")

    def echo_figure(pick: Callable[[dict[str, Any]], float], template: str) -> str:
        """The default run's figure, and the `normal` run's in brackets."""
        text = template.format(pick(echo))
        return text if normal is None else f"{text} (normal: {template.format(pick(normal))})"

    def p50(run: dict[str, Any]) -> float:
        return float(run["sequential"]["latency_p50_s"] * 1000)

    def p99(run: dict[str, Any]) -> float:
        return float(run["sequential"]["latency_p99_s"] * 1000)

    def rate(run: dict[str, Any]) -> float:
        return float(run["messages_per_s"])

    out.append(("echo overhead p50 < 2 ms", echo_figure(p50, "{:.2f} ms"), p50(echo) < 2))
    out.append(("echo overhead p99 < 10 ms", echo_figure(p99, "{:.2f} ms"), p99(echo) < 10))
    out.append(("echo ≥ 500 messages/s", echo_figure(rate, "{:.0f}/s"), rate(echo) >= 500))
    return out


def plot(results: dict[str, Any], path: Path) -> bool:
    """Throughput and latency against concurrency, baseline and scheduler. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, style in (("baseline", "o--"), ("scheduler", "s-"), ("scheduler-bf16", "^-")):
        if mode not in results:
            continue
        bursts = results[mode]["burst"]
        xs = [int(n) for n in bursts]
        left.plot(xs, [bursts[n]["tokens_per_s"] for n in bursts], style, label=mode)
        right.plot(xs, [bursts[n]["latency_p50_s"] for n in bursts], style, label=f"{mode} p50")
        right.plot(xs, [bursts[n]["latency_p99_s"] for n in bursts], style, alpha=0.5, label=f"{mode} p99")
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("channels sending at once")
        axis.grid(True, alpha=0.3)
        axis.legend()
    left.set_ylabel("tokens/s (all replies together)")
    right.set_ylabel("seconds until the whole reply")
    right.set_yscale("log")
    fig.suptitle(f"Chinwag on 2 CPU cores, SmolLM2-135M, commit {results['commit']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(results: dict[str, Any], out: Path, docs: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    text = table(results)
    print("\n" + text)
    if "baseline" not in results:
        return
    if plot(results, docs / "performance.png"):
        print(f"\nplot: {docs / 'performance.png'}")
    page = docs / "performance.md"
    if page.exists():
        content = page.read_text(encoding="utf-8")
        if BEGIN in content and END in content:
            head, rest = content.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            page.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}", encoding="utf-8")
            print(f"table written to {page}")
