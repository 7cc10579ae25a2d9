"""The seam between the engine and whatever produces text."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from bot.ports import Conversation, ImagePart, SamplingSettings
from bot.reply import FinishReason, Usage


@dataclass(frozen=True, slots=True)
class PromptMessage:
    """One message of a prompt sent as chat messages (see `PreparedPrompt.messages`)."""

    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class PreparedPrompt:
    """A conversation rendered for one model family and cut to fit its context window.

    It takes one of two shapes, as the backend's model reads it:

    - `input_text`, the whole input as one text, for a text-in, text-out model: a decoder-only
      model's prompt (the reply continues it), a seq2seq model's encoder input (the reply is
      decoded on its own), the prompt a tgi server gets; the echo backend's text to echo.
      `token_ids` are its tokens where the backend tokenizes locally (else empty).
    - `messages`, for servers that apply the chat template themselves (the openai backend);
      `input_text` is then empty.

    A local image-text-to-text model's prompt has both: the fitted text (and its tokens, without
    the images'), and the same `messages`, which its processor renders again with the images.

    `history_used` counts the earlier turns that made it into the prompt (the echo backend reports
    it); `message_cut` says the new message alone was too long and was shortened, which the engine
    tells the user. `context_key` is the conversation's. `stop` holds stop sequences the prompt
    format needs (e.g. "\\nUser:") on top of the configured ones.
    """

    input_text: str
    history_used: int
    message_cut: bool = False
    token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = field(default_factory=tuple)
    context_key: str | None = None
    messages: tuple[PromptMessage, ...] = ()
    images: tuple[ImagePart, ...] = ()
    """The new message's images (`Conversation.images`), for a backend that sees them: they go
    with the last user message (OpenAI content parts; the local processor's image inputs)."""


class Backend(Protocol):
    """Something that turns a conversation into a stream of reply text.

    `prepare` is cheap and synchronous-safe to call on the event loop for short prompts; heavy work
    (the model) runs off the loop inside `generate`. `generate` yields text chunks as they are
    produced; cancelling the iteration (or closing it) stops the generation and frees its resources.
    """

    name: str

    async def start(self) -> None:
        """Load the model / open clients. Raises `ModelLoadError` or `BackendError`."""
        ...

    async def stop(self) -> None:
        """Release everything `start` acquired; safe to call twice or after a failed start."""
        ...

    async def prepare(self, conversation: Conversation, max_new_tokens: int) -> PreparedPrompt:
        """Render and truncate `conversation` for this backend's model."""
        ...

    def generate(self, prompt: PreparedPrompt, settings: SamplingSettings) -> AsyncGenerator[str, None]:
        """Stream the reply to `prompt`. Raises `BackendError` (or a subclass) on failure:
        `BackendBusy` when too many generations are queued, `GenerationCancelled` after `forget`."""
        ...

    def forget(self, channel_key: str) -> None:
        """The channel `channel_key` was reset (or a member forgotten in it): cancel the running
        generations of every conversation within it and drop whatever the backend keeps for
        them, i.e. of every context key for which `bot.ports.within_channel(key, channel_key)`
        holds: the channel's own and each member's (`member_context_key`) in member mode.
        Non-blocking; a no-op for stateless backends."""
        ...


@dataclass(slots=True)
class GenerationReport:
    """What one generation used and why it ended, filled by a `UsageReporting` backend.

    The backend writes it while it generates; the reader looks only after the stream ended
    without an error. A field the backend cannot tell stays None. Tokens are the model's own
    (local backends: the prompt's `token_ids` and every token generated, the end-of-turn token
    included); the echo backend's are its words (see bot/backends/echo.py); remote backends
    report what the server says.
    """

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: FinishReason | None = None

    def usage(self) -> Usage | None:
        """The token counts, when both are known."""
        if self.prompt_tokens is None or self.completion_tokens is None:
            return None
        return Usage(self.prompt_tokens, self.completion_tokens)


def finish_reason(generated: int, limit: int, *, ended: bool) -> FinishReason:
    """ "length" when `limit` tokens were generated and the model did not end the reply itself
    (`ended`: an end-of-turn token or a stop sequence came), else "stop"."""
    return "length" if generated >= limit and not ended else "stop"


@runtime_checkable
class UsageReporting(Protocol):
    """A backend that reports a generation's token counts and finish reason."""

    def generate_reporting(
        self, prompt: PreparedPrompt, settings: SamplingSettings, report: GenerationReport
    ) -> AsyncGenerator[str, None]:
        """`generate`, filling `report` by the time the stream ends."""
        ...


def reporting_stream(
    backend: Backend, prompt: PreparedPrompt, settings: SamplingSettings, report: GenerationReport
) -> AsyncGenerator[str, None]:
    """`backend`'s reply stream; `report` gets filled when the backend is `UsageReporting` and
    stays empty (all None) otherwise."""
    if isinstance(backend, UsageReporting):
        return backend.generate_reporting(prompt, settings, report)
    return backend.generate(prompt, settings)


@runtime_checkable
class SeesImages(Protocol):
    """A backend that may answer images: the openai backend with `model.vision: true`, the local
    backend running an image-text-to-text model."""

    def sees_images(self) -> bool:
        """True when this backend's model reads the images of a conversation (after `start`)."""
        ...


def sees_images(backend: Backend) -> bool:
    """Whether `backend` answers images; a backend that never does is told so by the engine."""
    return isinstance(backend, SeesImages) and backend.sees_images()


@runtime_checkable
class Pingable(Protocol):
    """A backend that can tell whether its model is reachable (for the web server's /readyz)."""

    async def ping(self) -> bool:
        """True when the model can answer now. Short and never raises: False on any failure."""
        ...


@runtime_checkable
class ContextDropping(Protocol):
    """A backend that keeps model state per conversation (the local model's cached contexts)."""

    def drop_contexts(self, channel_key: str) -> None:
        """Forget what is kept for `channel_key` and its members' conversations (their messages
        were deleted: `/forget`), without cancelling any generation. Non-blocking."""
        ...


def context_dropper(backend: Backend) -> Callable[[str], None]:
    """`backend.drop_contexts` where it keeps per-conversation state; else a no-op."""
    if isinstance(backend, ContextDropping):
        return backend.drop_contexts
    return lambda channel_key: None


@runtime_checkable
class QueueReporting(Protocol):
    """A backend with a queue of its own in front of the model (the local backend's batch
    scheduler), reported as a metrics gauge."""

    def queue_depth(self) -> int:
        """Requests waiting for or in the model right now; 0 when the queue is not running."""
        ...


@runtime_checkable
class QueuePositions(Protocol):
    """A backend whose generations can wait in a queue in front of the model (the local one,
    batching or not), that can tell where a given generation stands in it."""

    def queue_position(self, prompt: PreparedPrompt) -> int | None:
        """The 1-based place (1: next) among the requests waiting for the model of the
        generation streaming the reply to `prompt` (this very object, as given to `generate`);
        None before it is queued, once it runs, after it ended, or when not known. Cheap and
        safe to call on the event loop while the model works on its own thread."""
        ...


async def backend_ready(backend: Backend) -> bool:
    """Whether `backend` can answer now: its `ping()` when it has one, else True (a backend
    without a remote part is ready once started)."""
    if isinstance(backend, Pingable):
        return await backend.ping()
    return True
