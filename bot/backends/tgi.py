"""Hugging Face Text Generation Inference's native `generate_stream` as a `Backend`, through
`huggingface_hub.AsyncInferenceClient.text_generation(..., stream=True)`.

The prompt is the TGI/Falcon tutorial's plain ``System:/User:/Assistant:`` text, fitted to the
context window in characters (`bot.backends.remote_prompt`), and generation stops at "\\nUser:" so
the reply never runs on into the next turn. Stop sequences are sent to the server and applied here
as well: TGI includes the stop text in the streamed tokens.

TGI rejects `temperature: 0`, a `top_p` outside (0, 1) and a `top_k` of 0: greedy decoding
(temperature 0) is sent as `do_sample: false` with none of them, and a `top_p` of 1 or a `top_k`
of 0 (no cut) is left out.

Images: this backend does not see them. `generate_stream` takes one text prompt (TGI's own image
syntax, markdown image links inside `inputs`, is left unused), so the prompt carries only the
`[image: NAME]` placeholders and the engine tells the user the model cannot see the images; use
the openai backend on TGI's messages API with `model.vision: true` for a vision model.

`AsyncInferenceClient` keeps every streamed response open in its own exit stack until the client
is closed, so one long-lived client would pile up responses (and hold the pooled connection of
any stream not read to its end, e.g. after a stop sequence). Each generation therefore uses its
own small client object, closed when the generation ends, over one shared HTTP connection pool.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, cast

from bot.backends.base import GenerationReport, PreparedPrompt
from bot.backends.remote_prompt import PLAIN_STOP, budget_chars, fit_conversation, render_plain
from bot.backends.remote_retry import (
    ChannelCancels,
    Failure,
    RetryPolicy,
    http_status_failure,
    redact_url,
    remote_reply,
)
from bot.errors import (
    BackendError,
    BackendStreamBroken,
    BackendUnavailable,
    ConfigError,
    ModelLoadError,
)
from bot.ports import Conversation, SamplingSettings

if TYPE_CHECKING:
    import httpx2
    from huggingface_hub import TextGenerationStreamOutputStreamDetails

logger = logging.getLogger(__name__)

PROMPT_FORMATS = ("auto", "plain")
"""`model.prompt_format` values this backend can render without the model's tokenizer."""
NO_KEY = "chinwag-no-key"
"""Sent as the token when none is configured: given None, huggingface_hub would send this
machine's own Hugging Face token (HF_TOKEN or the cached login) to whatever server base_url names."""


class TGIBackend:
    """Streams replies from TGI's `/generate_stream` at `base_url` (see the module docstring).

    `api_key` is sent as the bearer token when set. `context_window` (tokens; None: no cut here)
    bounds the prompt. `connect_timeout_s` bounds connecting, `read_timeout_s` the wait for each
    piece of the stream (the first token included). `ping_timeout_s` bounds `ping`.
    """

    name = "tgi"

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None = None,
        prompt_format: str = "auto",
        context_window: int | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        ping_timeout_s: float = 2.0,
    ) -> None:
        if prompt_format not in PROMPT_FORMATS:
            raise ConfigError(
                f"model.prompt_format: the tgi backend renders prompts without the model's tokenizer; "
                f"use plain (or auto), not {prompt_format!r}"
            )
        self._base_url = base_url.rstrip("/")
        self._where = f"TGI server {redact_url(base_url)}"
        self._api_key = api_key
        self._context_window = context_window
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._retry = retry or RetryPolicy()
        self._cancels = ChannelCancels()
        self._ping_timeout_s = ping_timeout_s
        self._http: httpx2.AsyncClient | None = None
        self._timeout: httpx2.Timeout | None = None

    async def start(self) -> None:
        """Open the shared connection pool. The server being down is no error here: the bot
        comes up and replies "not reachable" until the server is back."""
        if self._http is not None:
            return
        try:
            import httpx2
            import huggingface_hub  # noqa: F401  # fail at start, not at the first message
        except ImportError as exc:
            raise ModelLoadError(
                f"the tgi backend needs the huggingface_hub package ({exc}); install chinwag[remote]"
            ) from exc
        self._timeout = httpx2.Timeout(
            self._read_timeout_s, connect=self._connect_timeout_s, pool=self._connect_timeout_s
        )
        self._http = httpx2.AsyncClient(timeout=self._timeout)
        if not await self.ping():
            logger.warning("%s is not reachable yet; replies will say so until it is", self._where)

    async def stop(self) -> None:
        """Close the connection pool. Idempotent."""
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    async def ping(self) -> bool:
        """GET {base_url}/health within `ping_timeout_s`: True on a 2xx answer."""
        if self._http is None:
            return False
        try:
            response = await self._http.get(
                f"{self._base_url}/health", headers=self._auth_headers(), timeout=self._ping_timeout_s
            )
        except Exception as exc:
            logger.debug("%s: ping failed: %s", self._where, type(exc).__name__)
            return False
        return response.is_success

    def forget(self, channel_key: str) -> None:
        """Stop the running generations of `channel_key` and of its members' conversations;
        nothing else is kept per channel."""
        self._cancels.cancel(channel_key)

    async def prepare(self, conversation: Conversation, max_new_tokens: int) -> PreparedPrompt:
        """The plain prompt, fitted to the context window in characters, with the "\\nUser:" stop."""
        fitted = fit_conversation(conversation, budget_chars(self._context_window, max_new_tokens))
        return PreparedPrompt(
            input_text=render_plain(fitted),
            history_used=len(fitted.history),
            message_cut=fitted.message_cut,
            stop=(PLAIN_STOP,),
            context_key=conversation.context_key,
        )

    def generate_reporting(
        self, prompt: PreparedPrompt, settings: SamplingSettings, report: GenerationReport
    ) -> AsyncGenerator[str, None]:
        """See `UsageReporting`: the token counts and finish reason of the stream's last event
        (its `details`)."""
        return self.generate(prompt, settings, report)

    async def generate(
        self, prompt: PreparedPrompt, settings: SamplingSettings, report: GenerationReport | None = None
    ) -> AsyncGenerator[str, None]:
        """Stream the reply, cut at the first stop sequence. Raises `BackendUnavailable`,
        `BackendRejected`, `BackendStreamBroken` (see `bot.backends.remote_retry`)."""
        http = self._http
        if http is None:
            raise BackendError("the tgi backend is not started")
        from huggingface_hub import AsyncInferenceClient

        stops = tuple(dict.fromkeys((*settings.stop, *prompt.stop)))
        greedy = settings.temperature == 0
        parameters: dict[str, Any] = {
            "max_new_tokens": settings.max_new_tokens,
            "do_sample": not greedy,
            "temperature": None if greedy else settings.temperature,
            "top_p": None if greedy or settings.top_p >= 1.0 else settings.top_p,
            "top_k": None if greedy or settings.top_k == 0 else settings.top_k,
            "repetition_penalty": settings.repetition_penalty,
            "stop": list(stops),
            "return_full_text": False,
        }

        async def attempt() -> AsyncIterator[str]:
            client = AsyncInferenceClient(
                model=self._base_url,
                token=self._api_key or NO_KEY,
                # A Timeout object (connect and read apart) where a float is annotated: the client
                # hands it to httpx2 unchanged, which takes either.
                timeout=cast(float, self._timeout),
            )
            client._async_client = http  # the shared pool; see the module docstring
            async with client:
                stream = await client.text_generation(
                    prompt.input_text, stream=True, details=True, **parameters
                )
                async for output in stream:
                    if report is not None and output.details is not None:
                        _note_usage(output.details, report)
                    if not output.token.special:
                        yield output.token.text

        reply = remote_reply(
            attempt,
            self._classify,
            self._retry,
            what=self._where,
            stops=stops,
            cancels=self._cancels,
            context_key=prompt.context_key,
        )
        async with aclosing(reply):
            async for text in reply:
                yield text

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _classify(self, exc: Exception) -> Failure:
        """huggingface_hub's and httpx2's exceptions as `Failure`s. Messages carry the status and
        the exception type only: a server's error body may echo the token."""
        import httpx2
        from huggingface_hub.errors import (
            HfHubHTTPError,
            InferenceTimeoutError,
            OverloadedError,
            TextGenerationError,
        )

        where = self._where
        if isinstance(exc, InferenceTimeoutError | httpx2.TimeoutException):
            return Failure(BackendUnavailable(f"{where}: timed out"), transient=True)
        if isinstance(exc, OverloadedError):
            return Failure(BackendUnavailable(f"{where}: overloaded"), transient=True)
        response = _response_of(exc)
        if response is not None:
            return http_status_failure(where, response.status_code, response.headers.get("retry-after"), exc)
        if isinstance(exc, TextGenerationError):  # an error event inside the stream
            broken = BackendStreamBroken(f"{where}: reported a {type(exc).__name__} in the stream")
            return Failure(broken, transient=False)
        if isinstance(exc, httpx2.TransportError | HfHubHTTPError):
            return Failure(BackendUnavailable(f"{where}: cannot connect or connection lost"), transient=True)
        if isinstance(exc, json.JSONDecodeError | ValueError | TypeError | AttributeError | LookupError):
            broken = BackendStreamBroken(f"{where}: sent data that is not a generate_stream event")
            return Failure(broken, transient=False)
        return Failure(BackendError(f"{where}: unexpected {type(exc).__name__}"), transient=False)


def _response_of(exc: BaseException) -> httpx2.Response | None:
    """The HTTP response behind an error, also when huggingface_hub re-raised it as a
    `TextGenerationError` (its `__cause__` is then the HTTP error), or failed while handling it:
    for a 422 on a stream it reads `response.text` of the unread stream and raises httpx2's
    `ResponseNotRead` (its `__context__` is then the HTTP error)."""
    from huggingface_hub.errors import HfHubHTTPError

    for candidate in (exc, exc.__cause__, exc.__context__):
        if isinstance(candidate, HfHubHTTPError) and candidate.response is not None:
            return candidate.response
    return None


def _note_usage(details: TextGenerationStreamOutputStreamDetails, report: GenerationReport) -> None:
    """The server's counts from the last event's `details` (`input_length`: the prompt's tokens)."""
    report.prompt_tokens = details.input_length
    report.completion_tokens = details.generated_tokens
    report.finish_reason = "length" if details.finish_reason == "length" else "stop"
