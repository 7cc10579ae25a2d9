"""The real adapter (real discord.py) against the fake REST API and gateway, with the real engine.

Conversations: the fake delivers what users type over the gateway, the bot answers through the same
REST API Discord would see; assertions are on what the fake received.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import SecretStr

from adapters.delivery import QUEUE_NOTICE_AFTER_S
from adapters.discord import MESSAGE_LIMIT, DiscordAdapter, create, discord_pieces
from bot.backends.base import PreparedPrompt
from bot.backends.echo import EchoBackend
from bot.config import DiscordConfig, Settings
from bot.errors import ChinwagError
from bot.ports import ChatService, LastAnsweredIds, SamplingSettings
from storage.db import Database
from storage.repository import ChatRepository
from tests.adapters.doubles import IgnoresUnaddressed
from tests.adapters.test_discord_events import LONG_TEXT, undo_fences
from tests.bot.doubles import LineBackend
from tests.conftest import EngineFactory
from tests.fakes.discord_server import (
    ADMIN_ROLE,
    BOT_ID,
    MANAGE_GUILD,
    MANAGER_ROLE,
    MEMBER_ROLE,
    FakeDiscord,
)
from tests.fakes.waiting import ReplyLog, wait_until

# Every command the bot publishes (the contract's and the community's).
COMMAND_SET = {"help", "reset", "system", "temperature", "persona", "context", "listen", "usage", "forget"}

TOKEN = "MTIz.TEST-discord-token-never-logged"
ADMIN_IN_CONFIG = 5150
GENERAL = 700_000_000_000_000_001
OTHER = 700_000_000_000_000_002
DM = 600_000_000_000_000_001

StartAdapter = Callable[..., Awaitable[DiscordAdapter]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(token=TOKEN, channel_ids=(GENERAL, OTHER)) as server:
        yield server


@pytest.fixture
async def start_adapter(fake: FakeDiscord, make_engine: EngineFactory) -> AsyncIterator[StartAdapter]:
    """Start adapters against the fake (each with its own engine unless one is given)."""
    adapters: list[DiscordAdapter] = []

    async def start(
        engine: ChatService | None = None,
        *,
        last_seen: LastAnsweredIds | None = None,
        attachment_timeout_s: float = 10.0,
        **options: Any,
    ) -> DiscordAdapter:
        """`options` are `discord:` config keys."""
        options.setdefault("edit_interval_s", 0.2)
        options.setdefault("ready_timeout_s", 10.0)
        config = DiscordConfig(
            token=SecretStr(TOKEN),
            admins=(ADMIN_IN_CONFIG,),
            api_base=fake.api_base,
            gateway_url=fake.gateway_url,
            **options,
        )
        adapter = DiscordAdapter(
            config,
            engine or await make_engine(),
            guild_ready_timeout_s=0.05,
            last_seen=last_seen,
            attachment_timeout_s=attachment_timeout_s,
        )
        adapters.append(adapter)
        await adapter.start()
        return adapter

    yield start
    for adapter in adapters:
        await adapter.stop()


async def replies(fake: FakeDiscord, channel_id: int, count: int, within: float = 10.0) -> list[str]:
    """Wait until the bot posted `count` messages in `channel_id` and their texts settled."""
    await fake.wait_for(lambda: len(fake.texts(channel_id)) >= count, within)
    # A streamed first message gets its final edit after the reply is done: wait until every
    # message shows the whole text of a finished reply.
    await wait_until(
        lambda: ReplyLog.of_this_test().all_final(fake.texts(channel_id), discord_pieces),
        within,
        what="the replies settle",
    )
    return fake.texts(channel_id)


def mention(text: str) -> str:
    return f"<@{BOT_ID}> {text}"


# --- conversations -----------------------------------------------------------------------------


async def test_a_dm_is_answered(fake: FakeDiscord, start_adapter: StartAdapter) -> None:
    adapter = await start_adapter()
    await adapter.start()  # already started: nothing happens
    assert fake.identifies == 1
    question = fake.push_message(DM, "hi")
    assert await replies(fake, DM, 1) == ["echo[0]: hi"]
    sent = fake.sent[0]
    assert len(sent.versions) == 1  # a quick reply is posted once, complete, not edited
    assert sent.reference == int(question["id"])  # quotes it: backfill reads what was delivered
    assert sent.allowed_mentions == {"parse": [], "replied_user": False}


async def test_guild_answers_only_mentions_replies_and_commands(
    fake: FakeDiscord, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    # The engine's part (unaddressed chatter is IGNORED outside `/listen all`) is played by the
    # double: see test_the_engine_leaves_guild_chatter_unanswered for the real engine.
    service = IgnoresUnaddressed(await make_engine())
    await start_adapter(service)
    fake.push_message(GENERAL, "just chatting", guild=True)
    question = fake.push_message(GENERAL, mention("hello"), guild=True)
    [first] = await replies(fake, GENERAL, 1)
    assert first == "echo[0]: hello"
    assert fake.sent[0].reference == int(question["id"])  # quotes the user's message
    fake.push_message(GENERAL, "and you?", guild=True, reply_to=fake.sent[0])
    fake.push_message(GENERAL, "/help", guild=True)
    fake.push_message(GENERAL, "/play some music", guild=True)  # another bot's command
    fake.push_message(GENERAL, mention("loop?"), guild=True, user_id=77, bot=True)
    texts = await replies(fake, GENERAL, 3)
    assert texts[1] == "echo[2]: and you?"
    assert texts[2].startswith("Commands:")
    # A channel is answered strictly in order: once the marker's answer is posted, an answer to
    # the other bot's command or to the bot would have been posted before it.
    fake.push_message(GENERAL, mention("marker"), guild=True)
    assert (await replies(fake, GENERAL, 4))[3:] == ["echo[4]: marker"]
    # The chatter reached the engine, marked; the other bot's message did not.
    assert [event.text for event in service.unaddressed] == ["just chatting", "/play some music"]
    assert len(service.events) == 6


async def test_the_engine_leaves_guild_chatter_unanswered(
    fake: FakeDiscord, start_adapter: StartAdapter
) -> None:
    await start_adapter()
    fake.push_message(GENERAL, "just chatting", guild=True)
    fake.push_message(GENERAL, mention("marker"), guild=True)
    # The channel is answered in order: an answer to the chatter would come first.
    assert await replies(fake, GENERAL, 1) == ["echo[0]: marker"]


async def test_an_ignored_guild_message_posts_nothing_and_shows_no_typing(
    fake: FakeDiscord, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    hold = asyncio.Event()
    service = IgnoresUnaddressed(await make_engine(), hold=hold)
    await start_adapter(service, typing_interval_s=0.2)
    fake.push_message(GENERAL, "just chatting", guild=True)
    await wait_until(lambda: len(service.unaddressed) == 1, what="the chatter reaches the engine")
    (event,) = service.unaddressed
    assert (event.channel, event.text, event.addressed, event.is_direct) == (
        str(GENERAL),
        "just chatting",
        False,
        False,
    )
    # While the engine holds the reply undecided, a DM is answered; the channel sees no typing
    # and no message for it.
    fake.push_message(DM, "meanwhile")
    assert await replies(fake, DM, 1) == ["echo[0]: meanwhile"]
    assert [channel for channel, _ in fake.typing if channel == GENERAL] == []
    released = time.monotonic()  # the fake's clock
    hold.set()
    fake.push_message(GENERAL, mention("and now?"), guild=True)
    assert await replies(fake, GENERAL, 1) == ["echo[0]: and now?"]
    assert all(at > released for channel, at in fake.typing if channel == GENERAL)


async def test_guild_events_carry_the_authors_roles_and_staff(
    fake: FakeDiscord, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    fake.give_roles(42, MEMBER_ROLE)  # cached from GUILD_CREATE, roles from each message
    fake.give_roles(44, MEMBER_ROLE, MANAGER_ROLE, name="Mia")
    service = IgnoresUnaddressed(await make_engine())
    await start_adapter(service)
    fake.push_message(GENERAL, "chatter", guild=True, user_id=42)
    fake.push_message(GENERAL, "chatter", guild=True, user_id=43, name="Bob")
    fake.push_message(GENERAL, "chatter", guild=True, user_id=44, name="Mia")
    fake.push_message(GENERAL, "chatter", guild=True, user_id=45, roles=(ADMIN_ROLE,))
    fake.push_message(GENERAL, "chatter", guild=True, user_id=ADMIN_IN_CONFIG)
    fake.push_message(DM, "hi", user_id=ADMIN_IN_CONFIG + 1)
    await wait_until(lambda: len(service.events) == 6, what="every message reaches the engine")
    facts = [(event.author_id, event.roles, event.is_staff, event.is_admin) for event in service.events]
    assert facts == [
        ("42", (str(MEMBER_ROLE),), False, False),
        ("43", (), False, False),
        ("44", (str(MANAGER_ROLE), str(MEMBER_ROLE)), True, True),  # Manage Server
        ("45", (str(ADMIN_ROLE),), True, True),  # Administrator
        (str(ADMIN_IN_CONFIG), (), True, True),  # configured
        (str(ADMIN_IN_CONFIG + 1), (), False, True),  # admin of their own DM, not staff
    ]
    assert [event.addressed for event in service.events] == [False] * 5 + [True]


async def test_reset_by_a_manager_clears_and_by_a_member_is_refused(
    fake: FakeDiscord, start_adapter: StartAdapter
) -> None:
    await start_adapter()
    fake.push_message(GENERAL, mention("one"), guild=True)
    await replies(fake, GENERAL, 1)
    fake.push_message(GENERAL, "/reset", guild=True, user_id=43)
    refused = (await replies(fake, GENERAL, 2))[1]
    assert "not allowed" in refused or "admin" in refused
    fake.push_message(GENERAL, mention("two"), guild=True)
    assert (await replies(fake, GENERAL, 3))[2] == "echo[2]: two"  # nothing was cleared
    fake.push_message(GENERAL, mention("/reset"), guild=True, user_id=44, roles=(MANAGER_ROLE,))
    confirmed = (await replies(fake, GENERAL, 4))[3].lower()
    assert "reset" in confirmed or "cleared" in confirmed
    fake.push_message(GENERAL, mention("three"), guild=True)
    assert (await replies(fake, GENERAL, 5))[4] == "echo[0]: three"
    for user_id, roles in ((45, (ADMIN_ROLE,)), (ADMIN_IN_CONFIG, ())):
        fake.push_message(OTHER, "/reset", guild=True, user_id=user_id, roles=roles)
    assert all("reset" in text.lower() or "cleared" in text.lower() for text in await replies(fake, OTHER, 2))


async def test_two_channels_keep_separate_histories(fake: FakeDiscord, start_adapter: StartAdapter) -> None:
    await start_adapter()
    fake.push_message(GENERAL, mention("a"), guild=True)
    await replies(fake, GENERAL, 1)
    fake.push_message(OTHER, mention("b"), guild=True)
    fake.push_message(GENERAL, mention("c"), guild=True)
    assert await replies(fake, OTHER, 1) == ["echo[0]: b"]
    assert (await replies(fake, GENERAL, 2))[1] == "echo[2]: c"


class FixedBackend(EchoBackend):
    """Answers every message with the same text, streamed in chunks of 500 characters."""

    def __init__(self, text: str) -> None:
        self._text = text

    async def generate(self, prompt: PreparedPrompt, settings: SamplingSettings) -> AsyncGenerator[str, None]:
        for start in range(0, len(self._text), 500):
            yield self._text[start : start + 500]


async def test_a_long_reply_arrives_as_several_balanced_messages(
    fake: FakeDiscord, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    await start_adapter(await make_engine(FixedBackend(LONG_TEXT), model={"max_new_tokens": 8192}))
    fake.push_message(DM, "tell me everything")
    expected = discord_pieces(LONG_TEXT)
    texts = await replies(fake, DM, len(expected))
    await fake.wait_for(lambda: fake.texts(DM) == expected, 5)
    assert all(len(text) <= MESSAGE_LIMIT for text in texts)
    assert undo_fences(fake.texts(DM)) == LONG_TEXT


class SlowBackend(EchoBackend):
    """Echo that takes `delay_s` per chunk, so a reply streams over a few seconds."""

    def __init__(self, delay_s: float) -> None:
        self._delay_s = delay_s

    async def generate(self, prompt: PreparedPrompt, settings: SamplingSettings) -> AsyncGenerator[str, None]:
        async for chunk in super().generate(prompt, settings):
            await asyncio.sleep(self._delay_s)
            yield chunk


async def test_a_slow_reply_streams_as_throttled_edits_with_typing(
    fake: FakeDiscord, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    await start_adapter(await make_engine(SlowBackend(0.1)), edit_interval_s=0.4, typing_interval_s=0.3)
    words = " ".join(f"w{n}" for n in range(20))
    fake.push_message(GENERAL, mention(words), guild=True)
    await fake.wait_for(lambda: fake.texts(GENERAL) == [f"echo[0]: {words}"], 10)
    versions = fake.sent[0].versions
    assert len(versions) >= 3  # posted early, then edited
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(versions)]
    assert min(gaps) >= 0.35
    assert len(fake.typing) >= 2
    assert {channel for channel, _ in fake.typing} == {GENERAL}


async def test_replies_waiting_in_the_models_queue_show_their_place_until_their_text(
    fake: FakeDiscord, start_adapter: StartAdapter, make_engine: EngineFactory, repository: ChatRepository
) -> None:
    """The model answers one at a time: while it writes the first reply, the other two wait, and
    after 2 s in line each shows "⏳ #N in line" (quoting the question), edited as the line moves;
    the reply's text then replaces it in that same message."""
    backend = LineBackend()
    backend.hold("first", "second")
    await start_adapter(await make_engine(backend), edit_interval_s=0.2, typing_interval_s=0.5)
    fake.push_message(DM, "first")
    await wait_until(lambda: backend.running == ["first"], what="the first reply has the model")
    second = fake.push_message(GENERAL, mention("second"), guild=True)
    third = fake.push_message(OTHER, mention("third"), guild=True)
    await wait_until(lambda: backend.places() == [None, 1, 2], what="two replies wait in line")
    queued_at = asyncio.get_running_loop().time()
    await fake.wait_for(
        lambda: fake.texts(GENERAL) == ["⏳ #1 in line"] and fake.texts(OTHER) == ["⏳ #2 in line"]
    )
    first_notice = min(sent.versions[0][0] for sent in fake.sent)
    assert first_notice - queued_at >= QUEUE_NOTICE_AFTER_S - 0.6  # minus the 0.5 s poll
    assert fake.texts(DM) == []  # the running reply has no place in line: "typing…" only
    by_channel = {sent.channel_id: sent for sent in fake.sent}
    assert by_channel[GENERAL].reference == int(second["id"])  # quoting, as the reply will
    assert by_channel[OTHER].reference == int(third["id"])

    backend.release("first")
    await fake.wait_for(
        lambda: fake.texts(OTHER) == ["⏳ #1 in line"] and fake.texts(DM) == ["echo[0]: first"]
    )
    assert fake.texts(GENERAL) == ["⏳ #1 in line"]  # it left the line: the place stays until its text
    # Typing goes on while it waits (every typing_interval_s: waited for, not assumed to have come
    # already, as a loaded machine may not have sent the next one yet).
    await fake.wait_for(lambda: max(at for channel, at in fake.typing if channel == OTHER) > first_notice)

    backend.release("second")
    await fake.wait_for(
        lambda: fake.texts(GENERAL) == ["echo[0]: second"] and fake.texts(OTHER) == ["echo[0]: third"]
    )
    # Each placeholder became its reply: one message per channel, none left over.
    assert [text for _, text in by_channel[OTHER].versions] == [
        "⏳ #2 in line",
        "⏳ #1 in line",
        "echo[0]: third",
    ]
    assert [text for _, text in by_channel[GENERAL].versions] == ["⏳ #1 in line", "echo[0]: second"]
    assert [len(fake.texts(channel)) for channel in (DM, GENERAL, OTHER)] == [1, 1, 1]
    for channel, text in ((DM, "first"), (GENERAL, "second"), (OTHER, "third")):
        stored = await repository.recent_messages(f"discord:{channel}", limit=10)
        assert [(m.role, m.content) for m in stored] == [("user", text), ("assistant", f"echo[0]: {text}")]


async def test_one_channel_stays_in_order_while_30_channels_talk(
    fake: FakeDiscord, start_adapter: StartAdapter
) -> None:
    await start_adapter()
    others = [DM + 100 + n for n in range(30)]
    for n in range(5):
        fake.push_message(DM, f"m{n}")
        for channel in others:
            fake.push_message(channel, f"c{n}", user_id=channel)
    texts = await replies(fake, DM, 5, within=20)
    assert texts == [f"echo[{2 * n}]: m{n}" for n in range(5)]
    await fake.wait_for(lambda: all(len(fake.texts(channel)) == 5 for channel in others), 20)
    assert all(fake.texts(channel)[-1] == "echo[8]: c4" for channel in others)


async def test_rate_limits_on_message_create_are_waited_out(
    fake: FakeDiscord, start_adapter: StartAdapter
) -> None:
    await start_adapter()
    fake.fail_next("POST", f"/channels/{DM}/messages", times=2, retry_after=0.3)
    fake.push_message(DM, "hi")
    assert await replies(fake, DM, 1) == ["echo[0]: hi"]
    attempts = [call for call in fake.calls if call.method == "POST" and call.path.endswith(f"{DM}/messages")]
    assert len(attempts) == 3
    assert attempts[-1].at - attempts[0].at >= 0.5


async def test_restart_on_the_same_database_keeps_history(
    fake: FakeDiscord, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    first = await start_adapter()
    fake.push_message(DM, "one")
    await replies(fake, DM, 1)
    await first.stop()
    await first.stop()  # idempotent
    await start_adapter(await make_engine())
    fake.push_message(DM, "two")
    assert (await replies(fake, DM, 2))[1] == "echo[2]: two"
    assert fake.identifies == 2


async def test_a_dropped_gateway_is_resumed_and_missed_messages_replayed(
    fake: FakeDiscord, start_adapter: StartAdapter
) -> None:
    await start_adapter()
    fake.push_message(DM, "before")
    await replies(fake, DM, 1)
    await fake.drop_connection()
    fake.push_message(DM, "while away")  # kept for the resume
    assert (await replies(fake, DM, 2))[1] == "echo[2]: while away"
    assert fake.resumes == 1
    assert fake.identifies == 1


async def test_an_event_the_library_cannot_parse_does_not_stop_receiving(
    fake: FakeDiscord, start_adapter: StartAdapter
) -> None:
    await start_adapter()
    fake.dispatch("MESSAGE_CREATE", {"id": "1"})  # no channel_id: discord.py's parser fails
    await fake.wait_for(lambda: fake.identifies == 2, 10)  # logged, then connected afresh
    fake.push_message(DM, "still there?")
    assert await replies(fake, DM, 1) == ["echo[0]: still there?"]
    # The old socket is closed: nothing arrives twice. Checked with a marker: the DM is answered
    # in order, so a second answer to the message would be posted before the marker's.
    fake.push_message(DM, "marker")
    assert await replies(fake, DM, 2) == ["echo[0]: still there?", "echo[2]: marker"]


async def test_backfill_answers_what_arrived_while_the_bot_was_away(
    fake: FakeDiscord, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    seen = fake.push_message(GENERAL, mention("old"), guild=True, deliver=False)
    fake.push_message(GENERAL, "not for me", guild=True, deliver=False)
    fake.push_message(GENERAL, mention("missed"), guild=True, deliver=False)

    async def last_seen() -> Mapping[str, str]:
        return {str(GENERAL): seen["id"]}

    service = IgnoresUnaddressed(await make_engine())
    await start_adapter(service, last_seen=last_seen)
    assert await replies(fake, GENERAL, 1) == ["echo[0]: missed"]
    # Backfill hands over only addressed messages: the chatter never reached the engine.
    assert [(event.text, event.redelivered) for event in service.events] == [("missed", True)]


async def test_slash_commands_are_synced_and_answered(fake: FakeDiscord, start_adapter: StartAdapter) -> None:
    await start_adapter()
    assert {command["name"] for command in fake.commands} == COMMAND_SET
    fake.push_interaction(GENERAL, "reset")
    await fake.wait_for(lambda: len(fake.interaction_responses) == 2, 5)
    deferred, refused = fake.interaction_responses
    assert deferred["type"] == 5  # "thinking…", answered by the follow-up
    assert refused["type"] == "followup"
    assert "not allowed" in refused["data"]["content"] or "admin" in refused["data"]["content"]
    fake.push_interaction(GENERAL, "reset", permissions=MANAGE_GUILD)
    await fake.wait_for(lambda: len(fake.interaction_responses) == 4, 5)
    assert "reset" in fake.interaction_responses[3]["data"]["content"].lower()
    fake.push_interaction(DM, "temperature", {"value": "0.3"}, guild=False)
    await fake.wait_for(lambda: len(fake.interaction_responses) == 6, 5)
    assert "0.3" in fake.interaction_responses[5]["data"]["content"]


async def test_slash_commands_carry_the_authors_roles_and_staff(
    fake: FakeDiscord, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    service = IgnoresUnaddressed(await make_engine())
    await start_adapter(service)
    fake.push_interaction(GENERAL, "help", roles=(MEMBER_ROLE,))
    fake.push_interaction(GENERAL, "help", user_id=44, permissions=MANAGE_GUILD)
    fake.push_interaction(DM, "help", guild=False)
    await wait_until(lambda: len(service.events) == 3, what="the commands reach the engine")
    facts = [(event.roles, event.is_staff, event.is_admin, event.addressed) for event in service.events]
    assert facts == [
        ((str(MEMBER_ROLE),), False, False, True),
        ((), True, True, True),  # Manage Server
        ((), False, True, True),  # admin of their own DM, not staff
    ]


# --- lifecycle and secrets ---------------------------------------------------------------------


async def test_the_token_never_reaches_the_logs(
    fake: FakeDiscord, start_adapter: StartAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    adapter = await start_adapter()
    fake.push_message(DM, "hi")
    await replies(fake, DM, 1)
    await fake.drop_connection()  # the RESUME payload carries the token
    await fake.wait_for(lambda: fake.resumes == 1, 10)
    await adapter.stop()
    assert caplog.records
    assert all(TOKEN not in record.getMessage() for record in caplog.records)


async def test_a_refused_token_fails_start_cleanly(fake: FakeDiscord, make_engine: EngineFactory) -> None:
    config = DiscordConfig(token=SecretStr("wrong"), api_base=fake.api_base, gateway_url=fake.gateway_url)
    adapter = DiscordAdapter(config, await make_engine())
    with pytest.raises(ChinwagError, match="refused"):
        await adapter.start()
    await adapter.stop()


async def test_an_unreachable_api_fails_start_cleanly(make_engine: EngineFactory) -> None:
    config = DiscordConfig(
        token=SecretStr(TOKEN), api_base="http://127.0.0.1:9/api/v10", gateway_url="ws://127.0.0.1:9/"
    )
    adapter = DiscordAdapter(config, await make_engine())
    with pytest.raises(ChinwagError, match="cannot reach"):
        await adapter.start()
    await adapter.stop()


async def test_no_ready_in_time_fails_start_cleanly(fake: FakeDiscord, make_engine: EngineFactory) -> None:
    config = DiscordConfig(
        token=SecretStr(TOKEN),
        api_base=fake.api_base,
        gateway_url="ws://127.0.0.1:9/",  # no gateway
        ready_timeout_s=1.0,
    )
    adapter = DiscordAdapter(config, await make_engine())
    with pytest.raises(ChinwagError, match="not ready"):
        await adapter.start()
    await adapter.stop()


def test_create_needs_a_token(database: Database) -> None:
    unused = SimpleNamespace()
    assert create(Settings().discord, unused, unused) is None  # type: ignore[arg-type]
    settings = Settings(discord=DiscordConfig(token=SecretStr(TOKEN)))
    assert isinstance(create(settings.discord, unused, unused), DiscordAdapter)  # type: ignore[arg-type]


async def test_a_restarted_bot_answers_what_arrived_while_it_was_away(
    fake: FakeDiscord, make_engine: EngineFactory, database: Database
) -> None:
    """Backfill as `python -m bot run` wires it: `create()` gets the repository's record of where
    each channel stopped."""
    settings = Settings(
        discord=DiscordConfig(
            token=SecretStr(TOKEN),
            api_base=fake.api_base,
            gateway_url=fake.gateway_url,
            edit_interval_s=0.2,
            ready_timeout_s=10.0,
        )
    )
    engine = await make_engine()
    repository = ChatRepository(database)

    def last_answered() -> Awaitable[Mapping[str, str]]:
        return repository.last_platform_message_ids("discord")

    first = create(settings.discord, engine, last_answered)
    assert first is not None
    await first.start()
    fake.push_message(GENERAL, mention("before"), guild=True)
    assert await replies(fake, GENERAL, 1) == ["echo[0]: before"]
    await first.stop()

    fake.push_message(GENERAL, mention("while away"), guild=True, deliver=False)
    fake.push_message(GENERAL, "chatter not for the bot", guild=True, deliver=False)
    second = create(settings.discord, engine, last_answered)
    assert second is not None
    await second.start()
    try:
        assert await replies(fake, GENERAL, 2) == ["echo[0]: before", "echo[2]: while away"]
    finally:
        await second.stop()
