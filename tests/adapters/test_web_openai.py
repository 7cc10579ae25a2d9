"""`/v1/chat/completions` driven by the official `openai` client against the real server."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from adapters.web import create
from adapters.web_openai import served_model_name
from bot.config import ModelConfig, WebConfig
from bot.ports import Turn
from storage.repository import ChatRepository
from tests.bot.doubles import FailingBackend, RecordingBackend
from tests.conftest import EngineFactory
from tests.fakes.web_harness import read_sse, running_web


def client_for(url: str, api_key: str = "unused") -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=10.0)


async def test_the_request_messages_are_the_conversation(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    backend = RecordingBackend()
    async with running_web(await make_engine(backend), repository) as web:
        client = client_for(web.url)
        completion = await client.chat.completions.create(
            model="whatever",
            messages=[
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi there"},
                {"role": "user", "content": [{"type": "text", "text": "and now?"}]},
            ],
            temperature=0.3,
            top_p=0.5,
            max_tokens=5,
            stop=["END"],
        )
        await client.close()
    assert completion.object == "chat.completion"
    assert completion.model == "chinwag"  # the bot's model, not the request's "whatever"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "echo[2]: and now?"
    assert completion.choices[0].finish_reason == "stop"
    # Echo tokens are words: "echo[2]:", " and", " now?" in the prompt and in the reply.
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 3)
    assert completion.usage.total_tokens == 6

    conversation = backend.conversations[-1]
    assert conversation.system_prompt == "Be terse."
    assert list(conversation.history) == [Turn("user", "hello"), Turn("assistant", "hi there")]
    assert conversation.message == "and now?"
    sampling = backend.samplings[-1]
    assert (sampling.temperature, sampling.top_p, sampling.max_new_tokens) == (0.3, 0.5, 5)
    assert "END" in sampling.stop
    # Stateless: nothing went into any channel's stored history.
    assert await repository.message_count("web:127.0.0.1") == 0


async def test_streaming_in_openais_chunk_format(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    backend = RecordingBackend()
    async with running_web(await make_engine(backend), repository) as web:
        client = client_for(web.url)
        stream = await client.chat.completions.create(
            model="chinwag", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
        await client.close()

        async with (
            httpx.AsyncClient(timeout=10) as raw,
            raw.stream(
                "POST",
                f"{web.url}/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
            ) as response,
        ):
            events = await read_sse(response)
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    contents = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices[0].delta.content]
    assert len(contents) >= 2
    assert "".join(contents) == "echo[0]: hi"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert backend.conversations[0].system_prompt == "You are a helpful assistant."  # the default
    assert events[-1].data == "[DONE]"


async def test_api_keys_are_required_when_configured(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    async with running_web(await make_engine(), repository, api_keys=("key-1",), admin_api_key="adm") as web:
        messages: list[dict[str, str]] = [{"role": "user", "content": "hi"}]
        with pytest.raises(openai.AuthenticationError):
            await client_for(web.url, "wrong").chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
        for key in ("key-1", "adm"):
            done = await client_for(web.url, key).chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
            assert done.choices[0].message.content == "echo[0]: hi"
        models = await client_for(web.url, "key-1").models.list()
        assert [model.id for model in models.data] == ["chinwag"]


async def test_conversations_a_model_cannot_continue_are_refused(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    async with running_web(await make_engine(), repository) as web:
        client = client_for(web.url)
        with pytest.raises(openai.BadRequestError, match="last non-system message"):
            await client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
            )
        with pytest.raises(openai.BadRequestError, match="temperature"):
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], temperature=5
            )
        with pytest.raises(openai.BadRequestError, match="messages"):
            await client.chat.completions.create(model="m", messages=[])
        await client.close()


async def test_over_the_rate_limit_is_a_429(make_engine: EngineFactory, repository: ChatRepository) -> None:
    async with running_web(await make_engine(rate_limit=1), repository) as web:
        client = client_for(web.url)
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert int(caught.value.response.headers["retry-after"]) >= 1
        await client.close()


async def test_without_keys_only_this_machine_may_call(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    async with running_web(await make_engine(), repository) as web:
        body = {"messages": [{"role": "user", "content": "hi"}]}
        remote = httpx.ASGITransport(app=web.app, client=("203.0.113.9", 40000))
        async with httpx.AsyncClient(transport=remote, base_url="http://bot") as client:
            refused = await client.post("/v1/chat/completions", json=body)
        async with httpx.AsyncClient(base_url=web.url, timeout=10) as client:
            local = await client.post("/v1/chat/completions", json=body)
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"
    assert local.status_code == 200
    assert local.json()["choices"][0]["message"]["content"] == "echo[0]: hi"


async def test_a_backend_failure_is_an_error_not_a_completion(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    async with running_web(await make_engine(FailingBackend()), repository) as web:
        client = client_for(web.url)
        with pytest.raises(openai.InternalServerError, match="internal error"):
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "explode"}])
        await client.close()


SIX_WORDS = "one two three four five six"  # echo answers "echo[0]: one two ...": 7 tokens


async def test_a_reply_cut_by_max_tokens_finishes_with_length(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    async with running_web(await make_engine(), repository) as web:
        client = client_for(web.url)
        messages: list[dict[str, str]] = [{"role": "user", "content": SIX_WORDS}]
        cut = await client.chat.completions.create(model="m", messages=messages, max_tokens=3)  # type: ignore[arg-type]
        whole = await client.chat.completions.create(model="m", messages=messages, max_tokens=7)  # type: ignore[arg-type]
        await client.close()
    assert cut.choices[0].message.content == "echo[0]: one two"
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None
    assert (cut.usage.prompt_tokens, cut.usage.completion_tokens, cut.usage.total_tokens) == (7, 3, 10)
    # Exactly as many tokens as allowed, but the reply was complete: not cut.
    assert whole.choices[0].message.content == f"echo[0]: {SIX_WORDS}"
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens, whole.usage.total_tokens) == (7, 7, 14)


async def test_the_configured_max_new_tokens_also_finishes_with_length(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    engine = await make_engine(model={"max_new_tokens": 2})
    async with (
        running_web(engine, repository) as web,
        httpx.AsyncClient(base_url=web.url, timeout=10) as client,
    ):
        response = await client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": SIX_WORDS}]}
        )
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "echo[0]: one"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}


async def test_a_stream_with_include_usage_ends_with_the_usage_chunk(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    async with running_web(await make_engine(), repository) as web:
        client = client_for(web.url)
        stream = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": SIX_WORDS}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        plain = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": SIX_WORDS}], max_tokens=4, stream=True
        )
        plain_chunks = [chunk async for chunk in plain]
        await client.close()
    *choice_chunks, last = chunks
    assert "".join(c.choices[0].delta.content or "" for c in choice_chunks) == "echo[0]: one two three"
    assert choice_chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in choice_chunks)
    # OpenAI's shape: the last chunk has no choices and the whole request's usage.
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (7, 4, 11)
    assert {c.model for c in chunks} == {"chinwag"}
    # Without stream_options there is no usage chunk: every chunk has its choice.
    assert all(len(c.choices) == 1 and c.usage is None for c in plain_chunks)
    assert plain_chunks[-1].choices[0].finish_reason == "length"


def test_the_served_model_name_is_what_the_bot_runs() -> None:
    assert served_model_name(ModelConfig()) == "bundled:smollm2"
    assert served_model_name(ModelConfig(path="/models/qwen2.5-1.5b")) == "/models/qwen2.5-1.5b"
    assert served_model_name(ModelConfig(backend="echo")) == "echo"
    openai_model = ModelConfig(backend="openai", base_url="http://127.0.0.1:8000/v1", name="Qwen/Qwen2.5-7B")
    assert served_model_name(openai_model) == "Qwen/Qwen2.5-7B"
    assert served_model_name(ModelConfig(backend="tgi", base_url="http://tgi:8080")) == "http://tgi:8080"
    assert served_model_name(ModelConfig(name="my-bot", path="/models/qwen2.5-1.5b")) == "my-bot"


async def test_models_and_completions_name_the_configured_model(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    # The adapter as the composition root builds it, for a local model at a path (the engine
    # behind it is the echo one: no model is loaded).
    adapter = create(WebConfig(port=0), ModelConfig(path="/models/my-model"), await make_engine(), repository)
    assert adapter is not None
    await adapter.start()
    try:
        client = client_for(adapter.url)
        models = await client.models.list()
        completion = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
        await client.close()
    finally:
        await adapter.stop()
    assert [model.id for model in models.data] == ["/models/my-model"]
    assert completion.model == "/models/my-model"
