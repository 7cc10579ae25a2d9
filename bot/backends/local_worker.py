"""The model side of `LocalBackend`: everything here runs on its single worker thread.

This module imports torch and transformers; `bot.backends.local` imports it only when the
backend starts, so the rest of `bot` stays importable without them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from bot.backends.base import GenerationReport, PreparedPrompt, finish_reason
from bot.backends.model_loading import LoadedModel
from bot.backends.stops import StopFilter
from bot.errors import BackendError, GenerationCancelled
from bot.ports import SamplingSettings

_DECODE_KW: dict[str, Any] = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}
"""How generated tokens become text, streamed or not (the two must agree)."""


@dataclass(slots=True)
class GenerationJob:
    """One `generate` call handed to the worker.

    `emit` is thread-safe and hands a text chunk to the event loop. Setting `cancel` (the
    consumer went away, timed out, or the backend stops) ends the generation at the next token.
    """

    prompt: PreparedPrompt
    settings: SamplingSettings
    cancel: threading.Event
    emit: Callable[[str], None]
    stop_seen: threading.Event = field(default_factory=threading.Event)
    done: Future[None] | None = None
    """Set by the batch scheduler when the job ends (the serial path uses the executor's future)."""
    report: GenerationReport = field(default_factory=GenerationReport)
    """Filled when the generation ends without an error: tokens and why it ended."""


def place_in_line(line: Iterable[GenerationJob], job: GenerationJob) -> int | None:
    """`job`'s 1-based place in `line` (jobs waiting for the model, oldest first), cancelled jobs
    not counted; None when it is not in the line or is cancelled itself."""
    place = 0
    for waiting in line:
        if waiting.cancel.is_set():
            continue
        place += 1
        if waiting is job:
            return place
    return None


class IncrementalDecoder:
    """Turns a growing list of token ids into text pieces as soon as they are final.

    Decodes a small window (the previous piece's tokens plus the new ones) and emits the
    difference, so word-piece tokenizers keep their spaces, and holds back text ending in an
    incomplete UTF-8 sequence (U+FFFD) until the next token completes it. The pieces concatenate
    to the decode of all ids (the scheme text-generation-inference uses).
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # start of the window: the tokens of the previous piece
        self._read = 0  # end of what has been emitted

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids), **_DECODE_KW))

    def push(self, ids: Sequence[int]) -> str:
        """Add new token ids; return the text that became final ("" if none yet)."""
        self._ids.extend(ids)
        before = self._decode(self._ids[self._prefix : self._read])
        now = self._decode(self._ids[self._prefix :])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return now[len(before) :]
        return ""

    def finish(self) -> str:
        """End of generation: whatever is still held back, even if incomplete."""
        before = self._decode(self._ids[self._prefix : self._read])
        now = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return now[len(before) :] if len(now) > len(before) else ""


class _Streamer(BaseStreamer):
    """Decodes tokens as `generate` produces them, applies the stop strings and emits the text.

    The first `put` is the prompt (decoder-only) or the decoder start token (seq2seq); skipped.
    """

    def __init__(self, tokenizer: Any, stops: StopFilter, job: GenerationJob) -> None:
        self._decoder = IncrementalDecoder(tokenizer)
        self._stops = stops
        self._job = job
        self._prompt_skipped = False
        self.generated = 0  # tokens generated (for the usage report)
        self.last_token: int | None = None

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_skipped:
            self._prompt_skipped = True
            return
        ids = value.reshape(-1).tolist()
        self.generated += len(ids)
        self.last_token = ids[-1] if ids else self.last_token
        if self._stops.stopped:
            return
        text = self._stops.feed(self._decoder.push(ids))
        if text:
            self._job.emit(text)
        if self._stops.stopped:
            self._job.stop_seen.set()  # `_EventStop` ends generate() at its next check

    def end(self) -> None:
        if self._stops.stopped:
            return
        text = self._stops.feed(self._decoder.finish()) + self._stops.flush()
        if text:
            self._job.emit(text)


class _EventStop(StoppingCriteria):
    """Stops generation once any of the events is set (checked after every token)."""

    def __init__(self, *events: threading.Event) -> None:
        self._events = events

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = any(e.is_set() for e in self._events)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def end_of_turn_ids(tokenizer: Any, chat_template: str | None) -> list[int]:
    """Special tokens that the chat template uses to end a turn (e.g. <|im_end|>, <|eot_id|>).

    Chat models end a reply with the template's end-of-turn token, which is not always the
    tokenizer's EOS. Heuristic: special/added tokens that occur in the template and whose text
    says "end" or "eot".
    """
    if not chat_template:
        return []
    found: list[int] = []
    vocab_added: dict[str, int] = dict(getattr(tokenizer, "get_added_vocab", dict)())
    for token, token_id in vocab_added.items():
        lowered = token.lower()
        if token in chat_template and ("end" in lowered or "eot" in lowered):
            found.append(int(token_id))
    return found


class ModelWorker:
    """Owns the model and its tokenizer (and an image-text-to-text model's processor); `generate`
    is only ever called on the worker thread."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        context_window: int,
        decoder_positions: int | None,
        extra_eos_ids: Sequence[int] = (),
    ) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.processor = loaded.processor
        self.is_encoder_decoder = loaded.is_encoder_decoder
        self.context_window = context_window
        self.decoder_positions = decoder_positions
        self.eos_ids = self._eos_ids(extra_eos_ids)
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(self.model.generation_config, "pad_token_id", None)
        self.pad_id: int | None = int(pad) if pad is not None else (self.eos_ids[0] if self.eos_ids else None)

    def _eos_ids(self, extra: Sequence[int]) -> list[int]:
        ids: list[int] = []
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(configured, int):
            ids.append(configured)
        elif configured:
            ids.extend(int(i) for i in configured)
        tokenizer_eos = getattr(self.tokenizer, "eos_token_id", None)
        if tokenizer_eos is not None:
            ids.append(int(tokenizer_eos))
        ids.extend(extra)
        return list(dict.fromkeys(ids))

    def input_ids(self, prompt: PreparedPrompt) -> list[int]:
        """The prompt's token ids (tokenised here when the prompt came without them)."""
        if prompt.token_ids:
            return list(prompt.token_ids)
        return list(self.tokenizer.encode(prompt.input_text, add_special_tokens=True))

    def model_inputs(self, prompt: PreparedPrompt) -> dict[str, Any]:
        """`generate`'s inputs: the prompt's token ids; for an image-text-to-text model, whatever
        its processor makes of the prompt's messages (or text) and images
        (`bot.backends.vision_inputs`)."""
        if self.processor is not None and (prompt.messages or prompt.images):
            from bot.backends.vision_inputs import model_inputs

            return model_inputs(self.processor, prompt, self.model.dtype)
        ids = self.input_ids(prompt)
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "attention_mask": torch.ones((1, len(ids)), dtype=torch.long),
        }

    def max_new_tokens(self, prompt_len: int, wanted: int) -> int:
        """`wanted`, capped by the room the window leaves. Raises `BackendError` when none."""
        if self.is_encoder_decoder:
            if prompt_len > self.context_window:
                raise BackendError(
                    f"the prompt has {prompt_len} tokens; the encoder takes at most {self.context_window}"
                )
            # The decoder has its own position limit (one position goes to the start token).
            limit = self.decoder_positions - 1 if self.decoder_positions else wanted
            return max(1, min(wanted, limit))
        room = self.context_window - prompt_len
        if room < 1:
            raise BackendError(
                f"the prompt has {prompt_len} tokens: no room left in the {self.context_window}-token window"
            )
        return min(wanted, room)

    def generate(self, job: GenerationJob) -> None:
        """Generate the reply to `job.prompt`, emitting text as it comes. Raises `BackendError`."""
        if job.cancel.is_set():  # the consumer gave up (or the channel was reset) while it waited
            raise GenerationCancelled("the generation was cancelled")
        settings = job.settings
        try:
            inputs = self.model_inputs(job.prompt)
            prompt_len = int(inputs["input_ids"].shape[-1])
            max_new = self.max_new_tokens(prompt_len, settings.max_new_tokens)
            stops = StopFilter((*settings.stop, *job.prompt.stop))
            streamer = _Streamer(self.tokenizer, stops, job)
            kwargs: dict[str, Any] = {
                **inputs,
                "max_new_tokens": max_new,
                "num_beams": 1,  # streaming needs one beam (BlenderBot's config asks for 10)
                "repetition_penalty": settings.repetition_penalty,
                "streamer": streamer,
                "stopping_criteria": StoppingCriteriaList([_EventStop(job.cancel, job.stop_seen)]),
                "eos_token_id": self.eos_ids or None,
                "pad_token_id": self.pad_id,
            }
            if settings.temperature > 0:
                kwargs.update(
                    do_sample=True,
                    temperature=settings.temperature,
                    top_k=settings.top_k,  # 0 = off, as in generate itself
                    top_p=settings.top_p,
                )
            else:
                kwargs.update(do_sample=False)
            with torch.inference_mode():
                self.model.generate(**kwargs)
            if job.cancel.is_set():  # stopped early: the text so far is not a reply
                raise GenerationCancelled("the generation was cancelled")
            ended = stops.stopped or streamer.last_token in self.eos_ids
            job.report.prompt_tokens, job.report.completion_tokens = prompt_len, streamer.generated
            job.report.finish_reason = finish_reason(streamer.generated, max_new, ended=ended)
        except BackendError:
            raise
        except (Exception, MemoryError) as exc:
            # Anything torch/transformers throws ends this generation only; the model stays usable.
            first_line = (str(exc).strip().splitlines() or [""])[0]
            raise BackendError(f"local generation failed: {type(exc).__name__}: {first_line}") from exc
