"""`model.dtype: auto`: bfloat16 weights only where this CPU runs them faster — measured, because
the CPU flags alone mislead.

On an Intel CPU with AMX, bfloat16 roughly doubled SmolLM2's speed; on an AMD EPYC that reports
AVX512-BF16 too, one stream ran at 9.4 tok/s in bfloat16 against 14.0 in float32 (`make bench`,
2026-12-06): its matrix-vector products in bfloat16 take a slow path. So `auto` times the model's
own matrix shapes once at start-up (a few tens of milliseconds) for one row (a single stream) and
for a batch, and picks bfloat16 only when it wins both by a clear margin.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

Timer = Callable[[int, int, int, torch.dtype], float]
"""(rows, in_features, out_features, dtype) -> seconds for one product of that shape."""

# bfloat16 must be at least this much faster: it also changes greedy wording, not worth it for less.
_MARGIN = 1.2
_ROWS = (1, 16)  # one stream; a typical batch


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU claims native bfloat16 arithmetic (x86 AVX512-BF16 or AMX). Without it
    bfloat16 is always slower; with it, it may be (see the module docstring)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as info:
            flags = next((line for line in info if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def time_linear(rows: int, in_features: int, out_features: int, dtype: torch.dtype) -> float:
    """Best of three timings of `rows` × `in_features` by an `out_features` weight, per product."""
    inputs = torch.randn(rows, in_features, dtype=dtype)
    weight = torch.randn(out_features, in_features, dtype=dtype)
    repeats = 10
    with torch.inference_mode():
        torch.nn.functional.linear(inputs, weight)  # first call: kernel selection, allocation
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(repeats):
                torch.nn.functional.linear(inputs, weight)
            best = min(best, (time.perf_counter() - started) / repeats)
    return best


def bfloat16_is_faster(in_features: int, out_features: int, *, timer: Timer = time_linear) -> bool:
    """True when a product of this shape runs at least `_MARGIN` times faster in bfloat16 than in
    float32, both for one row and for a batch of rows."""
    for rows in _ROWS:
        float32 = timer(rows, in_features, out_features, torch.float32)
        bfloat16 = timer(rows, in_features, out_features, torch.bfloat16)
        if float32 < _MARGIN * bfloat16:
            return False
    return True


def bfloat16_pays_off(config: Any, cpuinfo: str = "/proc/cpuinfo") -> bool:
    """`model.dtype: auto` for a model with this config: the CPU must claim bfloat16 support and
    the model's MLP shape (hidden size × intermediate size) must run faster in it."""
    if not cpu_has_native_bf16(cpuinfo):
        return False
    hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", None) or 768
    inner = getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None) or 4 * hidden
    return bfloat16_is_faster(int(hidden), int(inner))
