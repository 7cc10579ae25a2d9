"""The web adapter's chat API as a browser or an API client uses it: real server, real engine."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncGenerator, AsyncIterator

import httpx
import pytest

from adapters.web import WebAdapter, WebOptions, create
from adapters.web_chat import is_private_channel
from bot.backends.base import PreparedPrompt
from bot.backends.echo import EchoBackend
from bot.config import ModelConfig, Settings, parse_settings
from bot.engine import RESET_SKIPPED_REPLY
from bot.errors import ChinwagError, StorageError
from bot.ports import SamplingSettings, StoredMessage
from storage.repository import ChatRepository
from tests.adapters.doubles import IgnoresUnaddressed
from tests.bot.doubles import LineBackend
from tests.conftest import EngineFactory
from tests.fakes.waiting import wait_until
from tests.fakes.web_harness import SseEvent, read_sse, running_web, sse_events, web_client

PRIVATE = "p-" + "Q" * 32  # the shape of the id the chat page makes
ADMIN_KEY = "admin-secret-123"


async def test_a_conversation_over_http(make_engine: EngineFactory, repository: ChatRepository) -> None:
    async with running_web(await make_engine(), repository) as web, web_client(web) as client:
        first = await client.post("/api/channels/room-1/messages", json={"text": "hi"})
        assert first.status_code == 200
        assert first.json() == {"reply": "echo[0]: hi", "status": "answered"}
        second = await client.post("/api/channels/room-1/messages", json={"text": "yo", "author": "Ann"})
        assert second.json()["reply"] == "echo[2]: yo"
        other = await client.post("/api/channels/room-2/messages", json={"text": "hi"})
        assert other.json()["reply"] == "echo[0]: hi"


async def test_streaming_sends_one_event_per_chunk_then_done(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    async with running_web(await make_engine(), repository) as web, web_client(web) as client:
        async with client.stream(
            "POST",
            "/api/channels/s1/messages",
            json={"text": "hi"},
            headers={"Accept": "text/event-stream"},
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = await read_sse(response)
        deltas = [event.json()["delta"] for event in events if event.event == "message"]
        assert len(deltas) >= 2
        assert "".join(deltas) == "echo[0]: hi"
        assert events[-1].event == "done" and events[-1].json() == {"status": "answered"}

        async with client.stream(
            "POST", "/api/channels/s1/messages?stream=true", json={"text": "yo"}
        ) as again:
            events = await read_sse(again)
        assert "".join(e.json()["delta"] for e in events if e.event == "message") == "echo[2]: yo"


async def test_a_stream_waiting_in_the_models_queue_gets_its_place_before_its_text(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    """The model answers one at a time: the streams behind the running one get `event: queue`
    with their place once they waited 2 s, again when it changes, and `null` before their text."""
    backend = LineBackend()
    backend.hold("first", "second")
    events: dict[str, list[SseEvent]] = {"first": [], "second": [], "third": []}

    def places(text: str) -> list[int | None]:
        return [event.json()["position"] for event in events[text] if event.event == "queue"]

    async with running_web(await make_engine(backend), repository) as web, web_client(web) as client:

        async def stream(text: str) -> None:
            url = f"/api/channels/q-{text}/messages?stream=true"
            async with client.stream("POST", url, json={"text": text}) as response:
                async for event in sse_events(response):
                    events[text].append(event)

        streams = [asyncio.create_task(stream("first"))]
        await wait_until(lambda: backend.running == ["first"], what="the first reply has the model")
        streams += [asyncio.create_task(stream("second")), asyncio.create_task(stream("third"))]
        await wait_until(lambda: places("second") == [1] and places("third") == [2], what="the places")
        backend.release("first")
        await wait_until(lambda: places("third") == [2, 1], what="the third moved up")
        backend.release("second")
        await asyncio.wait_for(asyncio.gather(*streams), 10)

    assert places("first") == []  # it never waited in line
    assert places("second") == [1, None]
    assert places("third") == [2, 1, None]
    for text in ("second", "third"):
        queue_events = [i for i, event in enumerate(events[text]) if event.event == "queue"]
        deltas = [i for i, event in enumerate(events[text]) if event.event == "message"]
        assert max(queue_events) < min(deltas)  # the place comes (and goes) before the text
        assert "".join(events[text][i].json()["delta"] for i in deltas) == f"echo[0]: {text}"
        assert events[text][-1].event == "done" and events[text][-1].json() == {"status": "answered"}


async def test_history_survives_a_reload(make_engine: EngineFactory, repository: ChatRepository) -> None:
    async with running_web(await make_engine(), repository) as web:
        async with web_client(web) as client:
            await client.post(f"/api/channels/{PRIVATE}/messages", json={"text": "hi"})
            await client.post(f"/api/channels/{PRIVATE}/messages", json={"text": "yo"})
        async with web_client(web) as reloaded:  # a new page load: nothing kept client-side
            history = (await reloaded.get(f"/api/channels/{PRIVATE}/messages")).json()["messages"]
            last_two = (await reloaded.get(f"/api/channels/{PRIVATE}/messages?limit=2")).json()["messages"]
            nothing = (await reloaded.get("/api/channels/never-used/messages")).json()["messages"]
    assert [(m["role"], m["content"]) for m in history] == [
        ("user", "hi"),
        ("assistant", "echo[0]: hi"),
        ("user", "yo"),
        ("assistant", "echo[2]: yo"),
    ]
    assert all("T" in m["created_at"] for m in history)
    user_message = (await repository.recent_messages(f"web:{PRIVATE}", limit=2))[0]
    assert user_message.author_id is not None and user_message.author_id.startswith("ip-")  # no address
    assert [m["content"] for m in last_two] == ["yo", "echo[2]: yo"]
    assert nothing == []


async def test_reset_of_a_named_channel_needs_the_admin_key(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    engine = await make_engine()
    async with running_web(engine, repository, admin_api_key=ADMIN_KEY) as web, web_client(web) as client:
        await client.post("/api/channels/room-1/messages", json={"text": "hi"})
        missing = await client.post("/api/channels/room-1/reset")
        wrong = await client.post("/api/channels/room-1/reset", headers={"Authorization": "Bearer nope"})
        assert (missing.status_code, wrong.status_code) == (401, 403)
        assert "admin key" in missing.json()["error"]
        typed = await client.post("/api/channels/room-1/messages", json={"text": "/reset"})
        assert "admin" in typed.json()["reply"]
        assert await repository.message_count("web:room-1") == 2

        done = await client.post(
            "/api/channels/room-1/reset", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
        assert done.status_code == 200
        assert "cleared" in done.json()["reply"] and done.json()["status"] == "command"
        assert (await client.get("/api/channels/room-1/messages")).json()["messages"] == []
        after = await client.post("/api/channels/room-1/messages", json={"text": "again"})
        assert after.json()["reply"] == "echo[0]: again"

    async with running_web(engine, repository) as web, web_client(web) as client:
        unconfigured = await client.post(
            "/api/channels/room-1/reset", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
        assert unconfigured.status_code == 403


async def test_a_private_channel_is_its_holders_to_clear_and_configure(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    async with running_web(await make_engine(), repository) as web, web_client(web) as client:
        url = f"/api/channels/{PRIVATE}"
        await client.post(f"{url}/messages", json={"text": "hi"})
        temperature = await client.post(f"{url}/messages", json={"text": "/temperature 0"})
        assert temperature.json()["reply"] == "Temperature set to 0 for this chat."
        named = await client.post("/api/channels/shared/messages", json={"text": "/temperature 0"})
        assert "admin" in named.json()["reply"]

        cleared = await client.post(f"{url}/reset")
        assert cleared.status_code == 200 and "cleared" in cleared.json()["reply"]
        assert (await client.get(f"{url}/messages")).json()["messages"] == []
    assert (await repository.get_settings(f"web:{PRIVATE}")).temperature == 0
    assert (await repository.get_settings("web:shared")).temperature is None
    assert is_private_channel(PRIVATE)
    assert not is_private_channel("p-short") and not is_private_channel("room-1")


async def test_the_admin_key_makes_staff_and_a_private_channel_only_its_admin(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    """Staff pass the access lists and quotas: whoever holds the admin key. The holder of a
    private channel may run its admin commands, and is not staff by that."""
    service = IgnoresUnaddressed(await make_engine())
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with (
        running_web(service, repository, admin_api_key=ADMIN_KEY) as web,
        web_client(web) as client,
    ):
        await client.post("/api/channels/room-1/messages", json={"text": "anyone"})
        await client.post("/api/channels/room-1/messages", json={"text": "with the key"}, headers=admin)
        await client.post(f"/api/channels/{PRIVATE}/messages", json={"text": "my own"})
        await client.post(f"/api/channels/{PRIVATE}/messages", json={"text": "mine, keyed"}, headers=admin)
        await client.post(f"/api/channels/{PRIVATE}/reset")
        await client.post("/api/channels/room-1/reset", headers=admin)
    facts = [(event.text, event.is_admin, event.is_staff) for event in service.events]
    assert facts == [
        ("anyone", False, False),
        ("with the key", True, True),
        ("my own", True, False),
        ("mine, keyed", True, True),
        ("/reset", True, False),  # the private channel's holder
        ("/reset", True, True),  # with the key
    ]
    assert all(event.addressed and event.roles == () for event in service.events)


class HeldEcho(EchoBackend):
    """Echo that holds the message "held" until `release` is set, and reports each reset."""

    def __init__(self) -> None:
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self.resets: asyncio.Queue[str] = asyncio.Queue()

    def forget(self, context_key: str) -> None:
        self.resets.put_nowait(context_key)  # the engine calls this the moment it takes a /reset

    async def generate(self, prompt: PreparedPrompt, settings: SamplingSettings) -> AsyncGenerator[str, None]:
        if prompt.input_text.endswith(": held"):
            self.holding.set()
            await self.release.wait()
        async for chunk in super().generate(prompt, settings):
            yield chunk


async def test_a_reset_overtaken_by_another_reset_is_not_a_rate_limit(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    backend = HeldEcho()
    async with running_web(await make_engine(backend), repository) as web, web_client(web) as client:
        url = f"/api/channels/{PRIVATE}"
        async with asyncio.timeout(10), asyncio.TaskGroup() as tasks:
            held = tasks.create_task(client.post(f"{url}/messages", json={"text": "held"}))
            await backend.holding.wait()  # the channel's queue is blocked behind "held"
            first = tasks.create_task(client.post(f"{url}/reset"))
            await backend.resets.get()
            second = tasks.create_task(client.post(f"{url}/reset"))
            await backend.resets.get()  # both resets are queued; the second overtakes the first
            backend.release.set()
        history = (await client.get(f"{url}/messages")).json()["messages"]
    assert held.result().status_code == 200
    assert first.result().status_code == 200
    assert first.result().json() == {"reply": RESET_SKIPPED_REPLY, "status": "superseded"}
    assert second.result().status_code == 200 and "cleared" in second.result().json()["reply"]
    assert history == []


async def test_a_reset_over_the_rate_limit_is_still_a_429(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    async with running_web(await make_engine(rate_limit=1), repository) as web, web_client(web) as client:
        url = f"/api/channels/{PRIVATE}/reset"
        allowed, notified, dropped = [await client.post(url) for _ in range(3)]
    assert allowed.status_code == 200
    assert notified.status_code == 429 and "wait" in notified.json()["error"]
    assert dropped.status_code == 429


@pytest.mark.parametrize("channel", ["bad%20id", "a.b", "x" * 129, "%C3%A9t%C3%A9"])
async def test_invalid_channel_ids_are_refused(
    make_engine: EngineFactory, repository: ChatRepository, channel: str
) -> None:
    async with running_web(await make_engine(), repository) as web, web_client(web) as client:
        sent = await client.post(f"/api/channels/{channel}/messages", json={"text": "hi"})
        read = await client.get(f"/api/channels/{channel}/messages")
    assert sent.status_code == read.status_code == 422
    assert "channel id must be 1 to 128" in sent.json()["error"]


async def test_bodies_over_the_limit_get_413(make_engine: EngineFactory, repository: ChatRepository) -> None:
    """A chat message may be as large as `max_upload_bytes` (its files come inside it); every other
    body only `max_body_bytes`."""
    async with (
        running_web(await make_engine(), repository, max_body_bytes=1024, max_upload_bytes=2048) as web,
        web_client(web) as client,
    ):
        declared = await client.post("/api/channels/big/messages", json={"text": "x" * 3000})
        assert declared.status_code == 413
        assert declared.json() == {"error": "request body too large (at most 2048 bytes)"}
        completion = {"model": "m", "messages": [{"role": "user", "content": "x" * 1500}]}
        other_route = await client.post("/v1/chat/completions", json=completion)
        assert other_route.status_code == 413
        assert other_route.json() == {"error": "request body too large (at most 1024 bytes)"}

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
            yield b'{"text": "'
            for _ in range(30):
                yield b"y" * 100
            yield b'"}'

        streamed = await client.post(
            "/api/channels/big/messages", content=chunked(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413
        fine = await client.post("/api/channels/big/messages", json={"text": "z" * 1500})
        assert fine.json()["reply"] == "echo[0]: " + "z" * 1500  # over max_body_bytes, a message
        assert await repository.message_count("web:big") == 2  # nothing of the big ones stored


async def test_malformed_requests_get_clear_422s(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    async with running_web(await make_engine(), repository) as web, web_client(web) as client:
        broken = await client.post(
            "/api/channels/c/messages", content=b'{"text": "hi"', headers={"Content-Type": "application/json"}
        )
        assert broken.status_code == 422
        assert "malformed JSON" in broken.json()["error"]
        missing = await client.post("/api/channels/c/messages", json={"author": "Ann"})
        assert missing.status_code == 422
        assert missing.json()["details"] == [{"field": "text", "message": "Field required"}]
        wrong_type = await client.post("/api/channels/c/messages", json={"text": 5})
        assert wrong_type.status_code == 422 and "text" in wrong_type.json()["error"]
        bad_limit = await client.get("/api/channels/c/messages?limit=0")
        assert bad_limit.status_code == 422 and "limit" in bad_limit.json()["error"]


async def test_cors_preflight_only_for_configured_origins(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    async with (
        running_web(await make_engine(), repository, cors_origins=("https://chat.example",)) as web,
        web_client(web) as client,
    ):
        allowed = await client.options(
            "/api/channels/c/messages", headers={**preflight, "Origin": "https://chat.example"}
        )
        refused = await client.options(
            "/api/channels/c/messages", headers={**preflight, "Origin": "https://evil.example"}
        )
        simple = await client.get("/api/channels/c/messages", headers={"Origin": "https://chat.example"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://chat.example"
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "access-control-allow-origin" not in refused.headers
    assert simple.headers["access-control-allow-origin"] == "https://chat.example"

    async with (
        running_web(await make_engine(), repository) as web,
        web_client(web) as client,
    ):  # default: none
        default = await client.options(
            "/api/channels/c/messages", headers={**preflight, "Origin": "https://chat.example"}
        )
    assert "access-control-allow-origin" not in default.headers


async def test_a_resent_message_is_answered_once(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    async with running_web(await make_engine(), repository) as web, web_client(web) as client:
        body = {"text": "hi", "message_id": "m-1"}
        first = await client.post("/api/channels/d/messages", json=body)
        again = await client.post("/api/channels/d/messages", json=body)
        async with client.stream("POST", "/api/channels/d/messages?stream=true", json=body) as streamed:
            events = await read_sse(streamed)
    assert first.json()["reply"] == "echo[0]: hi"
    assert again.json() == {"reply": None, "status": "duplicate"}
    assert [event.event for event in events] == ["done"]
    assert events[0].json() == {"status": "duplicate"}


async def test_the_chat_page_and_its_files_are_served(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    async with running_web(await make_engine(), repository) as web, web_client(web) as client:
        page = await client.get("/")
        script = await client.get("/static/chat.js")
        style = await client.get("/static/chat.css")
        health = await client.get("/api/health")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "/static/chat.js" in page.text and "Advanced options" in page.text
    assert script.status_code == style.status_code == 200
    assert "innerHTML" not in script.text.replace("never innerHTML", "")
    assert health.json() == {"status": "ok"}


async def test_concurrent_channels_and_ordering_within_one(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    async with running_web(await make_engine(), repository) as web, web_client(web) as client:
        replies = await asyncio.gather(
            *(client.post(f"/api/channels/c{n}/messages", json={"text": f"m{n}"}) for n in range(20))
        )
        assert [r.json()["reply"] for r in replies] == [f"echo[0]: m{n}" for n in range(20)]
        for n in range(3):
            await client.post("/api/channels/one/messages", json={"text": f"x{n}"})
        history = (await client.get("/api/channels/one/messages")).json()["messages"]
    assert [m["content"] for m in history][::2] == ["x0", "x1", "x2"]


async def test_lifecycle_port_zero_stop_twice_and_a_taken_port(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    engine = await make_engine()
    adapter = WebAdapter(engine, repository, WebOptions(host="127.0.0.1", port=0))
    await adapter.start()
    port = adapter.port
    assert port > 0 and adapter.url == f"http://127.0.0.1:{port}"
    blocker = WebAdapter(engine, repository, WebOptions(host="127.0.0.1", port=port))
    with pytest.raises(ChinwagError, match="could not listen"):
        await blocker.start()
    await blocker.stop()
    await adapter.stop()
    await adapter.stop()
    with pytest.raises(RuntimeError):
        _ = adapter.port
    with socket.socket() as probe:  # the port was released
        probe.bind(("127.0.0.1", port))
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(timeout=2) as client:
            await client.get(f"http://127.0.0.1:{port}/api/health")


async def test_create_reads_the_web_settings_with_defaults(
    repository: ChatRepository, make_engine: EngineFactory
) -> None:
    settings = Settings()
    engine = await make_engine()
    adapter = create(settings.web, settings.model, engine, repository)
    assert adapter is not None and adapter.name == "web"
    for model, served_as in ((ModelConfig(backend="echo"), "echo"), (ModelConfig(name="tiny"), "tiny")):
        made = create(settings.web, model, engine, repository)
        assert made is not None
        transport = httpx.ASGITransport(app=made.app)  # a loopback client: no key needed
        async with httpx.AsyncClient(transport=transport, base_url="http://bot") as client:
            listed = (await client.get("/v1/models")).json()["data"]
        assert [item["id"] for item in listed] == [served_as]
    settings = parse_settings(
        {
            "web": {
                "host": "0.0.0.0",
                "port": 9000,
                "cors_origins": ["https://a.example"],
                "admin_api_key": "${ADMIN}",
                "api_keys": ["k1", "${UNSET_KEY}"],
                "max_body_bytes": 2048,
            }
        },
        environ={"ADMIN": "sesame"},
    )
    options = WebOptions.from_config(settings.web)
    assert options == WebOptions(
        host="0.0.0.0",
        port=9000,
        cors_origins=("https://a.example",),
        admin_api_key="sesame",
        api_keys=("k1",),
        max_body_bytes=2048,
    )
    assert WebOptions.from_config(Settings().web) == WebOptions(host="127.0.0.1", port=8080)


class BrokenHistory:
    """A repository whose database is down."""

    async def recent_messages(
        self, channel_key: str, *, limit: int, max_chars: int | None = None, max_id: int | None = None
    ) -> list[StoredMessage]:
        raise StorageError("database is locked")


async def test_a_storage_failure_is_a_polite_503(make_engine: EngineFactory) -> None:
    async with running_web(await make_engine(), BrokenHistory()) as web, web_client(web) as client:
        response = await client.get("/api/channels/c/messages")
    assert response.status_code == 503
    assert response.json() == {"error": "storage unavailable, please try again"}
