"""Per-channel KV caches kept between turns, so a channel's next prompt re-encodes only what is new.

Runs on the model worker thread only (no locking). Entries are the token ids a channel's last
generation processed and the key/value tensors for exactly those tokens, one `(keys, values)` pair
per layer, each `[1, kv_heads, tokens, head_dim]`. A lookup returns the longest common prefix of
the new prompt with the cached ids; the caller crops the tensors to it. The whole cache stays
under a byte budget, evicting the least recently used channel first.

This module imports torch; `bot.backends.local` imports it only on the worker thread.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bot.ports import within_channel

KeyValues = list[tuple[torch.Tensor, torch.Tensor]]
"""One `(keys, values)` pair per layer."""


@dataclass(slots=True)
class CachedContext:
    """What one channel's last generation left behind."""

    token_ids: tuple[int, ...]
    layers: KeyValues
    nbytes: int


@dataclass(frozen=True, slots=True)
class PrefixHit:
    """The cached key/values for the first `length` tokens of a new prompt."""

    length: int
    layers: KeyValues


def kv_nbytes(layers: KeyValues) -> int:
    """Memory held by `layers`."""
    return sum(k.element_size() * k.nelement() + v.element_size() * v.nelement() for k, v in layers)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class ContextCache:
    """Least-recently-used KV caches per channel key, within `budget_bytes` in all."""

    def __init__(self, budget_bytes: int, *, min_prefix: int = 8) -> None:
        self.budget_bytes = budget_bytes
        self.min_prefix = min_prefix  # a shorter match saves less than the bookkeeping costs
        self._entries: OrderedDict[str, CachedContext] = OrderedDict()
        self.used_bytes = 0
        self.hits = 0
        self.misses = 0
        self.reused_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def take(self, key: str, prompt_ids: Sequence[int]) -> PrefixHit | None:
        """Remove `key`'s entry and return the part of it that prefixes `prompt_ids`.

        The entry leaves the cache either way: the generation that follows extends it and puts
        it back with `put` (a channel runs one generation at a time). At least one prompt token
        is always left to encode: the model needs it to produce the next token's logits.
        """
        entry = self._entries.pop(key, None)
        if entry is None:
            self.misses += 1
            return None
        self.used_bytes -= entry.nbytes
        length = min(common_prefix(entry.token_ids, prompt_ids), len(prompt_ids) - 1)
        if length < self.min_prefix:
            self.misses += 1
            return None
        self.hits += 1
        self.reused_tokens += length
        if length == len(entry.token_ids):
            return PrefixHit(length, entry.layers)
        return PrefixHit(length, [(k[:, :, :length, :], v[:, :, :length, :]) for k, v in entry.layers])

    def put(self, key: str, token_ids: Sequence[int], layers: KeyValues) -> None:
        """Keep `layers` (the key/values of `token_ids`) for `key`, evicting older channels to stay
        within budget. An entry larger than the whole budget is not kept."""
        self.forget(key)
        nbytes = kv_nbytes(layers)
        if nbytes > self.budget_bytes or not token_ids:
            return
        while self._entries and self.used_bytes + nbytes > self.budget_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.used_bytes -= evicted.nbytes
        self._entries[key] = CachedContext(tuple(token_ids), layers, nbytes)
        self.used_bytes += nbytes

    def forget(self, key: str) -> None:
        """Drop `key`'s entry, if any."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.used_bytes -= entry.nbytes

    def forget_channel(self, channel_key: str) -> None:
        """Drop the entries of `channel_key` and of its members' conversations (`within_channel`)."""
        # A linear scan is fine: entries are whole KV caches, so the byte budget keeps them few
        # (hundreds, not the channels' count), and this runs once per /reset or /forget.
        for key in [key for key in self._entries if within_channel(key, channel_key)]:
            self.forget(key)

    def clear(self) -> None:
        """Drop everything."""
        self._entries.clear()
        self.used_bytes = 0
