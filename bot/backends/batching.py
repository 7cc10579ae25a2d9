"""Continuous batching for decoder-only models: one loop on the model thread generates every
pending request together.

Why our own step loop: `model.generate` takes a fixed batch (a request arriving mid-way waits for
the whole batch), and transformers' continuous batching (`generate_batch`, paged attention) is
built for GPUs: on this 2-core CPU it gave ~32 tokens/s at 16 prompts where a padded batch gives
~120. The loop below keeps one left-padded `DynamicCache` for the running batch:

- a new request is prefilled on its own (in chunks of `prefill_chunk_tokens`, between decode steps,
  so running streams never stall for long), starting from its channel's cached prefix when the
  `ContextCache` has one, then its key/values are padded on the left and joined to the batch;
- every step feeds each running row its last token (one forward pass for the whole batch), picks
  each row's next token with its own sampling settings, and streams the decoded text to its
  request;
- a finished row (EOS, end-of-turn, stop string, `max_new_tokens`, cancelled) leaves the batch
  at once; its key/values go back to the channel's cache for the next turn.

Padding, per-row positions and the attention mask follow what `generate` does for a left-padded
batch, so greedy output matches `generate` token for token.

Everything here runs on the single model thread; `submit`, `forget`, `stop`, `position` and the
counters are the only parts other threads touch, under `_lock`.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from bot.backends.base import finish_reason
from bot.backends.batching_settings import BatchingSettings
from bot.backends.context_cache import ContextCache, KeyValues, PrefixHit
from bot.backends.local_worker import GenerationJob, IncrementalDecoder, ModelWorker, place_in_line
from bot.backends.row_sampler import RowSampler
from bot.backends.stops import StopFilter
from bot.errors import BackendBusy, BackendError, GenerationCancelled
from bot.ports import within_channel

logger = logging.getLogger("bot.backends.batching")

# Prompt tokens (padding included) encoded in one round while no row decodes. Bounded because the
# attention of a padded group grows with rows × width²: 2048 keeps it to a few hundred MB.
_IDLE_PREFILL_TOKENS = 2048


@dataclass(slots=True)
class _Request:
    """One generation from submission to its end."""

    job: GenerationJob
    prompt_ids: list[int]
    max_new: int
    sampler: RowSampler
    decoder: IncrementalDecoder
    stops: StopFilter
    submitted: float = field(default_factory=time.perf_counter)
    # prefill state
    encoded: int = 0  # prompt tokens whose key/values exist
    cache: DynamicCache | None = None
    reused: int = 0  # prompt tokens taken from the channel's cache
    # decode state
    ids: list[int] = field(default_factory=list)  # prompt + generated tokens
    generated: int = 0
    finished: bool = False

    @property
    def key(self) -> str | None:
        return self.job.prompt.context_key

    @property
    def last_token(self) -> int:
        return self.ids[-1]

    @property
    def position(self) -> int:
        """Position of the token fed next (the last one produced)."""
        return len(self.ids) - 1


class _Batch:
    """The running rows and their shared, left-padded key/value cache and attention mask."""

    def __init__(self) -> None:
        self.rows: list[_Request] = []
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros((0, 0), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def of(cls, rows: list[_Request], cache: DynamicCache, mask: torch.Tensor) -> _Batch:
        """Rows just prefilled together (`mask`: `[rows, tokens]`, 0 for left padding)."""
        batch = cls()
        batch.rows, batch.cache, batch.mask = rows, cache, mask
        return batch

    def join(self, other: _Batch) -> None:
        """Add `other`'s rows: pad the shorter side on the left, stack along the batch."""
        if not other.rows:
            return
        if self.cache is None or not self.rows:
            self.rows, self.cache, self.mask = other.rows, other.cache, other.mask
            return
        assert other.cache is not None
        target = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(_layers(self.cache), _layers(other.cache), strict=True):
            assert mine.keys is not None and mine.values is not None
            assert theirs.keys is not None and theirs.values is not None
            mine.keys = torch.cat([_pad_left(mine.keys, target), _pad_left(theirs.keys, target)])
            mine.values = torch.cat([_pad_left(mine.values, target), _pad_left(theirs.values, target)])
        self.mask = torch.cat([_pad_mask_left(self.mask, target), _pad_mask_left(other.mask, target)])
        self.rows = [*self.rows, *other.rows]

    def row_key_values(self, index: int) -> KeyValues:
        """Row `index`'s own key/values (padding dropped), copied out of the batch tensors."""
        assert self.cache is not None
        start = int((self.mask[index] == 0).sum().item())
        out: KeyValues = []
        for layer in _layers(self.cache):
            assert layer.keys is not None and layer.values is not None
            out.append(
                (
                    layer.keys[index : index + 1, :, start:, :].clone(),
                    layer.values[index : index + 1, :, start:, :].clone(),
                )
            )
        return out

    def keep(self, indices: list[int]) -> None:
        """Keep only these rows; drop the columns that are padding in every remaining row."""
        if not indices:
            self.rows, self.cache = [], None
            self.mask = torch.zeros((0, 0), dtype=torch.long)
            return
        assert self.cache is not None
        self.rows = [self.rows[i] for i in indices]
        select = torch.tensor(indices, dtype=torch.long)
        mask = self.mask.index_select(0, select)
        start = int((mask == 0).all(dim=0).long().cumprod(dim=0).sum().item())
        self.mask = mask[:, start:]
        for layer in _layers(self.cache):
            assert layer.keys is not None and layer.values is not None
            layer.keys = layer.keys.index_select(0, select)[:, :, start:, :]
            layer.values = layer.values.index_select(0, select)[:, :, start:, :]


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The cache's layers: plain `DynamicLayer`s for every model `supports_batching` accepts."""
    return cast(list[DynamicLayer], cache.layers)


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """`[batch, heads, length, dim]` padded with zeros on the left of `length` up to `width`."""
    missing = width - tensor.shape[2]
    if missing <= 0:
        return tensor
    pad = tensor.new_zeros((tensor.shape[0], tensor.shape[1], missing, tensor.shape[3]))
    return torch.cat([pad, tensor], dim=2)


def _pad_mask_left(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    if missing <= 0:
        return mask
    return torch.cat([mask.new_zeros((mask.shape[0], missing)), mask], dim=1)


def cache_keyword(model: Any) -> str:
    """The keyword `model.forward` takes its key/value cache by.

    transformers 5 renamed `past_key_values` to `cache` and warns (a FutureWarning, printed in
    the middle of the terminal chat) on every call that still uses the old name; the versions
    before the rename know only `past_key_values`. The signature tells which one this model has.
    """
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def supports_batching(model: Any) -> bool:
    """Whether this model's cache is plain `DynamicLayer`s (no sliding windows, no recurrent
    state): the only kind the batch surgery above knows how to pad, join and split."""
    if getattr(model.config, "is_encoder_decoder", False):
        return False
    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # a config the cache cannot read: stay on the proven path
        return False
    return bool(_layers(cache)) and all(type(layer) is DynamicLayer for layer in _layers(cache))


class BatchScheduler:
    """Generates every submitted job together (see the module docstring).

    `submit` raises `BackendBusy` when `max_batch + max_waiting` jobs are already in; `run` is
    the model thread's loop, until `stop`.
    """

    def __init__(self, worker: ModelWorker, settings: BatchingSettings) -> None:
        self._worker = worker
        self._model = worker.model
        self._cache_kw = cache_keyword(worker.model)
        self._settings = settings
        self._eos = set(worker.eos_ids)
        self._lock = threading.Condition()
        self._waiting: deque[GenerationJob] = deque()
        self._forget: set[str] = set()
        self._stopping = False
        self._prefilling: list[_Request] = []
        self._batch = _Batch()
        self.contexts = ContextCache(settings.context_cache_bytes)
        self.steps = 0  # decode steps run
        self.rows_stepped = 0  # tokens produced by decode steps (rows summed over steps)
        self.peak_batch = 0  # most rows one decode step has run
        self.grouped_prefills = 0  # forward passes that encoded several new prompts at once

    # --- any thread --------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Jobs waiting, being prefilled or generating."""
        with self._lock:
            return len(self._waiting) + len(self._prefilling) + len(self._batch)

    def position(self, job: GenerationJob) -> int | None:
        """`job`'s 1-based place among the jobs waiting for a place in the batch (cancelled ones
        do not count); None when it is not waiting (admitted, ended, never submitted). The
        order is the submission order that `_admit` follows; a job whose channel generates
        already may be passed by others (fairness), so the place is the usual one, not a promise."""
        with self._lock:
            return place_in_line(self._waiting, job)

    def submit(self, job: GenerationJob) -> None:
        """Queue `job`; its text goes to `job.emit`, its end to `job.done`. Raises `BackendBusy`
        when the queue is full, `BackendError` when stopped."""
        with self._lock:
            if self._stopping:
                raise BackendError("the local model is stopped")
            in_flight = len(self._waiting) + len(self._prefilling) + len(self._batch)
            if in_flight >= self._settings.max_batch + self._settings.max_waiting:
                raise BackendBusy(f"{in_flight} generations are already queued or running")
            self._waiting.append(job)
            self._lock.notify()

    def forget(self, channel_key: str) -> None:
        """Cancel the generations of `channel_key` and of its members' conversations
        (`within_channel`) and drop their cached contexts (at the next step)."""
        with self._lock:
            self._forget.add(channel_key)
            # A linear scan: at most max_batch + max_waiting jobs are in.
            for job in [*self._waiting, *(r.job for r in (*self._prefilling, *self._batch.rows))]:
                key = job.prompt.context_key
                if key is not None and within_channel(key, channel_key):
                    job.cancel.set()
            self._lock.notify()

    def drop_contexts(self, channel_key: str) -> None:
        """Drop the cached contexts of `channel_key` and its members (at the next step) without
        cancelling anything: `/forget` of one member must not cut the others' replies."""
        with self._lock:
            self._forget.add(channel_key)
            self._lock.notify()

    def stop(self) -> None:
        """End `run` after the current step; unfinished jobs end with an error."""
        with self._lock:
            self._stopping = True
            for job in [*self._waiting, *(r.job for r in (*self._prefilling, *self._batch.rows))]:
                job.cancel.set()
            self._lock.notify()

    # --- the model thread ------------------------------------------------------------------

    def _request(self, job: GenerationJob) -> _Request:
        """Raises `BackendError` for a prompt that leaves no room in the context window."""
        ids = self._worker.input_ids(job.prompt)
        max_new = self._worker.max_new_tokens(len(ids), job.settings.max_new_tokens)
        return _Request(
            job=job,
            prompt_ids=ids,
            max_new=max_new,
            sampler=RowSampler(job.settings, len(ids) + max_new),
            decoder=IncrementalDecoder(self._worker.tokenizer),
            stops=StopFilter((*job.settings.stop, *job.prompt.stop)),
        )

    def run(self) -> None:
        """The model thread's loop: admit, prefill a chunk, run one decode step; repeat."""
        try:
            while self._next_round():
                with torch.inference_mode():
                    try:
                        self._prefill_chunk()
                        if self._batch.rows:
                            self._decode_step()
                    except (Exception, MemoryError) as exc:
                        self._fail_everything(exc)
        finally:
            self._end_everything()

    def _next_round(self) -> bool:
        """Wait for work; take new jobs in; apply `forget`. False once stopping."""
        with self._lock:
            while not self._has_work():
                self._lock.wait()
            if self._stopping:
                return False
            forget, self._forget = self._forget, set()
            cancelled = [job for job in self._waiting if job.cancel.is_set()]
            for job in cancelled:
                self._waiting.remove(job)
            room = self._settings.max_batch - len(self._batch) - len(self._prefilling)
            admitted = self._admit(room)
        for channel_key in forget:
            self.contexts.forget_channel(channel_key)
        for job in cancelled:
            _resolve(job, GenerationCancelled("the generation was cancelled"))
        for job in admitted:
            try:
                self._prefilling.append(self._request(job))
            except BackendError as error:
                _resolve(job, error)
            except Exception as exc:  # the tokenizer choked on the prompt text
                _resolve(job, _generation_error(exc))
        self._drop_cancelled()
        return True

    def _has_work(self) -> bool:
        return bool(self._stopping or self._waiting or self._prefilling or self._batch.rows or self._forget)

    def _admit(self, room: int) -> list[GenerationJob]:
        """Up to `room` waiting jobs, oldest first, but a channel that already generates waits
        behind the others (fairness: one busy channel cannot fill the batch). Under `_lock`."""
        busy = {r.key for r in (*self._prefilling, *self._batch.rows) if r.key is not None}
        taken: list[GenerationJob] = []
        for job in self._waiting:
            if len(taken) >= room:
                break
            key = job.prompt.context_key
            if key is not None and key in busy:
                continue
            taken.append(job)
            if key is not None:
                busy.add(key)
        for job in taken:
            self._waiting.remove(job)
        return taken

    def _drop_cancelled(self) -> None:
        for request in [r for r in self._prefilling if r.job.cancel.is_set()]:
            self._prefilling.remove(request)
            self._end(request)
        rows = self._batch.rows
        cancelled = [i for i, r in enumerate(rows) if r.job.cancel.is_set()]
        if cancelled:
            self._batch.keep([i for i in range(len(rows)) if i not in cancelled])
            for i in cancelled:
                self._end(rows[i])

    def _prefill_chunk(self) -> None:
        """Encode up to `prefill_chunk_tokens` prompt tokens, oldest requests first, then let the
        requests whose prompt is done join the batch. New conversations (nothing cached) are
        encoded several at once, left-padded like the batch; a request with a cached prefix
        continues from it alone. A request the model fails on (a bad prompt) ends alone.

        With nothing decoding there is no stream to keep flowing, so the budget grows to
        `_IDLE_PREFILL_TOKENS`: a burst of new conversations is encoded in one or two passes and
        then decodes together, instead of starting in small groups that add decode steps."""
        budget = self._settings.prefill_chunk_tokens
        if not self._batch.rows:
            budget = max(budget, _IDLE_PREFILL_TOKENS)
        while self._prefilling and budget > 0:
            group = self._fresh_group(budget)
            try:
                if len(group) > 1:
                    tokens, cache, mask = self._prefill_together(group)
                    budget -= tokens
                    self._finish_prefill(group, _Batch.of(group, cache, mask))
                    continue
                request = self._prefilling[0]
                budget -= self._prefill(request, budget)
            except (Exception, MemoryError) as exc:
                failed = group if len(group) > 1 else [self._prefilling[0]]
                for request in failed:
                    self._prefilling.remove(request)
                    self._end(request, _generation_error(exc))
                continue
            if request.encoded < len(request.prompt_ids):
                continue
            assert request.cache is not None
            self._finish_prefill(
                [request],
                _Batch.of([request], request.cache, torch.ones((1, request.encoded), dtype=torch.long)),
            )

    def _fresh_group(self, budget: int) -> list[_Request]:
        """The oldest prefilling requests that start from nothing (no cached prefix, not begun)
        and fit in `budget` tokens once padded to the longest of them."""
        group: list[_Request] = []
        longest = 0
        for request in self._prefilling:
            fresh = request.cache is None and (request.key is None or request.key not in self.contexts)
            if not fresh:
                break
            longest_then = max(longest, len(request.prompt_ids))
            if group and longest_then * (len(group) + 1) > budget:
                break
            group.append(request)
            longest = longest_then
        return group

    def _prefill_together(self, group: list[_Request]) -> tuple[int, DynamicCache, torch.Tensor]:
        """Encode the prompts of `group` in one forward pass (left-padded); pick each one's first
        token. Returns the tokens encoded (padding included), the cache and its mask."""
        width = max(len(r.prompt_ids) for r in group)
        pad = self._worker.pad_id or 0
        ids = torch.tensor(
            [[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in group], dtype=torch.long
        )
        mask = torch.tensor(
            [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in group], dtype=torch.long
        )
        # Padding gets position 1, as `generate` gives it; the mask hides it anyway.
        positions = (mask.cumsum(dim=1) - 1).masked_fill(mask == 0, 1)
        cache = DynamicCache(config=self._model.config)
        output = self._model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            **{self._cache_kw: cache},
            use_cache=True,
            logits_to_keep=1,
        )
        self.grouped_prefills += 1
        for i, request in enumerate(group):
            request.encoded = len(request.prompt_ids)
            request.ids = list(request.prompt_ids)
            self._accept(request, request.sampler.next_token(output.logits[i, -1], request.ids))
        return ids.numel(), cache, mask

    def _finish_prefill(self, requests: list[_Request], prefilled: _Batch) -> None:
        """`requests` (the rows of `prefilled`) are encoded: those done already (one token was
        all they needed) end, the others join the running batch."""
        for request in requests:
            self._prefilling.remove(request)
            request.cache = None
        done = [i for i, r in enumerate(requests) if r.finished]
        kept = {i: prefilled.row_key_values(i) for i in done if requests[i].key is not None}
        prefilled.keep([i for i in range(len(requests)) if i not in done])
        for i in done:
            self._end(requests[i], key_values=kept.get(i))
        self._batch.join(prefilled)

    def _prefill(self, request: _Request, budget: int) -> int:
        """Encode the next (at most `budget`) prompt tokens of `request`; after the last one, pick
        its first token. Returns the number of tokens encoded."""
        if request.cache is None:
            self._start_prefill(request)
        assert request.cache is not None
        start = request.encoded
        end = min(len(request.prompt_ids), start + max(budget, 1))
        output = self._model(
            input_ids=torch.tensor([request.prompt_ids[start:end]], dtype=torch.long),
            attention_mask=torch.ones((1, end), dtype=torch.long),
            position_ids=torch.arange(start, end, dtype=torch.long).unsqueeze(0),
            **{self._cache_kw: request.cache},
            use_cache=True,
            logits_to_keep=1,  # only the last position's logits are needed: skips most of lm_head
        )
        request.encoded = end
        if end == len(request.prompt_ids):
            request.ids = list(request.prompt_ids)
            self._accept(request, request.sampler.next_token(output.logits[0, -1], request.ids))
        return end - start

    def _start_prefill(self, request: _Request) -> None:
        hit: PrefixHit | None = None
        if request.key is not None:
            hit = self.contexts.take(request.key, request.prompt_ids)
        if hit is None:
            request.cache = DynamicCache(config=self._model.config)
            return
        # The tensors left the context cache with `take`: this request owns them now.
        request.cache = DynamicCache(ddp_cache_data=hit.layers)
        request.encoded = request.reused = hit.length

    def _decode_step(self) -> None:
        batch = self._batch
        assert batch.cache is not None
        rows = batch.rows
        mask = torch.cat([batch.mask, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
        output = self._model(
            input_ids=torch.tensor([[r.last_token] for r in rows], dtype=torch.long),
            attention_mask=mask,
            position_ids=torch.tensor([[r.position] for r in rows], dtype=torch.long),
            **{self._cache_kw: batch.cache},
            use_cache=True,
        )
        batch.mask = mask
        self.steps += 1
        self.rows_stepped += len(rows)
        self.peak_batch = max(self.peak_batch, len(rows))
        logits = output.logits[:, -1, :]
        # One argmax for the whole batch serves every plain greedy row (one op instead of one per row).
        argmax = logits.argmax(dim=-1).tolist()
        done: list[int] = []
        for i, request in enumerate(rows):
            sampler = request.sampler
            token = argmax[i] if sampler.plain_greedy else sampler.next_token(logits[i], request.ids)
            self._accept(request, token)
            if request.finished:
                done.append(i)
        if done:
            kept = {i: batch.row_key_values(i) for i in done if rows[i].key is not None}
            batch.keep([i for i in range(len(rows)) if i not in done])  # before anyone hears of the end
            for i in done:
                self._end(rows[i], key_values=kept.get(i))

    def _accept(self, request: _Request, token: int) -> None:
        """Record a produced token: stream its text; decide whether the request is finished."""
        request.ids.append(token)
        request.generated += 1
        job = request.job
        if token in self._eos:
            request.finished = True
            return
        text = request.stops.feed(request.decoder.push([token]))
        if text:
            job.emit(text)
        if request.stops.stopped or request.generated >= request.max_new or job.cancel.is_set():
            request.finished = True

    def _end(
        self,
        request: _Request,
        error: BaseException | None = None,
        *,
        key_values: KeyValues | None = None,
    ) -> None:
        """Finish a request: flush its text, keep its context for the channel's next turn, resolve
        its future. A cancelled request (consumer gone, `/reset`, shutdown) keeps nothing."""
        job = request.job
        if error is None and job.cancel.is_set():
            error = GenerationCancelled("the generation was cancelled")
        if error is None:
            if not request.stops.stopped:
                tail = request.stops.feed(request.decoder.finish()) + request.stops.flush()
                if tail:
                    job.emit(tail)
            ended = request.stops.stopped or (request.generated > 0 and request.last_token in self._eos)
            job.report.prompt_tokens = len(request.prompt_ids)
            job.report.completion_tokens = request.generated
            job.report.finish_reason = finish_reason(request.generated, request.max_new, ended=ended)
            if request.key is not None and key_values is not None:
                # The last token was produced but never fed: the cache covers all ids but it.
                self.contexts.put(request.key, request.ids[:-1], key_values)
        _resolve(job, error)

    def _fail_everything(self, exc: BaseException) -> None:
        """A decode step failed: every running row ends with the error (their shared cache is in
        an unknown state); waiting requests go on."""
        error = _generation_error(exc)
        logger.error("batched generation failed: %s", error, exc_info=exc)
        for request in [*self._prefilling, *self._batch.rows]:
            _resolve(request.job, error)
            if request.key is not None:
                self.contexts.forget(request.key)
        self._prefilling.clear()
        self._batch = _Batch()

    def _end_everything(self) -> None:
        stopped = BackendError("the local model was stopped during generation")
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        for job in [*waiting, *(r.job for r in (*self._prefilling, *self._batch.rows))]:
            _resolve(job, stopped)
        self._prefilling.clear()
        self._batch = _Batch()
        self.contexts.clear()


def _resolve(job: GenerationJob, error: BaseException | None) -> None:
    """Complete `job.done` (once): the consumer's stream ends, or raises `error`."""
    if job.done is None or job.done.done():
        return
    if error is None:
        job.done.set_result(None)
    else:
        job.done.set_exception(error)


def _generation_error(exc: BaseException) -> BackendError:
    """What the consumer sees when torch/transformers fail: one line, the cause attached."""
    first_line = (str(exc).strip().splitlines() or [""])[0]
    error = BackendError(f"local generation failed: {type(exc).__name__}: {first_line}")
    error.__cause__ = exc
    return error
