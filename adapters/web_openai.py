"""`/v1/chat/completions` and `/v1/models`: an OpenAI-compatible face of the bot's backend.

The request's `messages` are the whole conversation (system messages become the system prompt,
earlier user/assistant turns the history, the last user message the new message): nothing is read
from or written to a channel's stored history. Answers come from a `Completer`: the web app
passes `ChatEngine.complete`, which applies the backend, limits, timeout and logging.

`model` in every answer is the model the bot runs (`model_name`), whatever the request named:
a client must not be told it got the model it asked for. `finish_reason` and `usage` are the
backend's (`Reply.finish_reason`, `Reply.usage`): "length" when the token limit cut the reply,
and `usage` null where the backend does not count tokens (a remote server that sent none).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from bot.config import ModelConfig
from bot.errors import ChinwagError, RateLimited
from bot.ports import Conversation, SamplingOverrides, Turn
from bot.reply import Reply, ReplyStatus, Usage
from bot.sanitize import sanitize_text

MAX_STOP_SEQUENCES = 4


# Answers a stateless conversation: returns at once, the reply fills in the background. Raises
# `RateLimited` at once when `user_key` is over the limit, `ChinwagError` when shutting down.
Completer = Callable[[Conversation, SamplingOverrides, str], Reply]


# ---------------------------------------------------------------------------------------------
# Request model (the subset of OpenAI's that a text backend can honour; other fields are ignored)


class ContentPart(BaseModel):
    """One part of a message's content; only `{"type": "text"}` parts are understood."""

    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class ChatMessageIn(BaseModel):
    """One message of the request's conversation."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    """`stream_options`: `include_usage` adds a last chunk with the usage and no choices."""

    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The body of `POST /v1/chat/completions`."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=1000)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1, le=1)

    def overrides(self) -> SamplingOverrides:
        """The sampling values this request sets."""
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > MAX_STOP_SEQUENCES or any(not item for item in stop):
            raise HTTPException(400, f"stop: at most {MAX_STOP_SEQUENCES} non-empty sequences")
        limit = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return SamplingOverrides(
            temperature=self.temperature, top_p=self.top_p, max_new_tokens=limit, stop=tuple(stop)
        )


def _text_of(message: ChatMessageIn, index: int) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return sanitize_text(message.content)
    parts: list[str] = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise HTTPException(400, f"messages[{index}]: only text content is supported")
        parts.append(part.text)
    return sanitize_text("\n".join(parts))


def to_conversation(request: ChatCompletionRequest, default_system_prompt: str) -> Conversation:
    """System/developer messages → the system prompt (the configured one if there is none),
    user/assistant turns before the last message → history, the last message (a user's) → the
    new message. Raises `HTTPException(400)` for a conversation a chat model cannot continue."""
    system: list[str] = []
    turns: list[Turn] = []
    for index, message in enumerate(request.messages):
        text = _text_of(message, index)
        if message.role in {"system", "developer"}:
            system.append(text)
        elif message.role == "user":
            turns.append(Turn("user", text))
        else:
            turns.append(Turn("assistant", text))
    if not turns or turns[-1].role != "user":
        raise HTTPException(400, "messages: the last non-system message must be the user's")
    if not turns[-1].content.strip():
        raise HTTPException(400, "messages: the last user message is empty")
    system_prompt = "\n\n".join(part for part in system if part) if system else default_system_prompt
    return Conversation(system_prompt=system_prompt, history=tuple(turns[:-1]), message=turns[-1].content)


# ---------------------------------------------------------------------------------------------
# Responses in OpenAI's exact shapes


def served_model_name(model: ModelConfig) -> str:
    """The model the bot runs, as `/v1/` names it: `model.name` when set (the server's model for
    openai; a display name otherwise), else the local model's path (`bundled:smollm2`, a
    directory, a .gguf file), a tgi server's URL, or `echo`."""
    if model.name:
        return model.name
    match model.backend:
        case "local":
            return model.path
        case "tgi":
            return model.base_url or model.backend
        case _:
            return model.backend


def _usage(usage: Usage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def _sse(body: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()


class _Chunks:
    """The `chat.completion.chunk` events of one streamed completion."""

    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self._head = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
        }

    def delta(self, delta: dict[str, str], finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**self._head, "choices": [choice]})

    def usage(self, usage: Usage | None) -> bytes:
        # OpenAI's last chunk with `include_usage`: no choices, the whole request's usage.
        return _sse({**self._head, "choices": [], "usage": _usage(usage)})


async def _stream(reply: Reply, chunks: _Chunks, *, include_usage: bool) -> AsyncIterator[bytes]:
    yield chunks.delta({"role": "assistant", "content": ""}, None)
    async for text in reply:
        yield chunks.delta({"content": text}, None)
    # The reply is done: its finish reason and usage are final.
    yield chunks.delta({}, reply.finish_reason or "stop")
    if include_usage:
        yield chunks.usage(reply.usage)
    yield b"data: [DONE]\n\n"


def _completion(completion_id: str, created: int, model: str, text: str, reply: Reply) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": reply.finish_reason or "stop",
            }
        ],
        "usage": _usage(reply.usage),
    }


def build_openai_router(
    complete: Completer,
    *,
    authorized: Callable[[Request], bool],
    user_key: Callable[[Request], str],
    model_name: str,
    default_system_prompt: str,
) -> APIRouter:
    """The `/v1/` routes. `authorized(request)` decides access (API keys, or loopback);
    `user_key(request)` names the client for the rate limit (shared with the chat API);
    `model_name` is what every answer says it ran (see `served_model_name`)."""
    router = APIRouter(prefix="/v1")

    def check(request: Request) -> None:
        if not authorized(request):
            raise HTTPException(401, "invalid or missing API key", headers={"WWW-Authenticate": "Bearer"})

    @router.get("/models")
    async def models(request: Request) -> dict[str, Any]:
        """The one model this server answers with."""
        check(request)
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "chinwag"}],
        }

    @router.post("/chat/completions", response_model=None)
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
        """OpenAI's chat completion: `chat.completion`, or `chat.completion.chunk` events ending
        with `data: [DONE]` when `stream` is true."""
        check(request)
        conversation = to_conversation(body, default_system_prompt)
        try:
            reply = complete(conversation, body.overrides(), user_key(request))
        except RateLimited as error:
            seconds = max(1, math.ceil(error.retry_after_s))
            raise HTTPException(429, str(error), headers={"Retry-After": str(seconds)}) from error
        except ChinwagError as error:
            raise HTTPException(503, "the bot is shutting down") from error
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(
                _stream(reply, _Chunks(completion_id, created, model_name), include_usage=include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        text = await reply.text()
        if reply.status is ReplyStatus.FAILED:
            raise HTTPException(502, text)
        return JSONResponse(_completion(completion_id, created, model_name, text, reply))

    return router
