"""`model.batching` as the local backend's scheduler takes it (no torch import here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BatchingSettings:
    """`max_batch`: rows generated together; `max_waiting`: requests queued beyond them before
    `BackendBusy`; `prefill_chunk_tokens`: prompt tokens encoded between two decode steps;
    `context_cache_bytes`: memory for per-channel KV caches kept between turns."""

    max_batch: int = 64
    max_waiting: int = 256
    prefill_chunk_tokens: int = 256
    context_cache_bytes: int = 1024 * 2**20
