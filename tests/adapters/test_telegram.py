"""The real adapter (real python-telegram-bot) against the fake Bot API, with the real engine.

Conversations: the fake receives what users type, the bot answers through the same HTTP API a real
Telegram would see; assertions are on what the fake received.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import SecretStr

from adapters.delivery import QUEUE_NOTICE_AFTER_S
from adapters.telegram import TelegramAdapter, create
from adapters.telegram_format import telegram_html_pieces, visible_text
from bot.backends.base import PreparedPrompt
from bot.backends.echo import EchoBackend
from bot.config import Settings, TelegramConfig
from bot.errors import ChinwagError
from bot.ports import ChatService, ClaimRole, InboxItem, SamplingSettings
from storage.db import Database
from storage.inbox import UpdateInbox
from storage.locks import claim_exclusive
from storage.repository import ChatRepository
from tests.adapters.doubles import IgnoresUnaddressed
from tests.bot.doubles import LineBackend, SlowEchoBackend
from tests.conftest import EngineFactory
from tests.fakes.telegram_server import BOT_USERNAME, FakeTelegram
from tests.fakes.waiting import ReplyLog, wait_until

TOKEN = "123456:TEST-token-never-logged"
ADMIN_IN_CONFIG = 5150
GROUP = -1001000000001

StartAdapter = Callable[..., Awaitable[TelegramAdapter]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(token=TOKEN, max_long_poll_s=0.5) as server:
        yield server


@pytest.fixture
async def start_adapter(
    fake: FakeTelegram, database: Database, make_engine: EngineFactory
) -> AsyncIterator[StartAdapter]:
    """Start adapters on the shared database (each with its own engine unless one is given)."""
    adapters: list[TelegramAdapter] = []

    async def start(engine: ChatService | None = None, **options: Any) -> TelegramAdapter:
        options.setdefault("poll_timeout_s", 1)
        options.setdefault("edit_interval_s", 0.2)
        config = TelegramConfig(
            token=SecretStr(TOKEN), base_url=fake.base_url, admins=(ADMIN_IN_CONFIG,), **options
        )
        adapter = TelegramAdapter(config, engine or await make_engine(), *ports(database))
        adapters.append(adapter)
        await adapter.start()
        return adapter

    yield start
    for adapter in adapters:
        await adapter.stop()


def ports(database: Database) -> tuple[UpdateInbox, ClaimRole]:
    """The storage capabilities the composition root hands the adapter: its inbox and role claims."""
    return UpdateInbox(database, "telegram"), lambda name: claim_exclusive(database, name)


async def replies(fake: FakeTelegram, chat_id: int, count: int, within: float = 10.0) -> list[str]:
    """Wait until the bot sent `count` messages to `chat_id` and their texts settled."""
    await fake.wait_for(lambda: len(fake.texts(chat_id)) >= count, within)
    # A streamed first message gets its final edit after the reply is done: wait until every
    # message shows the whole text of a finished reply.
    await wait_until(
        lambda: ReplyLog.of_this_test().all_final(fake.texts(chat_id)), within, what="the replies settle"
    )
    return fake.texts(chat_id)


async def test_private_message_is_answered(fake: FakeTelegram, start_adapter: StartAdapter) -> None:
    await start_adapter()
    fake.push_message(111, "hi")
    assert await replies(fake, 111, 1) == ["echo[0]: hi"]
    fake.push_message(111, "yo")
    assert await replies(fake, 111, 2) == ["echo[0]: hi", "echo[2]: yo"]
    # Start-up published the command menu; private replies do not quote the user's message.
    assert [c["command"] for c in fake.commands] == [
        "help",
        "reset",
        "system",
        "temperature",
        "persona",
        "context",
        "listen",
        "usage",
        "forget",
    ]
    assert all(message.reply_to is None for message in fake.sent)


async def test_group_answers_only_mentions_replies_and_commands(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    # The engine's part (unaddressed chatter is IGNORED outside `/listen all`) is played by the
    # double: see test_the_engine_leaves_group_chatter_unanswered for the real engine.
    service = IgnoresUnaddressed(await make_engine())
    await start_adapter(service)
    fake.push_message(GROUP, "just chatting")
    fake.push_message(GROUP, "/help@SomeOtherBot")
    asked = fake.push_message(GROUP, f"@{BOT_USERNAME} what is tea?")
    first = (await replies(fake, GROUP, 1))[0]
    assert first == "echo[0]: what is tea?"
    assert fake.sent[0].reply_to == asked["message"]["message_id"]  # groups: the reply quotes the question

    fake.push_message(GROUP, "ignored again")
    fake.push_message(GROUP, "tell me more", reply_to=fake.sent[0])
    fake.push_message(GROUP, f"/help@{BOT_USERNAME}")
    texts = await replies(fake, GROUP, 3)
    assert texts[1] == "echo[2]: tell me more"
    assert "/reset" in texts[2]
    assert len(fake.texts(GROUP)) == 3
    # The chatter reached the engine, marked; another bot's command did not.
    assert [event.text for event in service.unaddressed] == ["just chatting", "ignored again"]
    assert [event.text for event in service.events if event.addressed] == [
        "what is tea?",
        "tell me more",
        f"/help@{BOT_USERNAME}",
    ]


async def test_the_engine_leaves_group_chatter_unanswered(
    fake: FakeTelegram, start_adapter: StartAdapter
) -> None:
    await start_adapter()
    fake.push_message(GROUP, "just chatting")
    fake.push_message(GROUP, f"@{BOT_USERNAME} marker")
    # The group's messages are answered in order: an answer to the chatter would come first.
    assert await replies(fake, GROUP, 1) == ["echo[0]: marker"]


async def test_unaddressed_group_messages_go_to_the_engine_and_an_ignored_one_posts_nothing(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory, database: Database
) -> None:
    hold = asyncio.Event()
    service = IgnoresUnaddressed(await make_engine(), hold=hold)
    await start_adapter(service)
    chatter = fake.push_message(GROUP, "lovely weather", user_id=42)
    await wait_until(lambda: len(service.unaddressed) == 1, what="the chatter reaches the engine")
    (event,) = service.unaddressed
    assert (event.channel, event.text, event.addressed, event.is_direct) == (
        str(GROUP),
        "lovely weather",
        False,
        False,
    )
    assert (event.is_admin, event.is_staff, event.sees_all_messages) == (False, False, False)
    # While the engine holds the reply undecided, another chat is answered; the group sees no
    # typing and no message for it.
    fake.push_message(111, "meanwhile")
    assert await replies(fake, 111, 1) == ["echo[0]: meanwhile"]
    assert [call for call in fake.calls_to("sendChatAction") if call.params["chat_id"] == GROUP] == []
    inbox = UpdateInbox(database, "telegram")
    assert await inbox.state(int(chatter["update_id"])) == "pending"  # not done before its reply is
    released = time.monotonic()  # the fake's clock
    hold.set()

    async def chatter_done() -> bool:
        return await inbox.state(int(chatter["update_id"])) == "done"

    await wait_until(chatter_done, what="the ignored update is marked done")
    asked = fake.push_message(GROUP, f"@{BOT_USERNAME} and now?", user_id=42)
    assert await replies(fake, GROUP, 1) == ["echo[0]: and now?"]
    assert fake.sent[-1].reply_to == asked["message"]["message_id"]
    assert [call.params["chat_id"] for call in fake.calls_to("sendMessage")] == [111, GROUP]
    # Typing in the group, if any, was for the answer.
    assert all(
        call.at > released for call in fake.calls_to("sendChatAction") if call.params["chat_id"] == GROUP
    )


async def test_reset_by_group_admin_clears_and_by_others_is_refused(
    fake: FakeTelegram, start_adapter: StartAdapter
) -> None:
    fake.admins[GROUP] = {7}
    await start_adapter()
    fake.push_message(GROUP, f"@{BOT_USERNAME} remember me", user_id=42)
    await replies(fake, GROUP, 1)

    fake.push_message(GROUP, f"/reset@{BOT_USERNAME}", user_id=42)  # not an admin
    refused = (await replies(fake, GROUP, 2))[1]
    assert "not allowed" in refused or "admin" in refused
    fake.push_message(GROUP, f"@{BOT_USERNAME} still there?", user_id=42)
    assert (await replies(fake, GROUP, 3))[2] == "echo[2]: still there?"  # nothing was cleared

    fake.push_message(GROUP, f"/reset@{BOT_USERNAME}", user_id=7)  # a chat administrator
    assert "reset" in (await replies(fake, GROUP, 4))[3].lower()
    fake.push_message(GROUP, f"@{BOT_USERNAME} /reset", user_id=ADMIN_IN_CONFIG)  # leading mention
    assert "cleared" in (await replies(fake, GROUP, 5))[4].lower()
    fake.push_message(GROUP, f"@{BOT_USERNAME} fresh start", user_id=42)
    assert (await replies(fake, GROUP, 6))[5] == "echo[0]: fresh start"
    assert len(fake.calls_to("getChatAdministrators")) == 1  # cached


async def test_group_staff_is_known_for_every_message_with_one_admin_lookup_per_group(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    """Staff pass the access lists and quotas, so every group message needs the chat's
    administrators; a burst asks Telegram once per group (per `admin_cache_s`)."""
    other_group = -1001000000002
    fake.admins[GROUP] = {7}
    fake.admins[other_group] = {42}
    service = IgnoresUnaddressed(await make_engine())
    await start_adapter(service)
    for round_ in range(5):
        for user_id in (42, 7, ADMIN_IN_CONFIG):
            fake.push_message(GROUP, f"chatter {round_} from {user_id}", user_id=user_id)
        fake.push_message(other_group, f"chatter {round_}", user_id=42)
    fake.push_message(111, "private", user_id=111)
    fake.push_message(GROUP, f"@{BOT_USERNAME} addressed", user_id=7)
    await wait_until(lambda: len(service.events) == 22, what="every message reaches the engine")
    assert await replies(fake, GROUP, 1) == ["echo[0]: addressed"]

    asked = sorted(call.params["chat_id"] for call in fake.calls_to("getChatAdministrators"))
    assert asked == sorted([GROUP, other_group])  # once per group; never for a private chat
    staff = {(event.channel, event.author_id): event.is_staff for event in service.events}
    assert staff == {
        (str(GROUP), "42"): False,
        (str(GROUP), "7"): True,  # a chat administrator
        (str(GROUP), str(ADMIN_IN_CONFIG)): True,  # configured
        (str(other_group), "42"): True,  # administrators are per group
        ("111", "111"): False,  # the user of a private chat is admin there, not staff
    }
    private = next(event for event in service.events if event.is_direct)
    assert private.is_admin and private.sees_all_messages


async def test_a_zero_admin_cache_asks_for_every_group_message(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    service = IgnoresUnaddressed(await make_engine())
    await start_adapter(service, admin_cache_s=0.0)
    for n in range(3):
        fake.push_message(GROUP, f"chatter {n}", user_id=42)
    fake.push_message(GROUP, "from a configured admin", user_id=ADMIN_IN_CONFIG)  # known: not asked
    await wait_until(lambda: len(service.events) == 4, what="every message reaches the engine")
    assert len(fake.calls_to("getChatAdministrators")) == 3


async def test_a_failed_admin_lookup_is_logged_once_and_loses_no_message(
    fake: FakeTelegram,
    start_adapter: StartAdapter,
    make_engine: EngineFactory,
    database: Database,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.admins[GROUP] = {7}
    fake.fail_next("getChatAdministrators", status=400, description="Bad Request: chat not found")
    service = IgnoresUnaddressed(await make_engine())
    await start_adapter(service)
    with caplog.at_level(logging.WARNING, logger="adapters.telegram"):
        pushed = [fake.push_message(GROUP, f"chatter {n}", user_id=7) for n in range(3)]
        fake.push_message(GROUP, f"@{BOT_USERNAME} still answered?", user_id=7)
        assert await replies(fake, GROUP, 1) == ["echo[0]: still answered?"]
    assert len(service.events) == 4
    assert not any(event.is_staff for event in service.events)  # not known to be staff
    assert len(fake.calls_to("getChatAdministrators")) == 1  # not asked again at every message
    failures = [r for r in caplog.records if "could not read the administrators" in r.getMessage()]
    assert len(failures) == 1
    inbox = UpdateInbox(database, "telegram")

    async def all_done() -> bool:
        return all([await inbox.state(int(update["update_id"])) == "done" for update in pushed])

    await wait_until(all_done, what="the unaddressed updates are marked done")


async def test_group_events_say_whether_getme_lets_the_bot_read_all_group_messages(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    fake.can_read_all_group_messages = True  # privacy mode off (BotFather's /setprivacy)
    service = IgnoresUnaddressed(await make_engine())
    await start_adapter(service)
    fake.push_message(GROUP, "chatter")
    await wait_until(lambda: len(service.events) == 1, what="the chatter reaches the engine")
    assert service.events[0].sees_all_messages and not service.events[0].addressed


async def test_an_unaddressed_update_left_pending_by_a_crash_is_handled_at_the_next_start(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory, database: Database
) -> None:
    """kill -9 safety holds for unaddressed messages too: one stored but not done is handed to
    the engine again (redelivered) at the next start, then marked done."""
    inbox = UpdateInbox(database, "telegram")
    update = {
        "update_id": 50,
        "message": {
            "message_id": 3,
            "date": 1,
            "chat": {"id": GROUP, "type": "supergroup", "title": "Group"},
            "from": {"id": 42, "is_bot": False, "first_name": "Alice"},
            "text": "chatter before the crash",
        },
    }
    await inbox.add([InboxItem(50, update)])
    service = IgnoresUnaddressed(await make_engine())
    await start_adapter(service)
    await wait_until(lambda: len(service.events) == 1, what="the pending update reaches the engine")
    (event,) = service.events
    assert (event.text, event.addressed, event.redelivered) == ("chatter before the crash", False, True)

    async def done() -> bool:
        return await inbox.state(50) == "done"

    await wait_until(done, what="the recovered update is marked done")
    assert fake.sent == []


async def test_anonymous_group_admin_may_reset(fake: FakeTelegram, start_adapter: StartAdapter) -> None:
    await start_adapter()
    fake.push_message(GROUP, "/reset", user_id=1087968824, first_name="Group", sender_chat_id=GROUP)
    assert "reset" in (await replies(fake, GROUP, 1))[0].lower()


async def test_two_chats_keep_separate_histories(fake: FakeTelegram, start_adapter: StartAdapter) -> None:
    await start_adapter()
    fake.push_message(1, "a1")
    fake.push_message(2, "b1")
    fake.push_message(1, "a2")
    assert await replies(fake, 1, 2) == ["echo[0]: a1", "echo[2]: a2"]
    assert await replies(fake, 2, 1) == ["echo[0]: b1"]


async def test_forum_topics_keep_separate_histories(fake: FakeTelegram, start_adapter: StartAdapter) -> None:
    await start_adapter()
    fake.push_message(GROUP, f"@{BOT_USERNAME} in topic 3", thread_id=3)
    await replies(fake, GROUP, 1)
    fake.push_message(GROUP, f"@{BOT_USERNAME} in topic 4", thread_id=4)
    texts = await replies(fake, GROUP, 2)
    assert texts == ["echo[0]: in topic 3", "echo[0]: in topic 4"]
    assert [message.thread_id for message in fake.sent] == [3, 4]


class LongBackend(EchoBackend):
    """Answers with a fixed long text, streamed in small chunks."""

    def __init__(self, text: str) -> None:
        self.text = text

    async def generate(self, prompt: PreparedPrompt, settings: SamplingSettings) -> AsyncGenerator[str, None]:
        for start in range(0, len(self.text), 500):
            yield self.text[start : start + 500]


async def test_a_long_reply_arrives_as_several_exact_messages(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    text = "\n\n".join(f"Paragraph {i}. " + "blah " * 90 for i in range(22))[:10_000]
    assert len(text) == 10_000
    await start_adapter(await make_engine(LongBackend(text), model={"max_new_tokens": 8192}))
    fake.push_message(111, "tell me everything")
    # What users see is the text rendered (Markdown: paragraphs lose their trailing spaces).
    await fake.wait_for(lambda: "".join(fake.texts(111)) == visible_text(text), timeout=10)
    assert len(fake.texts(111)) >= 3
    assert all(len(piece) <= 4096 for piece in fake.texts(111))


class SlowBackend(EchoBackend):
    """Echo that takes `delay_s` per word, so replies stream over a few seconds."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    async def generate(self, prompt: PreparedPrompt, settings: SamplingSettings) -> AsyncGenerator[str, None]:
        async for chunk in super().generate(prompt, settings):
            await asyncio.sleep(self.delay_s)
            yield chunk


async def test_a_slow_reply_streams_as_throttled_edits_with_typing(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    await start_adapter(await make_engine(SlowBackend(0.25)), edit_interval_s=1.0, typing_interval_s=0.5)
    words = " ".join(f"w{i}" for i in range(10))
    fake.push_message(111, words)
    await fake.wait_for(lambda: fake.texts(111) == [f"echo[0]: {words}"], timeout=10)
    (message,) = fake.sent
    assert len(message.versions) >= 2  # sent early, then edited as it grew
    edits = [call.at for call in fake.calls_to("editMessageText")]
    sends = [call.at for call in fake.calls_to("sendMessage")]
    times = sends + edits
    assert all(later - earlier >= 0.9 for earlier, later in itertools.pairwise(times))
    assert len(fake.calls_to("sendChatAction")) >= 2


async def test_messages_of_one_chat_stay_in_order_while_30_chats_talk(
    fake: FakeTelegram, start_adapter: StartAdapter
) -> None:
    await start_adapter()
    for round_ in range(4):
        for chat in range(1000, 1030):
            fake.push_message(chat, f"c{chat} m{round_}")
    await fake.wait_for(lambda: all(len(fake.texts(chat)) == 4 for chat in range(1000, 1030)), timeout=30)
    for chat in range(1000, 1030):
        assert fake.texts(chat) == [f"echo[{2 * i}]: c{chat} m{i}" for i in range(4)]


async def test_rate_limits_are_waited_out(fake: FakeTelegram, start_adapter: StartAdapter) -> None:
    await start_adapter()
    fake.fail_next("sendMessage", times=2, retry_after=1)
    fake.fail_next("getUpdates", times=1, retry_after=1)
    fake.push_message(111, "hi")
    assert await replies(fake, 111, 1, within=15) == ["echo[0]: hi"]
    sends = fake.calls_to("sendMessage")
    assert len(sends) == 3 and sends[-1].at - sends[0].at >= 1.9


async def test_server_errors_are_retried(fake: FakeTelegram, start_adapter: StartAdapter) -> None:
    await start_adapter()
    fake.fail_next("sendMessage", times=1, status=500)
    fake.push_message(111, "hi")
    assert await replies(fake, 111, 1, within=15) == ["echo[0]: hi"]


async def test_restart_on_the_same_database_keeps_history(
    fake: FakeTelegram, start_adapter: StartAdapter
) -> None:
    first = await start_adapter()
    fake.push_message(111, "hi")
    await replies(fake, 111, 1)
    await first.stop()
    await start_adapter()
    fake.push_message(111, "again")
    assert await replies(fake, 111, 2) == ["echo[0]: hi", "echo[2]: again"]
    assert fake.unconfirmed == []


async def test_a_migrated_group_is_followed_with_its_history(
    fake: FakeTelegram, start_adapter: StartAdapter, database: Database
) -> None:
    old, new = -4001, -1004001
    await start_adapter()
    fake.push_message(old, f"@{BOT_USERNAME} one")
    assert await replies(fake, old, 1) == ["echo[0]: one"]
    fake.migrate(old, new)
    fake.push_message(old, f"@{BOT_USERNAME} two")  # sent just before the upgrade
    # "two" was read in the old chat (its history, N=2); its reply followed the group to the new id.
    assert await replies(fake, new, 1) == ["echo[2]: two"]
    fake.push_message(new, f"@{BOT_USERNAME} three")
    # The history followed the group: "three" sees one, its answer, two and its answer.
    assert await replies(fake, new, 2) == ["echo[2]: two", "echo[4]: three"]
    repository = ChatRepository(database)
    assert await repository.message_count(f"telegram:{old}") == 0
    moved = await repository.recent_messages(f"telegram:{new}", limit=10)
    assert [m.content for m in moved if m.role == "user"] == ["one", "two", "three"]


def announce_upgrade(fake: FakeTelegram, old: int, new: int) -> None:
    """Telegram's notice, in the old group, that it became the supergroup `new`."""
    fake.push_update(
        {
            "message": {
                "message_id": 9000,
                "date": 1,
                "chat": {"id": old, "type": "group", "title": "Group"},
                "from": {"id": 42, "is_bot": False, "first_name": "Alice"},
                "migrate_to_chat_id": new,
            }
        }
    )


async def test_a_migration_service_message_moves_history_and_settings(
    fake: FakeTelegram, start_adapter: StartAdapter, database: Database
) -> None:
    old, new = -4002, -1004002
    fake.admins[old] = {42}
    await start_adapter()
    fake.push_message(old, "/temperature 0.4", user_id=42)
    fake.push_message(old, f"@{BOT_USERNAME} one")
    assert (await replies(fake, old, 2))[1] == "echo[0]: one"
    # Telegram announces the upgrade in the old group; later messages arrive from the new id.
    announce_upgrade(fake, old, new)
    fake.push_message(new, f"@{BOT_USERNAME} two")
    assert await replies(fake, new, 1) == ["echo[2]: two"]
    repository = ChatRepository(database)
    assert (await repository.get_settings(f"telegram:{new}")).temperature == 0.4
    assert await repository.message_count(f"telegram:{old}") == 0


async def test_the_new_group_waits_for_the_move_while_the_old_one_is_busy(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory, database: Database
) -> None:
    """The upgrade notice is ordered with the new supergroup: the new group's first message is
    answered after the history moved, even while the old group's worker is held up by a reply."""
    old, new = -4003, -1004003
    backend = SlowEchoBackend(delay_s=0)
    backend.gates["slow"] = asyncio.Event()
    await start_adapter(await make_engine(backend))
    fake.push_message(old, f"@{BOT_USERNAME} one")
    assert await replies(fake, old, 1) == ["echo[0]: one"]
    fake.push_message(old, f"@{BOT_USERNAME} slow")
    await wait_until(lambda: "slow" in backend.started, what="the old group's reply is generating")
    announce_upgrade(fake, old, new)
    two = fake.push_message(new, f"@{BOT_USERNAME} two")
    inbox = UpdateInbox(database, "telegram")

    async def two_received() -> bool:
        return await inbox.state(int(two["update_id"])) is not None

    await wait_until(two_received, what="the new group's message is received")
    backend.gates["slow"].set()
    # The new chat numbers its messages from 1 again, like the moved "one": it is not a duplicate.
    assert await replies(fake, new, 1) == ["echo[4]: two"]  # one, its answer, slow, its answer


async def test_updates_are_committed_before_they_are_confirmed(
    fake: FakeTelegram, start_adapter: StartAdapter, database: Database
) -> None:
    inbox = UpdateInbox(database, "telegram")
    seen_at_confirmation: list[Any] = []

    def check(call: Any) -> None:
        offset = call.params.get("offset")
        if (
            call.method == "getUpdates"
            and offset
            and offset > pushed["update_id"]
            and not seen_at_confirmation
        ):
            seen_at_confirmation.append(offset)
            # The confirming call may only come after the update is stored.
            asyncio.get_running_loop().create_task(record_state())

    async def record_state() -> None:
        seen_at_confirmation.append(await inbox.state(pushed["update_id"]))

    await start_adapter()
    fake.on_call = check
    pushed = fake.push_message(111, "hi")
    await replies(fake, 111, 1)
    await fake.wait_for(lambda: len(seen_at_confirmation) == 2)
    assert seen_at_confirmation[1] in ("pending", "done")
    await fake.wait_for(lambda: fake.unconfirmed == [], timeout=5)

    async def marked_done() -> bool:
        return await inbox.state(pushed["update_id"]) == "done"

    # Marked done just after the answer is delivered, which is as far as `replies` waits.
    await wait_until(marked_done, what="the answered update is marked done")


async def test_the_token_never_reaches_the_logs(
    fake: FakeTelegram, start_adapter: StartAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await start_adapter()
    fake.fail_next("sendMessage", times=1, retry_after=1)
    fake.push_message(111, "hi")
    await replies(fake, 111, 1, within=15)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "rate limited" in logged
    assert "TEST-token" not in logged and "TEST-token" not in caplog.text


async def test_a_refused_token_fails_start_cleanly(
    fake: FakeTelegram, database: Database, make_engine: EngineFactory
) -> None:
    config = TelegramConfig(token=SecretStr("999:wrong-token"), base_url=fake.base_url)
    adapter = TelegramAdapter(config, await make_engine(), *ports(database))
    with pytest.raises(ChinwagError, match="token was refused") as caught:
        await adapter.start()
    assert "wrong-token" not in str(caught.value)
    await adapter.stop()  # safe after a failed start, and twice
    await adapter.stop()


async def test_an_unreachable_api_fails_start_cleanly(database: Database, make_engine: EngineFactory) -> None:
    config = TelegramConfig(token=SecretStr(TOKEN), base_url="http://127.0.0.1:9/bot")
    adapter = TelegramAdapter(config, await make_engine(), *ports(database))
    with pytest.raises(ChinwagError, match="cannot reach"):
        await adapter.start()
    await adapter.stop()


def test_create_needs_a_token() -> None:
    unused = SimpleNamespace()
    assert create(Settings().telegram, unused, unused, unused) is None  # type: ignore[arg-type]
    with_token = Settings(telegram=TelegramConfig(token=SecretStr(TOKEN)))
    assert isinstance(create(with_token.telegram, unused, unused, unused), TelegramAdapter)  # type: ignore[arg-type]


def test_create_passes_the_configured_timings() -> None:
    unused = SimpleNamespace()
    config = TelegramConfig(
        token=SecretStr(TOKEN),
        poll_timeout_s=7,
        edit_interval_s=0.5,
        typing_interval_s=2.0,
        admin_cache_s=0.0,
        drain_s=3.0,
    )
    adapter = create(Settings(telegram=config).telegram, unused, unused, unused)  # type: ignore[arg-type]
    assert adapter is not None
    pacing = adapter._pacing
    assert (adapter._poll_timeout_s, pacing.edit_interval_s, pacing.typing_interval_s) == (7, 0.5, 2.0)
    assert (adapter._chat_admins.ttl_s, adapter._drain_s) == (0.0, 3.0)


async def test_edits_stickers_and_strange_updates_are_skipped_without_harm(
    fake: FakeTelegram, start_adapter: StartAdapter, database: Database
) -> None:
    fake.admins[GROUP] = {42}
    await start_adapter()
    fake.push_message(111, "hi")
    await replies(fake, 111, 1)
    fake.push_message(GROUP, "/reset", user_id=42, edited=True)  # an edited command must not run again
    sticker = {"file_id": "s", "file_unique_id": "u", "width": 1, "height": 1, "is_animated": False}
    fake.push_update(
        {
            "message": {
                "message_id": 900,
                "date": 1,
                "chat": {"id": 111, "type": "private"},
                "sticker": sticker,
            }
        }
    )
    fake.push_update({"poll": {"id": "p", "question": "?", "options": []}})  # malformed: must not crash
    fake.push_message(111, "still here")
    assert await replies(fake, 111, 2) == ["echo[0]: hi", "echo[2]: still here"]
    assert fake.texts(GROUP) == []
    await fake.wait_for(lambda: fake.unconfirmed == [], timeout=5)

    async def none_pending() -> bool:
        return await UpdateInbox(database, "telegram").pending() == []

    # The last update is marked done just after its answer is delivered: as far as `replies` waits.
    await wait_until(none_pending, what="no update is left pending")


async def test_a_long_emoji_reply_fits_telegrams_utf16_limit(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    text = "🙂" * 5000  # 5000 characters, 10 000 UTF-16 units, no break anywhere
    await start_adapter(await make_engine(LongBackend(text), model={"max_new_tokens": 8192}))
    fake.push_message(111, "smile")
    await fake.wait_for(lambda: "".join(fake.texts(111)) == text, timeout=10)
    assert all(len(piece.encode("utf-16-le")) // 2 <= 4096 for piece in fake.texts(111))


async def test_a_streamed_message_deleted_midway_gets_the_reply_posted_anew(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    await start_adapter(await make_engine(SlowBackend(0.1)), edit_interval_s=0.3)
    words = " ".join(f"w{i}" for i in range(12))
    fake.push_message(111, words)
    await fake.wait_for(lambda: len(fake.sent) == 1)
    fake.delete(fake.sent[0])
    await fake.wait_for(lambda: fake.texts(111) == [f"echo[0]: {words}"], timeout=10)


# --- waiting in the model's queue ---------------------------------------------------------------


def transcript(fake: FakeTelegram, chat_id: int) -> list[tuple[str, str]]:
    """The messages sent to `chat_id` and their edits, in order: (method, text)."""
    return [
        (call.method, call.params["text"])
        for call in fake.calls
        if call.method in {"sendMessage", "editMessageText"} and int(call.params["chat_id"]) == chat_id
    ]


async def test_replies_waiting_in_the_models_queue_show_their_place_until_their_text(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory, database: Database
) -> None:
    """The model answers one at a time: while it writes the first reply, the other two wait, and
    after 2 s in line each shows "⏳ #N in line" (quoting the question in a group), edited as the
    line moves; the reply's text then replaces it in that same message."""
    backend = LineBackend()
    backend.hold("first", "second")
    await start_adapter(await make_engine(backend), edit_interval_s=0.2, typing_interval_s=0.5)
    fake.push_message(111, "first")
    await wait_until(lambda: backend.running == ["first"], what="the first reply has the model")
    asked = fake.push_message(GROUP, f"@{BOT_USERNAME} second")
    # In line before the third (a group message first reads the group's administrators).
    await wait_until(lambda: len(backend.line) == 2, what="the second reply waits in line")
    fake.push_message(333, "third")
    await wait_until(lambda: backend.places() == [None, 1, 2], what="two replies wait in line")
    queued_at = asyncio.get_running_loop().time()
    await fake.wait_for(
        lambda: fake.texts(GROUP) == ["⏳ #1 in line"] and fake.texts(333) == ["⏳ #2 in line"]
    )
    # Not before the wait was long: the generations were in line (and polled) before `queued_at`.
    first_notice = min(call.at for call in fake.calls_to("sendMessage"))
    assert first_notice - queued_at >= QUEUE_NOTICE_AFTER_S - 0.6  # minus the 0.5 s poll
    assert fake.texts(111) == []  # the running reply has no place in line: "typing…" only
    [placeholder] = [message for message in fake.sent if message.chat_id == GROUP]
    assert placeholder.reply_to == asked["message"]["message_id"]  # quoting, as the reply will

    backend.release("first")
    await fake.wait_for(
        lambda: fake.texts(333) == ["⏳ #1 in line"] and fake.texts(111) == ["echo[0]: first"]
    )
    assert fake.texts(GROUP) == ["⏳ #1 in line"]  # it left the line: the place stays until its text

    def typing_333() -> list[float]:
        return [c.at for c in fake.calls_to("sendChatAction") if int(c.params["chat_id"]) == 333]

    # Typing goes on under the placeholder (every typing_interval_s: waited for, not assumed to
    # have come already, as a loaded machine may not have sent the next one yet).
    await fake.wait_for(lambda: max(typing_333()) > first_notice)

    backend.release("second")
    await fake.wait_for(
        lambda: fake.texts(GROUP) == ["echo[0]: second"] and fake.texts(333) == ["echo[0]: third"]
    )
    # Each placeholder became its reply: no message left over, no message more.
    assert transcript(fake, 333) == [
        ("sendMessage", "⏳ #2 in line"),
        ("editMessageText", "⏳ #1 in line"),
        ("editMessageText", "echo[0]: third"),
    ]
    assert transcript(fake, GROUP) == [
        ("sendMessage", "⏳ #1 in line"),
        ("editMessageText", "echo[0]: second"),
    ]
    assert transcript(fake, 111) == [("sendMessage", "echo[0]: first")]
    repository = ChatRepository(database)
    for chat, text in ((111, "first"), (GROUP, "second"), (333, "third")):
        stored = await repository.recent_messages(f"telegram:{chat}", limit=10)
        assert [(m.role, m.content) for m in stored] == [("user", text), ("assistant", f"echo[0]: {text}")]


# --- Markdown as Telegram HTML ----------------------------------------------------------------

MARKDOWN = (
    "## Plan\n\nUse **bold**, *italic* and `x < y`; see [docs](https://example.com/d?a=1&b=2).\n\n"
    "- one\n- two\n\n```python\nprint('<&>')\n```\n\n> quoted"
)


async def test_a_markdown_reply_arrives_as_telegram_html(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    await start_adapter(await make_engine(LongBackend(MARKDOWN)))
    fake.push_message(111, "format something")
    await fake.wait_for(lambda: fake.texts(111) == [visible_text(MARKDOWN)])
    (message,) = fake.sent
    assert (message.markup, message.parse_mode) == (telegram_html_pieces(MARKDOWN)[0], "HTML")
    assert message.text == (
        "Plan\n\nUse bold, italic and x < y; see docs.\n\n• one\n• two\n\nprint('<&>')\n\nquoted"
    )
    assert "<pre><code class=\"language-python\">print('&lt;&amp;&gt;')</code></pre>" in message.markup
    assert '<a href="https://example.com/d?a=1&amp;b=2">docs</a>' in message.markup
    assert fake.refused == []


async def test_formatting_telegram_refuses_arrives_as_plain_text(
    fake: FakeTelegram,
    start_adapter: StartAdapter,
    make_engine: EngineFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    text = "**Hello** there, see [docs](https://example.com/d)."
    await start_adapter(await make_engine(LongBackend(text)))
    fake.refuse_formatting_with("<b>")
    with caplog.at_level(logging.WARNING, logger="adapters.telegram_sending"):
        fake.push_message(111, "hi")
        await fake.wait_for(lambda: fake.texts(111) == ["Hello there, see docs (https://example.com/d)."])
    (message,) = fake.sent
    assert message.parse_mode is None and message.markup == message.text
    assert [call.params.get("parse_mode") for call, _ in fake.refused] == ["HTML"]  # tried once
    refusals = [r for r in caplog.records if "formatting refused" in r.getMessage()]
    assert len(refusals) == 1  # one warning for the reply

    # The fallback is per reply: once Telegram takes the formatting again, so does the bot.
    fake.refuse_formatting_with(None)
    fake.push_message(111, "again")
    await fake.wait_for(lambda: len(fake.texts(111)) == 2 and fake.texts(111)[1] == visible_text(text))
    assert fake.sent[1].parse_mode == "HTML" and "<b>Hello</b>" in fake.sent[1].markup


async def test_a_long_markdown_reply_arrives_as_several_valid_html_parts(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    code = "\n".join(f"    total += weights[{i}] * values[{i}]  # <{i}> & co" for i in range(300))
    text = f"Intro with **bold**.\n\n```python\n{code}\n```\n\nOutro with *italic*."
    await start_adapter(await make_engine(LongBackend(text), model={"max_new_tokens": 8192}))
    fake.push_message(111, "long code please")
    await fake.wait_for(lambda: "".join(fake.texts(111)) == visible_text(text), timeout=10)
    pieces = telegram_html_pieces(text)
    assert len(pieces) >= 3
    assert [(m.markup, m.parse_mode) for m in fake.sent] == [(piece, "HTML") for piece in pieces]
    assert all(len(m.text.encode("utf-16-le")) // 2 <= 4096 for m in fake.sent)
    opening = '<pre><code class="language-python">'
    assert all(m.markup.startswith(opening) for m in fake.sent[1:])  # the code block goes on
    assert fake.refused == []


class StepBackend(EchoBackend):
    """Answers with `chunks`, each yielded only once the fake shows what came before: every stage
    of the reply is seen as a streamed version of the message."""

    def __init__(self, fake: FakeTelegram, chunks: list[str]) -> None:
        self.fake = fake
        self.chunks = chunks

    async def generate(self, prompt: PreparedPrompt, settings: SamplingSettings) -> AsyncGenerator[str, None]:
        so_far = ""
        for chunk in self.chunks:
            if so_far:
                await self._until_shown(so_far)
            so_far += chunk
            yield chunk

    async def _until_shown(self, markdown: str) -> None:
        expected = [visible_text(markdown)]
        await self.fake.wait_for(lambda: self.fake.texts(111) == expected)


async def test_streamed_previews_are_valid_html_even_inside_an_unclosed_code_block(
    fake: FakeTelegram, start_adapter: StartAdapter, make_engine: EngineFactory
) -> None:
    chunks = ["Here is **code**:\n```python\nx = 1 < 2\n", "y = x & 3\n", "```\nAnd *done*."]
    await start_adapter(await make_engine(StepBackend(fake, chunks)), edit_interval_s=0.05)
    fake.push_message(111, "stream it")
    text = "".join(chunks)
    await fake.wait_for(lambda: fake.texts(111) == [visible_text(text)])
    (message,) = fake.sent
    stages = [chunks[0], chunks[0] + chunks[1], text]
    assert message.markups == [(telegram_html_pieces(stage)[0], "HTML") for stage in stages]
    assert message.markups[0][0] == (
        'Here is <b>code</b>:\n\n<pre><code class="language-python">x = 1 &lt; 2</code></pre>'
    )
    assert len(fake.calls_to("editMessageText")) == 2 and fake.refused == []


async def test_an_edit_whose_formatting_is_refused_shows_plain_text_and_the_reply_stays_plain(
    fake: FakeTelegram,
    start_adapter: StartAdapter,
    make_engine: EngineFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    chunks = ["Plain *start*", " then **bold**", " and the end."]
    await start_adapter(await make_engine(StepBackend(fake, chunks)), edit_interval_s=0.05)
    fake.refuse_formatting_with("<b>")
    with caplog.at_level(logging.WARNING, logger="adapters.telegram_sending"):
        fake.push_message(111, "stream it")
        await fake.wait_for(lambda: fake.texts(111) == ["Plain start then bold and the end."])
    (message,) = fake.sent
    assert message.markups == [
        ("Plain <i>start</i>", "HTML"),  # taken as HTML
        ("Plain start then bold", None),  # refused as HTML, so edited as plain text
        ("Plain start then bold and the end.", None),  # the rest of the reply: plain at once
    ]
    assert [call.method for call, _ in fake.refused] == ["editMessageText"]
    assert len([r for r in caplog.records if "formatting refused" in r.getMessage()]) == 1
