"""A fake Text Generation Inference server (aiohttp on 127.0.0.1) for `huggingface_hub`'s client.

`POST /` with `stream: true` (what `AsyncInferenceClient(model=URL).text_generation(stream=True)`
sends: `{"inputs", "parameters", "stream"}`) answers TGI's `generate_stream` server-sent events:
`data:{"index", "token": {"id", "text", "logprob", "special"}, "generated_text": null, "details":
null, "top_tokens": null}` per token; the last token's event carries `generated_text` and, with
`details`, `{"finish_reason", "generated_tokens", "input_length", "seed"}` (TGI's StreamResponse
schema, as in huggingface.js's `text-generation/spec/stream_output.json`). Like TGI, the stream
includes the stop sequence's tokens when generation stops on one, and validation errors
(temperature <= 0, top_p outside (0, 1)) are 422 with `{"error", "error_type": "validation"}`.
`GET /health` answers 200.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from tests.fakes.inference import Cut, FakeInferenceServer, Garbage, Reply, Status


def error_body(message: str, error_type: str) -> dict[str, Any]:
    """A TGI error body."""
    return {"error": message, "error_type": error_type}


class FakeTGI(FakeInferenceServer):
    """The fake server; `base_url` is what `AsyncInferenceClient(model=...)` takes."""

    @property
    def base_url(self) -> str:
        return self.root_url

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/", self._generate)
        app.router.add_post("/generate_stream", self._generate)
        app.router.add_get("/health", self._health)

    async def _health(self, request: web.Request) -> web.Response:
        await self.record(request)
        return web.Response(status=200)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        parameters = body.get("parameters") or {}
        invalid = _validate(parameters)
        if invalid:
            return web.json_response(error_body(invalid, "validation"), status=422)
        behaviour = self.next_behaviour()
        if isinstance(behaviour, Status):
            return self.status_response(behaviour)
        self.stream_started()
        try:
            return await self._stream(request, parameters, behaviour)
        finally:
            self.stream_ended()

    async def _stream(
        self, request: web.Request, parameters: dict[str, Any], behaviour: Reply | Cut | Garbage
    ) -> web.StreamResponse:
        response = await self.open_stream(request)
        if isinstance(behaviour, Reply):
            await self.pause(behaviour.first_delay_s)
        tokens = list(behaviour.tokens)
        if isinstance(behaviour, Reply):
            tokens = _until_stop(tokens, parameters.get("stop") or [])
        generated = ""
        for index, token in enumerate(tokens):
            if index and isinstance(behaviour, Reply):
                await self.pause(behaviour.delay_s)
            generated += token
            last = index == len(tokens) - 1 and isinstance(behaviour, Reply)
            await self._event(response, index, token, generated if last else None, parameters)
        if isinstance(behaviour, Cut):
            self.drop(request)
            return response
        if isinstance(behaviour, Garbage):
            await response.write(f"data:{behaviour.raw}\n\n".encode())
        elif not tokens:
            # An empty reply: TGI still ends with one (special) end-of-sequence token.
            await self._event(response, 0, "</s>", "", parameters, special=True)
        await response.write_eof()
        return response

    @staticmethod
    async def _event(
        response: web.StreamResponse,
        index: int,
        text: str,
        generated_text: str | None,
        parameters: dict[str, Any],
        *,
        special: bool = False,
    ) -> None:
        details = None
        if generated_text is not None and parameters.get("details"):
            stops = parameters.get("stop") or []
            reason = "stop_sequence" if any(s and s in generated_text for s in stops) else "eos_token"
            details = {
                "finish_reason": reason,
                "generated_tokens": index + 1,
                "input_length": 7,  # prompt tokens; the bot does not read it
                "seed": None,
            }
        event = {
            "index": index + 1,
            "token": {"id": 1000 + index, "text": text, "logprob": -0.25, "special": special},
            "generated_text": generated_text,
            "details": details,
            "top_tokens": None,
        }
        await response.write(f"data:{json.dumps(event)}\n\n".encode())


def _validate(parameters: dict[str, Any]) -> str | None:
    """TGI's checks on the sampling parameters (router/src/validation.rs)."""
    temperature = parameters.get("temperature")
    if temperature is not None and temperature <= 0:
        return "Input validation error: `temperature` must be strictly positive"
    top_p = parameters.get("top_p")
    if top_p is not None and not 0 < top_p < 1:
        return "Input validation error: `top_p` must be > 0.0 and < 1.0"
    max_new_tokens = parameters.get("max_new_tokens")
    if max_new_tokens is not None and max_new_tokens <= 0:
        return "Input validation error: `max_new_tokens` must be strictly positive"
    return None


def _until_stop(tokens: list[str], stops: list[str]) -> list[str]:
    """The tokens up to and including the one that completes a stop sequence (TGI streams it)."""
    text = ""
    for index, token in enumerate(tokens):
        text += token
        if any(stop and stop in text for stop in stops):
            return tokens[: index + 1]
    return tokens
