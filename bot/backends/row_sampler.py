"""One batch row's choice of its next token, as `generate` makes it (see bot.backends.batching)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from bot.ports import SamplingSettings


class RowSampler:
    """Picks one row's next token from its logits as `generate` would for the same settings:
    repetition penalty, then greedy, or temperature, top-k and top-p before sampling.

    The processors, their parameters and their order are those of transformers'
    `GenerationMixin._get_logits_processor` (checked against it in tests/backends/test_sampling.py):
    the top-k cut matters, since without it the long tail of byte and emoji tokens that top-p
    alone lets through shows up as junk in sampled replies.
    """

    def __init__(self, settings: SamplingSettings, capacity: int) -> None:
        """`capacity`: the most tokens the row will hold (prompt + new tokens)."""
        self._penalty = (
            RepetitionPenaltyLogitsProcessor(settings.repetition_penalty)
            if settings.repetition_penalty != 1.0
            else None
        )
        self._greedy = settings.temperature <= 0
        self._warpers: list[Any] = []
        if not self._greedy:
            if settings.temperature != 1.0:
                self._warpers.append(TemperatureLogitsWarper(settings.temperature))
            if settings.top_k != 0:
                self._warpers.append(TopKLogitsWarper(settings.top_k))
            if settings.top_p < 1.0:
                self._warpers.append(TopPLogitsWarper(settings.top_p))
        # The row's tokens as a tensor, filled as they come: rebuilding it from the whole list at
        # every step cost more than the penalty itself once prompts run to a thousand tokens.
        self._seen = torch.empty((1, capacity), dtype=torch.long) if self.needs_ids else None
        self._seen_count = 0

    @property
    def plain_greedy(self) -> bool:
        """Greedy without a penalty: the argmax of the logits, which the batch takes for all such
        rows at once."""
        return self._greedy and not self.needs_ids

    @property
    def processors(self) -> list[Any]:
        """The logits processors applied before the choice, in order (for tests and tools)."""
        return ([self._penalty] if self._penalty is not None else []) + list(self._warpers)

    @property
    def needs_ids(self) -> bool:
        return self._penalty is not None or bool(self._warpers)

    def next_token(self, logits: torch.Tensor, ids: Sequence[int]) -> int:
        """`logits`: `[vocab]` for this row; `ids`: every token of the row so far (it only grows)."""
        scores = logits.unsqueeze(0).float()
        if self._seen is not None:
            if len(ids) > self._seen.shape[1]:  # cannot happen: capacity covers prompt + max_new
                self._seen = torch.tensor([list(ids)], dtype=torch.long)
            elif len(ids) > self._seen_count:
                self._seen[0, self._seen_count : len(ids)] = torch.tensor(ids[self._seen_count :])
            self._seen_count = len(ids)
            seen = self._seen[:, : len(ids)]
            if self._penalty is not None:
                scores = self._penalty(seen, scores)
            for warper in self._warpers:
                scores = warper(seen, scores)
        if self._greedy:
            return int(scores.argmax(dim=-1).item())
        probabilities = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probabilities, num_samples=1).item())
