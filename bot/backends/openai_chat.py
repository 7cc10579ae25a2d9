"""Any OpenAI-compatible chat-completions server as a `Backend` (vLLM, TGI's messages API,
llama.cpp server, Ollama, LM Studio), through the official `openai` package.

The server applies its model's chat template, so the conversation goes as messages: the system
prompt as the system message, the history in order, the new message last. There is no tokenizer
here: the history is fitted to `context_window` counted in characters (`bot.backends.remote_prompt`).
The client's own retries are off (`max_retries=0`): `bot.backends.remote_retry` retries only
before the first token, which the client cannot know about a stream.

Sampling sends what the chat-completions API defines: `temperature`, `top_p`, `max_tokens`,
`stop`. `top_k` and `repetition_penalty` are not part of that API: vLLM and llama.cpp accept
them as extra fields, but OpenAI's own service rejects a request carrying an unknown argument
(400), so they are not sent and the server applies its own defaults (vLLM, for one, takes them
from the model's generation config).

Images: with `vision=True` (`model.vision: true`; the server's model must see images: llava on
Ollama, Qwen2-VL on vLLM) the new message's images go with the last user message as OpenAI
content parts, the text part first, then one `image_url` part per image carrying a `data:` URL;
every other message stays a plain string. Without it no image is sent (servers without vision
reject the parts or ignore them) and `sees_images()` says so, for the engine to tell the user.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING

from bot.backends.base import GenerationReport, PreparedPrompt, PromptMessage
from bot.backends.remote_prompt import budget_chars, fit_conversation
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
    ModelLoadError,
)
from bot.ports import Conversation, ImagePart, SamplingSettings

if TYPE_CHECKING:
    from openai import AsyncOpenAI
    from openai.types.chat import (
        ChatCompletionChunk,
        ChatCompletionContentPartParam,
        ChatCompletionMessageParam,
    )

logger = logging.getLogger(__name__)

NO_KEY = "chinwag-no-key"
"""Sent when no API key is configured: the client insists on one, and local servers ignore it."""
MAX_STOP_SEQUENCES = 4  # the OpenAI API accepts at most four; the rest are applied locally only


class OpenAIChatBackend:
    """Streams replies from `{base_url}/chat/completions` for the model `model_name`.

    `api_key` is sent as the bearer token (a placeholder when None). `context_window` (tokens; None:
    no cut here) bounds the prompt. `connect_timeout_s` bounds connecting, `read_timeout_s` the wait
    for each piece of the stream (the first token included). `ping_timeout_s` bounds `ping`.
    `vision`: the model sees images (see the module docstring).
    """

    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        model_name: str,
        api_key: str | None = None,
        context_window: int | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        ping_timeout_s: float = 2.0,
        vision: bool = False,
    ) -> None:
        self._base_url = base_url
        self._where = f"openai server {redact_url(base_url)}"
        self._model_name = model_name
        self._api_key = api_key
        self._context_window = context_window
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._retry = retry or RetryPolicy()
        self._cancels = ChannelCancels()
        self._ping_timeout_s = ping_timeout_s
        self._client: AsyncOpenAI | None = None
        self._vision = vision

    def sees_images(self) -> bool:
        """See `SeesImages`: `model.vision`, as configured (the server is not asked)."""
        return self._vision

    async def start(self) -> None:
        """Create the client (one connection pool for every reply). The server being down is no
        error here: the bot comes up and replies "not reachable" until the server is back."""
        if self._client is not None:
            return
        try:
            import httpx2
            from openai import AsyncOpenAI
        except ImportError as exc:
            raise ModelLoadError(
                f"the openai backend needs the openai package ({exc}); install chinwag[remote]"
            ) from exc
        timeout = httpx2.Timeout(
            self._read_timeout_s, connect=self._connect_timeout_s, pool=self._connect_timeout_s
        )
        self._client = AsyncOpenAI(
            base_url=self._base_url,
            api_key=self._api_key or NO_KEY,
            timeout=timeout,
            max_retries=0,
        )
        if not await self.ping():
            logger.warning("%s is not reachable yet; replies will say so until it is", self._where)

    async def stop(self) -> None:
        """Close the connection pool. Idempotent."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def ping(self) -> bool:
        """GET {base_url}/models within `ping_timeout_s`: True when the server answers it."""
        if self._client is None:
            return False
        try:
            await self._client.with_options(timeout=self._ping_timeout_s, max_retries=0).models.list()
        except Exception as exc:
            logger.debug("%s: ping failed: %s", self._where, type(exc).__name__)
            return False
        return True

    def forget(self, channel_key: str) -> None:
        """Stop the running generations of `channel_key` and of its members' conversations (the
        server may cache prefixes on its own)."""
        self._cancels.cancel(channel_key)

    async def prepare(self, conversation: Conversation, max_new_tokens: int) -> PreparedPrompt:
        """The conversation as chat messages, fitted to the context window in characters; the
        new message's images come along when the model sees them."""
        images = conversation.images if self._vision else ()
        fitted = fit_conversation(
            conversation, budget_chars(self._context_window, max_new_tokens), images=len(images)
        )
        messages: list[PromptMessage] = []
        if fitted.system_prompt:
            messages.append(PromptMessage("system", fitted.system_prompt))
        messages.extend(PromptMessage(turn.role, turn.text) for turn in fitted.history)
        messages.append(PromptMessage("user", fitted.message))
        return PreparedPrompt(
            input_text="",  # the conversation goes as `messages`
            history_used=len(fitted.history),
            message_cut=fitted.message_cut,
            context_key=conversation.context_key,
            messages=tuple(messages),
            images=images,
        )

    def generate_reporting(
        self, prompt: PreparedPrompt, settings: SamplingSettings, report: GenerationReport
    ) -> AsyncGenerator[str, None]:
        """See `UsageReporting`: the server's `usage` and `finish_reason` when its stream carries
        them (usage is not asked for: not every OpenAI-compatible server takes `stream_options`)."""
        return self.generate(prompt, settings, report)

    async def generate(
        self, prompt: PreparedPrompt, settings: SamplingSettings, report: GenerationReport | None = None
    ) -> AsyncGenerator[str, None]:
        """Stream the reply; stop sequences are sent and also applied here (servers differ in
        whether they include the stop text). Raises `BackendUnavailable`, `BackendRejected`,
        `BackendStreamBroken` (see `bot.backends.remote_retry`)."""
        client = self._client
        if client is None:
            raise BackendError("the openai backend is not started")
        stops = tuple(dict.fromkeys((*settings.stop, *prompt.stop)))
        messages = chat_messages(prompt)

        async def attempt() -> AsyncIterator[str]:
            stream = await client.chat.completions.create(
                model=self._model_name,
                messages=messages,
                stream=True,
                temperature=settings.temperature,
                top_p=settings.top_p,
                max_tokens=settings.max_new_tokens,
                stop=list(stops[:MAX_STOP_SEQUENCES]) or None,
            )
            try:
                async for chunk in stream:
                    if report is not None:
                        _note_usage(chunk, report)
                    yield _delta_text(chunk)
            finally:
                await stream.close()

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

    def _classify(self, exc: Exception) -> Failure:
        """The `openai` package's exceptions as `Failure`s. Messages carry the status and the
        exception type only: a server's error body may echo the API key."""
        import openai

        where = self._where
        if isinstance(exc, openai.APITimeoutError):
            return Failure(BackendUnavailable(f"{where}: timed out"), transient=True)
        if isinstance(exc, openai.APIConnectionError):
            return Failure(BackendUnavailable(f"{where}: cannot connect or connection lost"), transient=True)
        if isinstance(exc, openai.APIStatusError):
            return http_status_failure(where, exc.status_code, exc.response.headers.get("retry-after"), exc)
        if isinstance(exc, openai.APIError):  # an error event inside the stream
            return Failure(BackendStreamBroken(f"{where}: reported an error in the stream"), transient=False)
        if isinstance(exc, ValueError | TypeError | AttributeError | LookupError):
            # json.JSONDecodeError is a ValueError; the others come from chunks missing fields.
            return Failure(
                BackendStreamBroken(f"{where}: sent data that is not a chat-completions stream"),
                transient=False,
            )
        return Failure(BackendError(f"{where}: unexpected {type(exc).__name__}"), transient=False)


def chat_messages(prompt: PreparedPrompt) -> list[ChatCompletionMessageParam]:
    """`prompt.messages` as the API takes them: plain strings, except the last user message when
    the prompt has images (`content_parts`)."""
    last_user = max((i for i, m in enumerate(prompt.messages) if m.role == "user"), default=-1)
    messages: list[ChatCompletionMessageParam] = []
    for index, m in enumerate(prompt.messages):
        if index == last_user and prompt.images:
            messages.append({"role": "user", "content": content_parts(m.content, prompt.images)})
        else:
            messages.append(_plain_message(m))
    return messages


def _plain_message(message: PromptMessage) -> ChatCompletionMessageParam:
    """A message whose content is one string (the API's types are one TypedDict per role)."""
    if message.role == "system":
        return {"role": "system", "content": message.content}
    if message.role == "assistant":
        return {"role": "assistant", "content": message.content}
    return {"role": "user", "content": message.content}


def content_parts(text: str, images: tuple[ImagePart, ...]) -> list[ChatCompletionContentPartParam]:
    """A user message with images as OpenAI content parts: the text part, then one `image_url`
    part per image, as a `data:` URL (the server needs no access to the chat platform)."""
    parts: list[ChatCompletionContentPartParam] = [{"type": "text", "text": text}]
    parts.extend({"type": "image_url", "image_url": {"url": image.data_url}} for image in images)
    return parts


def _delta_text(chunk: ChatCompletionChunk) -> str:
    """The text a stream chunk adds ("" for role-only, usage-only or finish chunks)."""
    if not chunk.choices:
        return ""
    content = chunk.choices[0].delta.content
    if content is not None and not isinstance(content, str):
        raise TypeError("delta.content is not a string")
    return content or ""


def _note_usage(chunk: ChatCompletionChunk, report: GenerationReport) -> None:
    """Copy the server's usage and finish reason into `report` when this chunk has them."""
    if chunk.usage is not None:
        report.prompt_tokens = chunk.usage.prompt_tokens
        report.completion_tokens = chunk.usage.completion_tokens
    if chunk.choices and chunk.choices[0].finish_reason is not None:
        report.finish_reason = "length" if chunk.choices[0].finish_reason == "length" else "stop"
