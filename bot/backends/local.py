"""The local transformers model as a `Backend`: one worker thread owns the model.

Concurrent `generate` calls on one model are unsafe, so every torch call (loading too) runs on a
single dedicated thread; generations queue there in call order. The event loop only moves text:
the worker hands decoded chunks over with `loop.call_soon_threadsafe`. Prompt rendering and
tokenisation run on the default thread pool instead, so they never wait behind a generation.

Images: when `path` is an image-text-to-text model (`bot.backends.model_loading`), the backend
sees images. Its prompts are fitted with the processor's chat template (`ProcessorChatFormat`:
the text's tokens, plus `tokens_per_image` for each image, measured at start), and the worker has
the processor render them again with the images (`bot.backends.vision_inputs`). Such a model
runs one generation at a time, outside the batch scheduler, text-only conversations included:
the scheduler's per-channel cached contexts are token ids, which an image's pixel values are
not, and one path keeps a conversation's replies alike whether or not a message had an image.

This module does not import torch: `bot.backends.local_worker` (which does) is imported on the
worker thread when the backend starts.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.backends.base import Backend, GenerationReport, PreparedPrompt
from bot.backends.model_loading import LoadedModel, ModelSource, load_model, resolve_model_source
from bot.backends.vision_prompt import ProcessorChatFormat
from bot.errors import BackendError, ConfigError, GenerationTimeout, ModelLoadError
from bot.ports import MEMBER_SEPARATOR, Conversation, SamplingSettings, Turn, within_channel
from bot.prompts import FORMAT_NAMES, PromptFormat, resolve_format, unknown_format

if TYPE_CHECKING:
    from bot.backends.batching import BatchScheduler
    from bot.backends.batching_settings import BatchingSettings
    from bot.backends.local_worker import GenerationJob, ModelWorker

logger = logging.getLogger("bot.backends.local")

_UNBOUNDED = 1_000_000  # tokenizers report "no limit" as a huge model_max_length


@dataclass(slots=True)
class _Running:
    """What `start` built; dropped by `stop`."""

    executor: ThreadPoolExecutor
    worker: ModelWorker
    prompt_format: PromptFormat  # with its own tokenizer copy: tokenizers are not thread-safe
    context_window: int  # decoder-only: prompt + reply; seq2seq: the encoder input
    is_encoder_decoder: bool
    scheduler: BatchScheduler | None  # None: one `generate` call per job, in call order
    scheduler_thread: threading.Thread | None = None
    sees_images: bool = False  # an image-text-to-text model
    image_tokens: int = 0  # what one image is counted as when fitting a prompt (`tokens_per_image`)


_ANCHORS_KEPT = 100_000  # conversations whose history cut point is remembered (a few hundred bytes each)


class _Anchors:
    """Per context key, the first kept history turns of its last prompt (see
    `LocalBackend._keep_from`): the `limit` most recently used keys.

    Indexed by channel as well: a channel in member mode has one key per member, and forgetting
    the channel must find them all without scanning up to `limit` keys on the event loop. A
    channel key never holds `MEMBER_SEPARATOR`, so a key's channel is what precedes the first one.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._turns: OrderedDict[str, tuple[Turn, ...]] = OrderedDict()
        self._members: dict[str, set[str]] = {}  # channel key -> its member keys held here

    def __len__(self) -> int:
        return len(self._turns)

    def __contains__(self, key: str) -> bool:
        return key in self._turns

    def get(self, key: str) -> tuple[Turn, ...] | None:
        return self._turns.get(key)

    def put(self, key: str, turns: tuple[Turn, ...]) -> None:
        self._turns[key] = turns
        self._turns.move_to_end(key)
        channel, separator, _ = key.partition(MEMBER_SEPARATOR)
        if separator:
            self._members.setdefault(channel, set()).add(key)
        while len(self._turns) > self._limit:
            self._drop(next(iter(self._turns)))

    def forget_channel(self, channel_key: str) -> None:
        """Drop the keys of `channel_key` and of its members' conversations (`within_channel`)."""
        self._drop(channel_key)
        for key in list(self._members.get(channel_key, ())):
            self._drop(key)

    def clear(self) -> None:
        self._turns.clear()
        self._members.clear()

    def _drop(self, key: str) -> None:
        self._turns.pop(key, None)
        channel, separator, _ = key.partition(MEMBER_SEPARATOR)
        members = self._members.get(channel) if separator else None
        if members is not None:
            members.discard(key)
            if not members:
                del self._members[channel]


class LocalBackend:
    """A transformers model in this process (see the module docstring).

    `path`: `bundled:smollm2`, a Hugging Face model directory, or a `.gguf` file (converted once
    and cached under `cache_dir`). `prompt_format`: one of `bot.prompts.FORMAT_NAMES`.
    `context_window` caps the model's own maximum positions. `generation_timeout_s` bounds one
    `generate` call from its first chunk request to its end, including time spent queued behind
    other generations. `threads` sets torch's (process-wide) intra-op thread count; `dtype` the weights'
    number format (float32, bfloat16, or auto: bfloat16 where the CPU has native support).
    `batching` (None: off) runs decoder-only models through `BatchScheduler`: every pending
    generation advances together, and each channel's processed context is reused next turn.
    `truncation_slack`: when a channel's history outgrows the window, that fraction of the window
    more is dropped, and the cut then stays put while the history grows back into the room, so
    the cached context keeps matching the prompt's start. An image-text-to-text model sees
    images and never batches (see the module docstring).
    """

    name = "local"

    def __init__(
        self,
        path: str,
        *,
        cache_dir: Path,
        prompt_format: str = "auto",
        context_window: int | None = None,
        generation_timeout_s: float = 120.0,
        threads: int | None = None,
        dtype: str = "float32",
        batching: BatchingSettings | None = None,
        truncation_slack: float = 0.0,
    ) -> None:
        if prompt_format not in FORMAT_NAMES:
            raise unknown_format(prompt_format)
        if context_window is not None and context_window < 16:
            raise ConfigError(f"model.context_window: must be at least 16 tokens, got {context_window}")
        if generation_timeout_s <= 0:
            raise ConfigError(f"model.generation_timeout_s: must be positive, got {generation_timeout_s}")
        if threads is not None and threads < 1:
            raise ConfigError(f"model.threads: must be at least 1, got {threads}")
        self._path = path
        self._cache_dir = Path(cache_dir)
        self._format_name = prompt_format
        self._context_window = context_window
        self._timeout = generation_timeout_s
        if dtype not in {"auto", "float32", "bfloat16"}:
            raise ConfigError(f"model.dtype: expected auto, float32 or bfloat16, got {dtype!r}")
        self._threads = threads
        self._dtype = dtype
        self._batching = batching
        self._slack = truncation_slack
        self._running: _Running | None = None
        self._prepare_lock = threading.Lock()
        self._active: dict[threading.Event, str | None] = {}  # cancel flag -> context key
        # id of a streaming generation's prompt -> its job (read on the event loop only).
        self._jobs: dict[int, GenerationJob] = {}
        # Without the batch scheduler: jobs handed to the worker thread that have not started, in
        # order (the worker takes them off as it starts each one, under `_line_lock`).
        self._line: list[GenerationJob] = []
        self._line_lock = threading.Lock()
        # context key -> the first kept history turns of its last prompt (see `_keep_from`).
        self._anchors = _Anchors(_ANCHORS_KEPT)
        self.load_origin: str | None = None
        """After `start`: "directory", "gguf-cache" or "gguf-converted"."""
        self.load_seconds: float | None = None
        """After `start`: how long loading the model took."""
        self.dtype: str | None = None
        """After `start`: the weights' number format in use."""

    @property
    def prompt_format(self) -> str:
        """The prompt format in use (resolved from "auto" once started)."""
        return self._running.prompt_format.name if self._running else self._format_name

    def sees_images(self) -> bool:
        """See `SeesImages`: True once an image-text-to-text model is loaded."""
        return self._running is not None and self._running.sees_images

    @property
    def scheduler(self) -> BatchScheduler | None:
        """The batch scheduler when batching runs (after `start`), else None."""
        return self._running.scheduler if self._running else None

    def queue_depth(self) -> int:
        """See `QueueReporting`: the batch scheduler's depth (0 without batching or before `start`)."""
        scheduler = self.scheduler
        return scheduler.depth if scheduler is not None else 0

    def queue_position(self, prompt: PreparedPrompt) -> int | None:
        """See `QueuePositions`: the place of `prompt`'s generation among those waiting for a
        place in the batch, or (without batching) for the worker thread, behind the one it runs."""
        job = self._jobs.get(id(prompt))
        running = self._running
        if job is None or job.prompt is not prompt or running is None:
            return None
        if running.scheduler is not None:
            return running.scheduler.position(job)
        from bot.backends.local_worker import place_in_line  # imported by start() already

        with self._line_lock:
            return place_in_line(self._line, job)

    def _submit(self, running: _Running, job: GenerationJob) -> Future[None]:
        """Hand `job` to the batch scheduler, or else queue it for the worker thread (in line);
        the future ends with it. Raises `BackendBusy` when the scheduler's queue is full,
        `BackendError` when the model was stopped meanwhile."""
        if running.scheduler is not None:
            future: Future[None] = Future()
            job.done = future
            running.scheduler.submit(job)
            return future
        with self._line_lock:
            self._line.append(job)
        try:
            return running.executor.submit(self._run_in_line, running.worker, job)
        except RuntimeError as exc:  # shut down by a concurrent stop()
            raise BackendError("the local model is stopped") from exc

    def _run_in_line(self, worker: ModelWorker, job: GenerationJob) -> None:
        """The worker thread's side of one job without batching: it leaves the line, then runs."""
        self._leave_line(job)
        worker.generate(job)

    def _leave_line(self, job: GenerationJob) -> None:
        with self._line_lock:
            self._line[:] = [waiting for waiting in self._line if waiting is not job]

    @property
    def context_window(self) -> int | None:
        """Tokens the prompt and reply share (encoder input for seq2seq); None before `start`."""
        return self._running.context_window if self._running else None

    async def start(self) -> None:
        """Load the model on the worker thread. Raises `ModelLoadError`; a no-op when started."""
        if self._running is not None:
            return
        source = resolve_model_source(self._path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chinwag-model")
        try:
            running = await asyncio.wrap_future(executor.submit(self._load_on_worker, source, executor))
        except BaseException:
            # Failed or cancelled: a load still running finishes on its own thread and is dropped.
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        if running.scheduler is not None:
            # From now on the scheduler's loop owns the model (the worker thread stays idle), on a
            # daemon thread: a process that exits without `stop` must not hang on the loop.
            running.scheduler_thread = threading.Thread(
                target=running.scheduler.run, name="chinwag-model-batch", daemon=True
            )
            running.scheduler_thread.start()
        self._running = running

    def _load_on_worker(self, source: ModelSource, executor: ThreadPoolExecutor) -> _Running:
        try:
            return self._load(source, executor)
        except BackendError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"could not prepare model {self._path!r}: {exc!r}") from exc

    def _load(self, source: ModelSource, executor: ThreadPoolExecutor) -> _Running:
        """Runs on the worker thread."""
        try:
            import torch

            from bot.backends.dtype_choice import bfloat16_pays_off
            from bot.backends.local_worker import ModelWorker, end_of_turn_ids
        except ImportError as exc:
            raise ModelLoadError(
                f"the local backend needs torch and transformers ({exc}); install chinwag[local]"
            ) from exc
        if self._threads is not None:
            torch.set_num_threads(self._threads)
        loaded = load_model(source, self._cache_dir)
        text_config = loaded.text_config
        if self._dtype == "bfloat16" or (self._dtype == "auto" and bfloat16_pays_off(text_config)):
            loaded.model.to(torch.bfloat16)
        self.dtype = str(loaded.model.dtype).removeprefix("torch.")
        prompt_format = self._prompt_format_for(loaded)
        positions = _max_positions(text_config, loaded.tokenizer)
        limits = [n for n in (self._context_window, positions) if n]
        window = min(limits) if limits else 2048  # a model that states no limit: a safe guess
        template = getattr(
            loaded.processor if isinstance(prompt_format, ProcessorChatFormat) else loaded.tokenizer,
            "chat_template",
            None,
        )
        extra_eos = (
            end_of_turn_ids(loaded.tokenizer, _template_text(template))
            if prompt_format.name == "chat_template"
            else []
        )
        worker = ModelWorker(
            loaded,
            context_window=window,
            decoder_positions=positions if loaded.is_encoder_decoder else None,
            extra_eos_ids=extra_eos,
        )
        image_tokens = 0
        if loaded.sees_images:
            from bot.backends.vision_inputs import tokens_per_image

            image_tokens = tokens_per_image(
                loaded.processor, chat=isinstance(prompt_format, ProcessorChatFormat)
            )
            if self._batching is not None:
                logger.info("batching is on, but an image-text-to-text model runs one generation at a time")
        scheduler = None if loaded.sees_images else self._scheduler_for(worker)
        self.load_origin, self.load_seconds = loaded.origin, loaded.seconds
        logger.info(
            "model ready: %s, %s prompt format, %d-token %s, eos ids %s, %s%s",
            self.dtype,
            prompt_format.name,
            window,
            "encoder window" if loaded.is_encoder_decoder else "context window",
            worker.eos_ids,
            "continuous batching" if scheduler else "one generation at a time",
            f", sees images ({image_tokens} tokens each)" if loaded.sees_images else "",
        )
        return _Running(
            executor,
            worker,
            prompt_format,
            window,
            loaded.is_encoder_decoder,
            scheduler,
            sees_images=loaded.sees_images,
            image_tokens=image_tokens,
        )

    def _prompt_format_for(self, loaded: LoadedModel) -> PromptFormat:
        """The prompt format, with its own tokenizer (or processor) copy: the worker decodes while
        prompts are tokenised. An image-text-to-text model whose processor has a chat template is
        prompted with that (`auto` or `chat_template`); anything else as `resolve_format` says."""
        try:
            if (
                loaded.sees_images
                and self._format_name in ("auto", "chat_template")
                and getattr(loaded.processor, "chat_template", None)
            ):
                return ProcessorChatFormat(copy.deepcopy(loaded.processor))
            return resolve_format(
                self._format_name,
                copy.deepcopy(loaded.tokenizer),
                loaded.is_encoder_decoder,
                model_name=f"{self._path} {getattr(loaded.model.config, 'name_or_path', '')}",
            )
        except ConfigError as exc:
            raise ModelLoadError(str(exc)) from exc

    def _scheduler_for(self, worker: ModelWorker) -> BatchScheduler | None:
        """Runs on the worker thread (imports torch)."""
        if self._batching is None:
            return None
        from bot.backends.batching import BatchScheduler, supports_batching

        if not supports_batching(worker.model):
            logger.info("batching is on, but this model's cache cannot be batched: one generation at a time")
            return None
        return BatchScheduler(worker, self._batching)

    async def stop(self) -> None:
        """Cancel running generations, shut the worker down and drop the model. Idempotent."""
        running, self._running = self._running, None
        if running is None:
            return
        for cancel in list(self._active):
            cancel.set()
        if running.scheduler is not None:
            running.scheduler.stop()
        self._anchors.clear()
        # Waits for the current generation to notice the cancel (one token step).
        await asyncio.to_thread(running.executor.shutdown, wait=True, cancel_futures=True)
        if running.scheduler_thread is not None:
            await asyncio.to_thread(running.scheduler_thread.join)

    async def ping(self) -> bool:
        """Ready once the model is loaded (nothing remote to ask)."""
        return self._running is not None

    def _require_running(self) -> _Running:
        if self._running is None:
            raise BackendError("the local model is not started")
        return self._running

    async def prepare(self, conversation: Conversation, max_new_tokens: int) -> PreparedPrompt:
        """Render `conversation` with the model's prompt format, fitting the context window.

        Decoder-only models: the prompt gets `context_window - max_new_tokens` tokens, but never
        less than half the window (the reply is then capped by the room left instead).
        Seq2seq models: the encoder input gets the encoder's window; the reply is separate.
        """
        running = self._require_running()
        if running.is_encoder_decoder:
            budget = running.context_window
        else:
            budget = running.context_window - min(max(0, max_new_tokens), running.context_window // 2)
        images = conversation.images if running.sees_images else ()
        # The images' tokens come on top of the text's; they take at most half the room, so the
        # text keeps some (a prompt that still does not fit is refused by the worker).
        budget -= min(len(images) * running.image_tokens, budget // 2)
        prepared = await asyncio.to_thread(self._render, running, conversation, budget)
        return replace(prepared, images=images)

    def _render(self, running: _Running, conversation: Conversation, budget: int) -> PreparedPrompt:
        key = conversation.context_key
        reuse = key is not None and running.scheduler is not None
        with self._prepare_lock:
            prepared = running.prompt_format.render(
                conversation,
                budget,
                keep_from=self._keep_from(key, conversation.history) if reuse and key is not None else None,
                slack=self._slack if reuse else 0.0,
            )
            if reuse and key is not None:
                history = conversation.history
                first = len(history) - prepared.history_used
                self._anchors.put(key, tuple(history[first : first + 2]))
        return replace(prepared, context_key=key)

    def _keep_from(self, key: str, history: Sequence[Turn]) -> int | None:
        """Where the channel's previous prompt started its history, if those turns are still in
        `history` (oldest match): starting there again keeps the cached context valid."""
        anchor = self._anchors.get(key)
        if not anchor:
            return None
        size = len(anchor)
        for start in range(len(history) - size + 1):
            if tuple(history[start : start + size]) == anchor:
                return start
        return None

    def count_tokens(self, text: str) -> int:
        """How many tokens `text` is for this model (for reports; needs `start`)."""
        running = self._require_running()
        with self._prepare_lock:
            return len(running.prompt_format.tokenizer.encode(text, add_special_tokens=False))

    def forget(self, channel_key: str) -> None:
        """Cancel the generations (queued or running) of `channel_key` and of its members'
        conversations (every context key `within_channel` of it), and drop their cached contexts."""
        # A linear scan: `_active` holds the generations in flight, a bounded handful.
        for cancel, key in list(self._active.items()):
            if key is not None and within_channel(key, channel_key):
                cancel.set()
        with self._prepare_lock:
            self._anchors.forget_channel(channel_key)
        running = self._running
        if running is not None and running.scheduler is not None:
            running.scheduler.forget(channel_key)

    def drop_contexts(self, channel_key: str) -> None:
        """See `ContextDropping`: forget what is cached for the channel and its members, cancelling
        nothing."""
        with self._prepare_lock:
            self._anchors.forget_channel(channel_key)
        running = self._running
        if running is not None and running.scheduler is not None:
            running.scheduler.drop_contexts(channel_key)

    def generate_reporting(
        self, prompt: PreparedPrompt, settings: SamplingSettings, report: GenerationReport
    ) -> AsyncGenerator[str, None]:
        """See `UsageReporting`: `generate`, filling `report` (the prompt's tokens, the tokens
        generated, "length" when `max_new_tokens` or the window's room ended the reply)."""
        return self.generate(prompt, settings, report)

    async def generate(
        self, prompt: PreparedPrompt, settings: SamplingSettings, report: GenerationReport | None = None
    ) -> AsyncGenerator[str, None]:
        """Stream the reply to `prompt` as decoded text chunks.

        Stops at EOS (and the chat template's end-of-turn token), `max_new_tokens` (capped by the
        context window) or the first stop string (`settings.stop` + `prompt.stop`, never
        emitted). Closing the iterator or cancelling its task stops the model within one token.
        Raises `GenerationTimeout` after `generation_timeout_s`, `BackendError` on model errors;
        the backend stays usable either way.
        """
        running = self._require_running()
        from bot.backends.local_worker import GenerationJob  # already imported by start()

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        queue: asyncio.Queue[str | Future[None]] = asyncio.Queue()
        cancel = threading.Event()

        def push(item: str | Future[None]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                cancel.set()

        job = GenerationJob(
            prompt=prompt,
            settings=settings,
            cancel=cancel,
            emit=push,
            report=report if report is not None else GenerationReport(),
        )
        self._active[cancel] = prompt.context_key
        self._jobs[id(prompt)] = job
        try:
            future = self._submit(running, job)
            # Runs after the last emit (same thread, same FIFO), also when cancelled while queued.
            future.add_done_callback(push)
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        item = await queue.get()
                except TimeoutError:
                    raise GenerationTimeout(f"generation took longer than {self._timeout:g} s") from None
                if isinstance(item, str):
                    yield item
                    continue
                if item.cancelled():
                    raise BackendError("the local model was stopped during generation")
                error = item.exception()
                if error is None:
                    return
                if isinstance(error, BackendError):
                    raise error
                raise BackendError(f"local generation failed: {error!r}") from error
        finally:
            cancel.set()  # the worker stops at its next token; a queued job never starts
            self._active.pop(cancel, None)
            if self._jobs.get(id(prompt)) is job:
                del self._jobs[id(prompt)]
            self._leave_line(job)  # when it never started (cancelled while queued, or shut down)


if TYPE_CHECKING:

    def _conforms(backend: LocalBackend) -> Backend:
        return backend  # mypy checks LocalBackend against the Backend protocol here


def _template_text(template: Any) -> str | None:
    """A chat template as one text: a processor may hold several, by name."""
    if isinstance(template, dict):
        return "\n".join(str(text) for text in template.values())
    return template if isinstance(template, str) else None


def _max_positions(config: Any, tokenizer: Any) -> int | None:
    """The model's own maximum sequence length, from its config (or its tokenizer)."""
    for attr in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < _UNBOUNDED:
        return limit
    return None
