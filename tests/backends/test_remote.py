"""The openai and tgi backends through the real engine and a real SQLite file, against fake
servers driven by the real `openai` / `huggingface_hub` clients, with faults injected.

Each test asserts what the user saw, what the bot sent, and what the database holds afterwards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from bot.backends.base import backend_ready
from bot.backends.openai_chat import OpenAIChatBackend
from bot.backends.remote_retry import RetryPolicy
from bot.backends.tgi import TGIBackend
from bot.engine import EMPTY_MODEL_REPLY, ChatEngine
from bot.errors import GenerationCancelled
from bot.events import ChatEvent
from bot.failures import (
    REJECTED_REPLY,
    SAVED_NOTE,
    STREAM_BROKEN_REPLY,
    UNAVAILABLE_REPLY,
    UNAVAILABLE_STATELESS_REPLY,
)
from bot.ports import Conversation, SamplingOverrides, SamplingSettings, Turn, member_context_key
from bot.reply import ReplyStatus, Usage
from storage.repository import ChatRepository
from tests.conftest import EngineFactory
from tests.fakes.inference import Cut, FakeInferenceServer, Garbage, Reply, Status, free_port
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.openai_server import error_body as openai_error
from tests.fakes.tgi_server import FakeTGI
from tests.fakes.tgi_server import error_body as tgi_error

Kind = Literal["openai", "tgi"]
API_KEY = "sk-test-SECRET-123"
SYSTEM = "You are a test bot."
RETRIES = 2


@dataclass
class Remote:
    """A fake server, a started backend pointing at it, and an engine over SQLite."""

    kind: Kind
    fake: FakeInferenceServer
    backend: OpenAIChatBackend | TGIBackend
    engine: ChatEngine

    async def ask(self, text: str) -> tuple[str, ReplyStatus]:
        reply = self.engine.handle(event(text))
        answer = await reply.text()
        return answer, reply.status

    def sent(self, index: int = -1) -> dict[str, Any]:
        body = self.fake.generation_requests[index].body
        assert isinstance(body, dict)
        return body


def event(text: str) -> ChatEvent:
    return ChatEvent(
        platform="test", channel="c1", author_id="u1", author_name="Ann", text=text, is_direct=True
    )


async def stored(repository: ChatRepository) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in await repository.recent_messages("test:c1", limit=100)]


def make_fake(kind: Kind, port: int = 0) -> FakeInferenceServer:
    return FakeOpenAI(port=port) if kind == "openai" else FakeTGI(port=port)


def make_backend(kind: Kind, base_url: str, **options: Any) -> OpenAIChatBackend | TGIBackend:
    settings: dict[str, Any] = {
        "api_key": API_KEY,
        "context_window": 2048,
        "connect_timeout_s": 1.0,
        "read_timeout_s": 2.0,
        "retry": RetryPolicy(max_retries=RETRIES, backoff_s=0.001),
        "ping_timeout_s": 0.5,
    }
    settings.update(options)
    if kind == "openai":
        return OpenAIChatBackend(base_url=base_url, model_name="fake-chat-1", **settings)
    return TGIBackend(base_url=base_url, **settings)


RemoteFactory = Callable[..., Any]


@pytest.fixture(params=["openai", "tgi"])
def kind(request: pytest.FixtureRequest) -> Kind:
    kind: Kind = request.param
    return kind


@pytest.fixture
async def remote_factory(kind: Kind, make_engine: EngineFactory) -> AsyncIterator[RemoteFactory]:
    """Build `Remote`s: `await factory(fake=None, base_url=None, model={...}, **backend_options)`."""
    started: list[Any] = []

    async def factory(
        fake: FakeInferenceServer | None = None,
        *,
        base_url: str | None = None,
        model: dict[str, Any] | None = None,
        **options: Any,
    ) -> Remote:
        if fake is None:
            fake = make_fake(kind)
            await fake.start()
            started.append(fake)
        url = base_url or fake.base_url
        backend = make_backend(kind, url, **options)
        await backend.start()
        started.append(backend)
        engine = await make_engine(backend, model={"system_prompt": SYSTEM, **(model or {})})
        return Remote(kind, fake, backend, engine)

    yield factory
    for thing in reversed(started):
        await thing.stop()


# --- what the bot sends ---------------------------------------------------------------------------


async def test_history_system_prompt_and_settings_reach_the_server(
    kind: Kind, remote_factory: RemoteFactory, repository: ChatRepository
) -> None:
    remote = await remote_factory(model={"temperature": 0.5, "top_p": 0.8, "top_k": 40, "max_new_tokens": 42})
    assert await remote.ask("hi") == ("Hello there!", ReplyStatus.ANSWERED)
    assert await remote.ask("how are you?") == ("Hello there!", ReplyStatus.ANSWERED)

    sent = remote.sent()
    headers = remote.fake.generation_requests[-1].headers
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    if kind == "openai":
        assert sent["model"] == "fake-chat-1"
        assert sent["stream"] is True
        assert sent["messages"] == [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello there!"},
            {"role": "user", "content": "how are you?"},
        ]
        assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (0.5, 0.8, 42)
        assert "top_k" not in sent  # not an OpenAI API field: OpenAI's own service rejects it
    else:
        assert sent["stream"] is True
        assert sent["inputs"] == (
            f"System: {SYSTEM}\nUser: hi\nAssistant: Hello there!\nUser: how are you?\nAssistant:"
        )
        parameters = sent["parameters"]
        assert "\nUser:" in parameters["stop"]
        assert parameters["do_sample"] is True
        assert (
            parameters["temperature"],
            parameters["top_p"],
            parameters["top_k"],
            parameters["max_new_tokens"],
        ) == (0.5, 0.8, 40, 42)
        assert parameters["details"] is True
    assert await stored(repository) == [
        ("user", "hi"),
        ("assistant", "Hello there!"),
        ("user", "how are you?"),
        ("assistant", "Hello there!"),
    ]


async def test_greedy_is_sent_in_the_form_each_server_accepts(
    kind: Kind, remote_factory: RemoteFactory
) -> None:
    remote = await remote_factory(model={"temperature": 0.0, "top_p": 1.0})
    assert await remote.ask("hi") == ("Hello there!", ReplyStatus.ANSWERED)
    sent = remote.sent()
    if kind == "openai":
        assert sent["temperature"] == 0
    else:
        # TGI rejects temperature 0 and top_p 1 with a 422 (the fake does too).
        parameters = sent["parameters"]
        assert parameters["do_sample"] is False
        assert "temperature" not in parameters
        assert "top_p" not in parameters
        assert "top_k" not in parameters


async def test_tgi_gets_no_top_k_when_it_is_off(make_engine: EngineFactory) -> None:
    # TGI rejects `top_k: 0`; 0 means "no cut" here, which is what leaving it out means there.
    fake = make_fake("tgi")
    await fake.start()
    backend = make_backend("tgi", fake.base_url)
    await backend.start()
    try:
        engine = await make_engine(backend, model={"system_prompt": SYSTEM, "top_k": 0})
        remote = Remote("tgi", fake, backend, engine)
        assert await remote.ask("hi") == ("Hello there!", ReplyStatus.ANSWERED)
        parameters = remote.sent()["parameters"]
        assert parameters["do_sample"] is True
        assert "top_k" not in parameters
    finally:
        await backend.stop()
        await fake.stop()


async def test_reply_never_contains_the_next_user_turn(
    kind: Kind, remote_factory: RemoteFactory, repository: ChatRepository
) -> None:
    remote = await remote_factory(model={"stop": ["\nUser:"]})
    remote.fake.script(Reply(("Sure", ".", "\n", "User", ":", " and then I say")))
    assert await remote.ask("hi") == ("Sure.", ReplyStatus.ANSWERED)
    assert "\nUser:" in (remote.sent()["stop"] if kind == "openai" else remote.sent()["parameters"]["stop"])
    assert await stored(repository) == [("user", "hi"), ("assistant", "Sure.")]


async def test_long_history_is_cut_to_the_window_keeping_system_and_message(
    kind: Kind, remote_factory: RemoteFactory
) -> None:
    # window 100 tokens - 20 for the reply = 320 characters of prompt.
    remote = await remote_factory(model={"max_new_tokens": 20}, context_window=100)
    for index in range(4):
        await remote.ask(f"message {index} " + "x" * 80)
    text = remote.sent()["messages"][-1]["content"] if kind == "openai" else remote.sent()["inputs"]
    assert "message 3" in text
    full = str(remote.sent())
    assert "message 0" not in full and SYSTEM in full
    answer, status = await remote.ask("y" * 2000)
    assert status is ReplyStatus.ANSWERED
    assert "too long for my context window" in answer
    assert len(str(remote.sent())) < 1500


async def test_group_turns_reach_the_server_as_name_and_text(kind: Kind) -> None:
    """In a group channel every user turn, the new message too, is `NAME: TEXT`; the bot's own
    turns carry no name."""
    async with make_fake(kind) as fake:
        backend = make_backend(kind, fake.base_url)
        await backend.start()
        try:
            history = [
                Turn("user", "hi", speaker="Alice"),
                Turn("assistant", "Hello there!"),
                Turn("user", "yo", speaker="Bob"),
            ]
            conversation = Conversation(SYSTEM, history, "what now?", context_key="test:c1", speaker="Carol")
            prompt = await backend.prepare(conversation, 42)
            settings = SamplingSettings(max_new_tokens=42)
            assert "".join([chunk async for chunk in backend.generate(prompt, settings)]) == "Hello there!"
        finally:
            await backend.stop()
        sent = fake.generation_requests[-1].body
    if kind == "openai":
        assert sent["messages"] == [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Alice: hi"},
            {"role": "assistant", "content": "Hello there!"},
            {"role": "user", "content": "Bob: yo"},
            {"role": "user", "content": "Carol: what now?"},
        ]
    else:
        assert sent["inputs"] == (
            f"System: {SYSTEM}\nUser: Alice: hi\nAssistant: Hello there!\nUser: Bob: yo\n"
            "User: Carol: what now?\nAssistant:"
        )


async def test_forgetting_a_channel_stops_its_members_generations(kind: Kind) -> None:
    async with make_fake(kind) as fake:
        fake.script(*[Reply(tuple(f" w{i}" for i in range(60)), delay_s=0.02)] * 3)
        backend = make_backend(kind, fake.base_url)
        await backend.start()
        try:
            settings = SamplingSettings(max_new_tokens=500)
            streams = []
            for key in (member_context_key("test:c1", "u1"), member_context_key("test:c1", "u2"), "test:c10"):
                prompt = await backend.prepare(Conversation(SYSTEM, [], "go", context_key=key), 500)
                stream = backend.generate(prompt, settings)
                assert await anext(stream)  # streaming
                streams.append(stream)
            backend.forget("test:c1")
            for stream in streams[:2]:
                with pytest.raises(GenerationCancelled):
                    async for _ in stream:
                        pass
            neighbour = "".join([chunk async for chunk in streams[2]])  # "test:c10" is another channel
            assert neighbour.endswith(" w59")
        finally:
            await backend.stop()


# --- faults ----------------------------------------------------------------------------------------


async def test_server_error_then_success_is_retried_invisibly(
    kind: Kind, remote_factory: RemoteFactory, repository: ChatRepository
) -> None:
    remote = await remote_factory()
    remote.fake.script(Status(500, {"error": "boom"}))
    assert await remote.ask("hi") == ("Hello there!", ReplyStatus.ANSWERED)
    assert len(remote.fake.generation_requests) == 2
    assert await stored(repository) == [("user", "hi"), ("assistant", "Hello there!")]


async def test_429_waits_for_retry_after_then_succeeds(kind: Kind, remote_factory: RemoteFactory) -> None:
    remote = await remote_factory()
    body = openai_error("slow down", "rate_limit_error") if kind == "openai" else tgi_error("slow down", "")
    remote.fake.script(Status(429, body, headers={"Retry-After": "0.3"}))
    started = time.monotonic()
    assert await remote.ask("hi") == ("Hello there!", ReplyStatus.ANSWERED)
    assert time.monotonic() - started >= 0.3
    assert len(remote.fake.generation_requests) == 2


async def test_persistent_500_gives_an_error_reply_after_the_retries_and_keeps_the_message(
    kind: Kind, remote_factory: RemoteFactory, repository: ChatRepository
) -> None:
    remote = await remote_factory()
    remote.fake.script(*[Status(503, {"error": "down"})] * (RETRIES + 1))
    assert await remote.ask("hi") == (UNAVAILABLE_REPLY, ReplyStatus.FAILED)
    assert len(remote.fake.generation_requests) == RETRIES + 1
    assert await stored(repository) == [("user", "hi")]
    # The server is fine again: the next message is answered, with the unanswered one in its history.
    assert await remote.ask("again") == ("Hello there!", ReplyStatus.ANSWERED)
    assert "hi" in str(remote.sent())
    assert await stored(repository) == [("user", "hi"), ("user", "again"), ("assistant", "Hello there!")]


async def test_refused_connection_then_the_server_comes_back(
    kind: Kind, remote_factory: RemoteFactory, repository: ChatRepository
) -> None:
    port = free_port()
    fake = make_fake(kind, port=port)
    url = f"http://127.0.0.1:{port}" + ("/v1" if kind == "openai" else "")
    remote = await remote_factory(fake, base_url=url)  # starts although the server is down
    assert not await backend_ready(remote.backend)
    assert await remote.ask("anyone there?") == (UNAVAILABLE_REPLY, ReplyStatus.FAILED)
    assert await stored(repository) == [("user", "anyone there?")]

    await fake.start()
    try:
        assert await backend_ready(remote.backend)
        assert await remote.ask("now?") == ("Hello there!", ReplyStatus.ANSWERED)
    finally:
        await fake.stop()
    assert await stored(repository) == [
        ("user", "anyone there?"),
        ("user", "now?"),
        ("assistant", "Hello there!"),
    ]


async def test_slow_first_token_times_out_and_is_retried(
    kind: Kind, remote_factory: RemoteFactory, repository: ChatRepository
) -> None:
    remote = await remote_factory(read_timeout_s=0.2)
    remote.fake.script(Reply(("late",), first_delay_s=1.0))
    assert await remote.ask("hi") == ("Hello there!", ReplyStatus.ANSWERED)
    assert len(remote.fake.generation_requests) == 2
    assert await stored(repository) == [("user", "hi"), ("assistant", "Hello there!")]


async def test_slow_first_token_every_time_gives_the_unavailable_reply(
    kind: Kind, remote_factory: RemoteFactory, repository: ChatRepository
) -> None:
    remote = await remote_factory(read_timeout_s=0.1, retry=RetryPolicy(max_retries=1, backoff_s=0.001))
    remote.fake.script(*[Reply(("late",), first_delay_s=0.5)] * 2)
    assert await remote.ask("hi") == (UNAVAILABLE_REPLY, ReplyStatus.FAILED)
    assert await stored(repository) == [("user", "hi")]


async def test_stream_cut_mid_way_keeps_nothing_half_written(
    kind: Kind, remote_factory: RemoteFactory, repository: ChatRepository
) -> None:
    remote = await remote_factory()
    remote.fake.script(Cut(("Half", " a")))
    answer, status = await remote.ask("hi")
    assert (answer, status) == ("Half a" + STREAM_BROKEN_REPLY, ReplyStatus.FAILED)
    assert len(remote.fake.generation_requests) == 1  # never retried after the first token
    assert await stored(repository) == [("user", "hi")]
    assert await remote.ask("again") == ("Hello there!", ReplyStatus.ANSWERED)


@pytest.mark.parametrize("before", [(), ("Some",)])
async def test_invalid_json_event_is_an_error_reply(
    kind: Kind, remote_factory: RemoteFactory, repository: ChatRepository, before: tuple[str, ...]
) -> None:
    remote = await remote_factory()
    remote.fake.script(Garbage(before))
    answer, status = await remote.ask("hi")
    notice = STREAM_BROKEN_REPLY if before else STREAM_BROKEN_REPLY.lstrip()
    assert (answer, status) == ("".join(before) + notice, ReplyStatus.FAILED)
    assert len(remote.fake.generation_requests) == 1
    assert await stored(repository) == [("user", "hi")]


async def test_empty_reply_is_a_polite_notice_and_not_stored(
    kind: Kind, remote_factory: RemoteFactory, repository: ChatRepository
) -> None:
    remote = await remote_factory()
    remote.fake.script(Reply(()))
    assert await remote.ask("hi") == (EMPTY_MODEL_REPLY, ReplyStatus.NOTICE)
    assert await stored(repository) == [("user", "hi")]


async def test_bad_key_is_not_retried_and_never_leaks(
    kind: Kind, remote_factory: RemoteFactory, repository: ChatRepository, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    remote = await remote_factory()
    echoed = f"Incorrect API key provided: {API_KEY}"
    body = (
        openai_error(echoed, "invalid_request_error", "invalid_api_key")
        if kind == "openai"
        else {"error": echoed}
    )
    remote.fake.script(Status(401, body))
    answer, status = await remote.ask("hi")
    assert (answer, status) == (REJECTED_REPLY.format(status=401, saved=SAVED_NOTE), ReplyStatus.FAILED)
    assert len(remote.fake.generation_requests) == 1
    assert API_KEY not in answer
    assert API_KEY not in caplog.text
    assert await stored(repository) == [("user", "hi")]


async def test_context_too_long_400_is_a_clear_error(
    kind: Kind, remote_factory: RemoteFactory, repository: ChatRepository
) -> None:
    remote = await remote_factory()
    body = (
        openai_error("maximum context length exceeded", "invalid_request_error", "context_length_exceeded")
        if kind == "openai"
        else tgi_error("Input validation error: inputs too long", "validation")
    )
    remote.fake.script(Status(400 if kind == "openai" else 422, body))
    answer, status = await remote.ask("hi")
    assert status is ReplyStatus.FAILED
    assert answer == REJECTED_REPLY.format(status=400 if kind == "openai" else 422, saved=SAVED_NOTE)
    assert len(remote.fake.generation_requests) == 1
    assert await stored(repository) == [("user", "hi")]


# --- tgi only --------------------------------------------------------------------------------------


async def test_tgi_without_a_key_never_sends_the_machines_hugging_face_token(
    make_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_machine_token_must_stay_home")
    async with FakeTGI() as fake:
        backend = TGIBackend(base_url=fake.base_url, api_key=None)
        await backend.start()
        try:
            engine = await make_engine(backend)
            assert await engine.ask(event("hi")) == "Hello there!"
        finally:
            await backend.stop()
    headers = str(fake.generation_requests[0].headers)
    assert "hf_machine_token_must_stay_home" not in headers


# --- releasing the connection ------------------------------------------------------------------------


async def test_reset_mid_reply_stops_the_generation_and_closes_the_stream(
    kind: Kind, remote_factory: RemoteFactory, repository: ChatRepository
) -> None:
    remote = await remote_factory()
    remote.fake.script(Reply(tuple(f" w{i}" for i in range(200)), delay_s=0.02))
    reply = remote.engine.handle(event("tell me a long story"))
    async for _ in reply:
        break  # the reply is streaming
    reset = remote.engine.handle(
        ChatEvent(
            platform="test", channel="c1", author_id="u1", author_name="Ann", text="/reset", is_admin=True
        )
    )
    assert "reset" in (await reset.text()).lower() or "cleared" in (await reset.text()).lower()
    answer = await reply.text()
    assert reply.status is ReplyStatus.FAILED
    assert "Stopped before the end" in answer
    assert " w199" not in answer
    assert await remote.fake.wait_streams_closed(timeout_s=1.0)
    assert await stored(repository) == []


async def test_a_stop_sequence_closes_the_stream_at_once(kind: Kind, remote_factory: RemoteFactory) -> None:
    # The openai fake, like some servers, ignores stop sequences: the client must stop reading.
    # TGI stops on its own; its stream must end as well.
    remote = await remote_factory(model={"stop": ["END"]})
    remote.fake.script(Reply(("Short", " answer", " END", *(f" w{i}" for i in range(100))), delay_s=0.02))
    assert await remote.ask("hi") == ("Short answer ", ReplyStatus.ANSWERED)
    assert await remote.fake.wait_streams_closed(timeout_s=0.5)


async def test_connection_reset_before_the_first_token_is_retried(
    kind: Kind, remote_factory: RemoteFactory, repository: ChatRepository
) -> None:
    remote = await remote_factory()
    remote.fake.script(Cut(()))
    assert await remote.ask("hi") == ("Hello there!", ReplyStatus.ANSWERED)
    assert len(remote.fake.generation_requests) == 2
    assert await stored(repository) == [("user", "hi"), ("assistant", "Hello there!")]


async def test_a_stateless_completion_does_not_claim_the_message_was_saved(
    kind: Kind, remote_factory: RemoteFactory, repository: ChatRepository
) -> None:
    remote = await remote_factory()
    remote.fake.script(*[Status(503, {"error": "down"})] * (RETRIES + 1))
    reply = remote.engine.complete(Conversation("sys", [], "hi"), SamplingOverrides(), "api:user")
    assert await reply.text() == UNAVAILABLE_STATELESS_REPLY
    assert reply.status is ReplyStatus.FAILED
    assert await stored(repository) == []


async def test_a_completion_carries_the_servers_usage_where_the_stream_has_one(
    kind: Kind, remote_factory: RemoteFactory
) -> None:
    remote = await remote_factory()
    reply = remote.engine.complete(Conversation("sys", [], "hi"), SamplingOverrides(), "api:user")
    assert await reply.text() == "Hello there!"
    assert reply.finish_reason == "stop"
    if kind == "tgi":  # the last event's details: input_length 7, three tokens generated
        assert reply.usage == Usage(prompt_tokens=7, completion_tokens=3)
    else:  # the fake, like many servers, sends usage only when asked, and Chinwag does not ask
        assert reply.usage is None
