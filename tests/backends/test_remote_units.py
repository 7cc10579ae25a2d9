"""The pieces the remote backends share: retry policy, Retry-After, fitting, config and wiring."""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app import Application, build_backend
from bot.backends.base import backend_ready
from bot.backends.echo import EchoBackend
from bot.backends.openai_chat import OpenAIChatBackend
from bot.backends.remote_prompt import CHARS_PER_TOKEN, budget_chars, fit_conversation, render_plain
from bot.backends.remote_retry import (
    MAX_RETRY_AFTER_S,
    ChannelCancels,
    Failure,
    RetryPolicy,
    parse_retry_after,
    redact_url,
    stream_with_retries,
)
from bot.backends.tgi import TGIBackend
from bot.config import parse_settings
from bot.errors import BackendRejected, BackendStreamBroken, BackendUnavailable, ConfigError
from bot.events import ChatEvent
from bot.ports import Conversation, Turn, member_context_key
from bot.prompts import CUT_MARKER
from tests.fakes.inference import free_port

# --- retry policy ------------------------------------------------------------------------------


def test_backoff_doubles_with_jitter_and_honours_a_longer_retry_after() -> None:
    policy = RetryPolicy(max_retries=3, backoff_s=1.0)
    rng = random.Random(7)
    for retry in range(4):
        delay = policy.delay(retry, rng=rng)
        assert 0.5 * 2**retry <= delay < 1.5 * 2**retry
    assert policy.delay(0, retry_after_s=5.0, rng=rng) == 5.0
    assert policy.delay(0, retry_after_s=0.1, rng=rng) >= 0.5


def test_retry_after_header_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0


def test_urls_in_logs_lose_their_credentials() -> None:
    assert redact_url("https://user:pw@host.example:8443/v1?key=abc") == "https://host.example:8443/v1"


class Script:
    """`open_stream` for `stream_with_retries`: each call plays the next list of steps; a step is
    a chunk to yield or an exception to raise."""

    def __init__(self, *attempts: list[str | Exception]) -> None:
        self.attempts = list(attempts)
        self.calls = 0

    def __call__(self) -> AsyncIterator[str]:
        steps = self.attempts[min(self.calls, len(self.attempts) - 1)]
        self.calls += 1

        async def play() -> AsyncIterator[str]:
            for step in steps:
                if isinstance(step, Exception):
                    raise step
                yield step

        return play()


class Transient(Exception):
    pass


class Fatal(Exception):
    pass


def classify(exc: Exception) -> Failure:
    if isinstance(exc, Transient):
        return Failure(
            BackendUnavailable(str(exc)), transient=True, retry_after_s=exc.args[0] if exc.args else None
        )
    return Failure(BackendRejected("no", 400), transient=False)


async def collect(script: Script, policy: RetryPolicy, sleeps: list[float]) -> str:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return "".join([c async for c in stream_with_retries(script, classify, policy, what="t", sleep=sleep)])


async def test_transient_failures_before_the_first_token_are_retried_up_to_the_limit() -> None:
    sleeps: list[float] = []
    script = Script([Transient()], [Transient()], ["", "ok"])
    assert await collect(script, RetryPolicy(max_retries=2, backoff_s=0.01), sleeps) == "ok"
    assert script.calls == 3 and len(sleeps) == 2

    script = Script([Transient()])
    with pytest.raises(BackendUnavailable):
        await collect(script, RetryPolicy(max_retries=2, backoff_s=0.01), [])
    assert script.calls == 3


async def test_no_retry_after_the_first_token_nor_for_fatal_errors_nor_for_a_huge_retry_after() -> None:
    script = Script(["Hel", Transient()], ["never"])
    with pytest.raises(BackendStreamBroken):
        await collect(script, RetryPolicy(max_retries=3, backoff_s=0.0), [])
    assert script.calls == 1

    script = Script([Fatal()], ["never"])
    with pytest.raises(BackendRejected):
        await collect(script, RetryPolicy(max_retries=3, backoff_s=0.0), [])
    assert script.calls == 1

    script = Script([Transient(MAX_RETRY_AFTER_S + 1)], ["never"])
    with pytest.raises(BackendUnavailable, match="retry after"):
        await collect(script, RetryPolicy(max_retries=3, backoff_s=0.0), [])
    assert script.calls == 1


# --- fitting without a tokenizer ---------------------------------------------------------------------


def test_budget_is_the_window_minus_the_reply_in_characters() -> None:
    assert budget_chars(1000, 200) == 800 * CHARS_PER_TOKEN
    assert budget_chars(None, 200) is None
    assert budget_chars(100, 200) == 256  # never below a usable minimum


def test_fitting_drops_oldest_turns_and_keeps_system_and_message() -> None:
    history = [Turn("user" if i % 2 == 0 else "assistant", f"turn {i} " + "x" * 50) for i in range(10)]
    conversation = Conversation("sys", history, "new")
    fitted = fit_conversation(conversation, 300)
    assert fitted.system_prompt == "sys" and fitted.message == "new" and not fitted.message_cut
    assert 0 < len(fitted.history) < 10
    assert fitted.history[-1] == history[-1]
    assert fit_conversation(conversation, None).history == tuple(history)


def test_a_message_too_long_for_the_window_is_cut_in_the_middle() -> None:
    message = "BEGIN " + "m" * 5000 + " END"
    fitted = fit_conversation(Conversation("sys", [Turn("user", "old")], message), 400)
    assert fitted.message_cut and fitted.history == ()
    assert fitted.message.startswith("BEGIN") and fitted.message.endswith("END")
    assert CUT_MARKER in fitted.message and len(fitted.message) <= 400


def test_plain_prompt_matches_the_tutorial_format() -> None:
    fitted = fit_conversation(
        Conversation("Be kind.", [Turn("user", "a"), Turn("assistant", "b")], "c"), None
    )
    assert render_plain(fitted) == "System: Be kind.\nUser: a\nAssistant: b\nUser: c\nAssistant:"
    assert render_plain(fit_conversation(Conversation("", [], "c"), None)) == "User: c\nAssistant:"


def test_fitting_and_the_plain_prompt_read_each_group_turn_as_name_and_text() -> None:
    history = [Turn("user", "a", speaker="Alice"), Turn("assistant", "b"), Turn("user", "c", speaker="Bob")]
    fitted = fit_conversation(Conversation("Be kind.", history, "d", speaker="Carol"), None)
    assert fitted.message == "Carol: d"
    assert render_plain(fitted) == (
        "System: Be kind.\nUser: Alice: a\nAssistant: b\nUser: Bob: c\nUser: Carol: d\nAssistant:"
    )


def test_fitting_measures_the_names_of_the_turns() -> None:
    # Each turn is 1 character of text; with its 50-character name it takes 53 + 16 characters.
    history = [Turn("user", "x", speaker="N" * 50) for _ in range(10)]
    assert len(fit_conversation(Conversation("sys", history, "new"), 300).history) == 3
    unnamed = [Turn("user", "x") for _ in range(10)]
    assert len(fit_conversation(Conversation("sys", unnamed, "new"), 300).history) == 10


def test_a_cut_named_message_keeps_its_whole_name() -> None:
    message = "BEGIN " + "m" * 5000 + " END"
    fitted = fit_conversation(Conversation("sys", [], message, speaker="Carol"), 400)
    assert fitted.message_cut
    assert fitted.message.startswith("Carol: BEGIN") and fitted.message.endswith("END")
    assert CUT_MARKER in fitted.message and len(fitted.message) <= 400


async def test_cancelling_a_channel_sets_the_flags_of_its_members_generations_only() -> None:
    cancels = ChannelCancels()
    keys = ["web:room", member_context_key("web:room", "a"), member_context_key("web:room", "b")]
    others = ["web:room2", member_context_key("web:room2", "a"), "web:other"]
    with (
        cancels.track(keys[0]) as own,
        cancels.track(keys[1]) as alice,
        cancels.track(keys[2]) as bob,
        cancels.track(others[0]) as neighbour,
        cancels.track(others[1]) as neighbours_member,
        cancels.track(others[2]) as other,
        cancels.track(None) as stateless,
    ):
        cancels.cancel("web:room")
        assert own.is_set() and alice.is_set() and bob.is_set()
        assert not any(f.is_set() for f in (neighbour, neighbours_member, other, stateless))
    cancels.cancel("web:room")  # nothing tracked any more: a no-op


# --- configuration and wiring ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "error"),
    [
        ({"backend": "openai", "name": "m"}, "model.base_url is required"),
        ({"backend": "tgi"}, "model.base_url is required"),
        ({"backend": "openai", "base_url": "http://h/v1"}, "model.name is required"),
        ({"backend": "tgi", "base_url": "h:80"}, "'model.base_url': expected an http"),
        ({"backend": "tgi", "base_url": "http://h", "max_retries": -1}, "'model.max_retries'"),
        ({"backend": "tgi", "base_url": "http://h", "read_timeout_s": 0}, "'model.read_timeout_s'"),
        ({"backend": "tgi", "base_url": "http://h", "retry_timeout": 1}, "unknown key 'model.retry_timeout'"),
    ],
)
def test_remote_config_errors_are_one_line_naming_the_key(model: dict[str, object], error: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(error)) as caught:
        parse_settings({"model": model})
    assert "\n" not in str(caught.value)


def test_build_backend_makes_the_remote_backends_with_the_key_from_the_environment() -> None:
    settings = parse_settings(
        {
            "model": {
                "backend": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "name": "m",
                "api_key": "${CHINWAG_TEST_KEY}",
                "max_retries": 5,
            }
        },
        environ={"CHINWAG_TEST_KEY": "sk-from-env"},
    )
    backend = build_backend(settings.model)
    assert isinstance(backend, OpenAIChatBackend)
    assert backend._api_key == "sk-from-env"
    assert backend._retry.max_retries == 5
    tgi = build_backend(parse_settings({"model": {"backend": "tgi", "base_url": "http://127.0.0.1:9"}}).model)
    assert isinstance(tgi, TGIBackend)
    with pytest.raises(ConfigError, match=r"model\.prompt_format"):
        build_backend(
            parse_settings(
                {"model": {"backend": "tgi", "base_url": "http://h", "prompt_format": "chat_template"}}
            ).model
        )


@pytest.mark.parametrize("kind", ["openai", "tgi"])
async def test_the_bot_starts_while_the_server_is_down(kind: str, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}" + ("/v1" if kind == "openai" else "")
    settings = parse_settings(
        {
            "model": {
                "backend": kind,
                "base_url": url,
                "name": "m",
                "max_retries": 0,
                "connect_timeout_s": 0.5,
            },
            "storage": {"url": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"},
        }
    )
    async with Application(settings) as app:
        answer = await app.engine.ask(ChatEvent("test", "c", "u", "Ann", "hello?"))
        assert "not reachable" in answer
        assert not await backend_ready(app.backend)


async def test_backends_without_a_server_are_ready() -> None:
    assert await backend_ready(EchoBackend())


async def test_an_openai_prompt_goes_as_messages_and_a_tgi_prompt_as_one_text() -> None:
    conversation = Conversation(
        system_prompt="Be brief.",
        history=[Turn("user", "hi"), Turn("assistant", "hello")],
        message="cats?",
        context_key="test:c1",
    )
    chat = await OpenAIChatBackend(base_url="http://127.0.0.1:9/v1", model_name="m").prepare(conversation, 16)
    assert chat.input_text == ""
    assert [(m.role, m.content) for m in chat.messages] == [
        ("system", "Be brief."),
        ("user", "hi"),
        ("assistant", "hello"),
        ("user", "cats?"),
    ]
    plain = await TGIBackend(base_url="http://127.0.0.1:9").prepare(conversation, 16)
    assert plain.messages == ()
    assert plain.input_text == "System: Be brief.\nUser: hi\nAssistant: hello\nUser: cats?\nAssistant:"
