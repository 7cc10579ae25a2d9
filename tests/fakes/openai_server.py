"""A fake OpenAI-compatible chat-completions server (aiohttp on 127.0.0.1) for the real `openai` client.

`POST /v1/chat/completions` with `stream: true` answers the server-sent events the OpenAI API (and
vLLM, llama.cpp server, Ollama) send: `data: {chat.completion.chunk}` events, a first one with the
assistant role, one per token, a last one with `finish_reason`, then `data: [DONE]`. Errors are
JSON bodies `{"error": {"message", "type", "code"}}` with the HTTP status. `GET /v1/models` lists
the one model (the backend's ping). Faults come from `tests.fakes.inference`.

Like many servers, it sends no `usage` unless asked; `send_usage=True` makes it end every finished
stream with a usage chunk as OpenAI does under `stream_options: {"include_usage": true}` (empty
`choices`): `completion_tokens` is the number of tokens streamed, `prompt_tokens` the words of the
request's messages.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from tests.fakes.inference import Behaviour, Cut, FakeInferenceServer, Garbage, Reply, Status

MODEL = "fake-chat-1"
DEFAULT_REPLY = Reply(("Hello", " there", "!"))  # the base class's default


def error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error body."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class FakeOpenAI(FakeInferenceServer):
    """The fake server; `base_url` is what `AsyncOpenAI(base_url=...)` takes."""

    def __init__(
        self,
        *,
        port: int = 0,
        default: Behaviour = DEFAULT_REPLY,
        send_usage: bool = False,
    ) -> None:
        super().__init__(port=port, default=default)
        self.send_usage = send_usage

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/v1/models", self._models)

    async def _models(self, request: web.Request) -> web.Response:
        await self.record(request)
        return web.json_response(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "me"}]}
        )

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        behaviour = self.next_behaviour()
        if isinstance(behaviour, Status):
            return self.status_response(behaviour)
        if not body.get("stream"):
            return web.json_response(
                error_body("only stream: true is faked", "invalid_request_error"), status=400
            )
        self.stream_started()
        try:
            return await self._stream(request, body, behaviour)
        finally:
            self.stream_ended()

    async def _stream(
        self, request: web.Request, body: dict[str, Any], behaviour: Reply | Cut | Garbage
    ) -> web.StreamResponse:
        response = await self.open_stream(request)
        await self._event(response, self._chunk(body, {"role": "assistant", "content": ""}))
        if isinstance(behaviour, Reply):
            await self.pause(behaviour.first_delay_s)
        for index, token in enumerate(behaviour.tokens):
            if index and isinstance(behaviour, Reply):
                await self.pause(behaviour.delay_s)
            await self._event(response, self._chunk(body, {"content": token}))
        if isinstance(behaviour, Cut):
            self.drop(request)
            return response
        if isinstance(behaviour, Garbage):
            await response.write(f"data: {behaviour.raw}\n\n".encode())
            await response.write_eof()
            return response
        await self._event(response, self._chunk(body, {}, finish_reason="stop"))
        if self.send_usage:
            await self._event(response, self._usage_chunk(body, len(behaviour.tokens)))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    @staticmethod
    def _chunk(
        body: dict[str, Any], delta: dict[str, Any], finish_reason: str | None = None
    ) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": body.get("model", MODEL),
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }

    @classmethod
    def _usage_chunk(cls, body: dict[str, Any], completion_tokens: int) -> dict[str, Any]:
        prompt_tokens = sum(len(str(message.get("content", "")).split()) for message in body["messages"])
        return {
            **cls._chunk(body, {}),
            "choices": [],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    @staticmethod
    async def _event(response: web.StreamResponse, data: dict[str, Any]) -> None:
        await response.write(f"data: {json.dumps(data)}\n\n".encode())
