"""`to_event` on recorded Bot API payloads: who the bot answers, what text and channel it sees."""

from __future__ import annotations

from typing import Any

import pytest
from telegram import Bot, Update

from adapters.telegram import ANONYMOUS_ADMIN_ID, to_event
from bot.events import ChatEvent

BOT = "ChinwagBot"
ALICE = {"id": 111, "is_bot": False, "first_name": "Alice", "last_name": "Liddell", "username": "alice"}
GROUP = {"id": -1001234567890, "title": "Tea party", "type": "supergroup"}
PRIVATE = {"id": 111, "first_name": "Alice", "type": "private"}
BOT_USER = {"id": 999, "is_bot": True, "first_name": "Chinwag", "username": BOT}


def update(message: dict[str, Any], kind: str = "message") -> Update:
    data = {"update_id": 5001, kind: {"message_id": 77, "date": 1763790000, **message}}
    return Update.de_json(data, Bot("123:not-a-real-token"))


def convert(
    upd: Update,
    *,
    admins: tuple[int, ...] = (),
    chat_admins: frozenset[int] = frozenset(),
    sees_all_messages: bool = True,
) -> ChatEvent | None:
    return to_event(
        upd, BOT, admins, lambda _chat, user: user in chat_admins, sees_all_messages=sees_all_messages
    )


def converted(upd: Update, **options: Any) -> ChatEvent:
    event = convert(upd, **options)
    assert event is not None, "this message should become an event"
    return event


def group_text(text: str, entities: list[dict[str, Any]] | None = None, **extra: Any) -> Update:
    body: dict[str, Any] = {"chat": GROUP, "from": ALICE, "text": text, **extra}
    if entities:
        body["entities"] = entities
    return update(body)


def test_private_text_is_answered_and_its_user_is_admin_but_not_staff() -> None:
    event = convert(update({"chat": PRIVATE, "from": ALICE, "text": "hi"}), sees_all_messages=False)
    assert event == ChatEvent(
        platform="telegram",
        channel="111",
        author_id="111",
        author_name="Alice Liddell",
        text="hi",
        is_admin=True,
        is_direct=True,
        message_id="111:77",  # chat-qualified: a supergroup numbers its messages anew
        is_staff=False,  # the user of a private chat may run commands there, nothing more
        addressed=True,
        sees_all_messages=True,  # a private chat delivers everything, privacy mode or not
    )
    assert event.channel_key == "telegram:111"


def test_plain_group_chatter_is_an_unaddressed_event() -> None:
    event = converted(group_text("lovely weather"))
    assert (event.text, event.addressed, event.is_direct, event.is_admin, event.is_staff) == (
        "lovely weather",
        False,
        False,
        False,
        False,
    )
    assert event.channel == "-1001234567890" and event.message_id == "-1001234567890:77"
    # A mention of someone else is not a mention of the bot.
    someone = converted(group_text("@someone look", [{"type": "mention", "offset": 0, "length": 8}]))
    assert (someone.text, someone.addressed) == ("@someone look", False)


def test_group_events_say_whether_the_bot_sees_all_group_messages() -> None:
    chatter = group_text("lovely weather")
    assert not converted(chatter, sees_all_messages=False).sees_all_messages  # privacy mode
    assert converted(chatter, sees_all_messages=True).sees_all_messages
    mention = group_text(f"@{BOT} hi", [{"type": "mention", "offset": 0, "length": len(BOT) + 1}])
    assert not converted(mention, sees_all_messages=False).sees_all_messages


def test_group_mention_is_answered_without_the_mention() -> None:
    event = convert(group_text(f"hey @{BOT} how are you", [{"type": "mention", "offset": 4, "length": 11}]))
    assert event is not None
    assert event.text == "hey how are you"
    assert event.channel == "-1001234567890" and not event.is_direct and not event.is_admin
    assert event.addressed and not event.is_staff


def test_group_reply_to_the_bot_is_answered() -> None:
    replied = {"message_id": 70, "date": 1763790000, "chat": GROUP, "from": BOT_USER, "text": "echo"}
    event = convert(group_text("and then?", reply_to_message=replied))
    assert event is not None and event.text == "and then?" and event.addressed
    # A reply to another user is not for the bot.
    other = {**replied, "from": {"id": 5, "is_bot": False, "first_name": "Bob"}}
    assert not converted(group_text("and then?", reply_to_message=other)).addressed


@pytest.mark.parametrize("text", ["/reset", f"/reset@{BOT}", f"/reset@{BOT.lower()}"])
def test_group_commands_for_this_bot(text: str) -> None:
    event = convert(group_text(text, [{"type": "bot_command", "offset": 0, "length": len(text)}]))
    assert event is not None and event.text == text and event.addressed


def test_group_command_for_another_bot_is_dropped() -> None:
    text = "/reset@OtherBot"
    assert convert(group_text(text, [{"type": "bot_command", "offset": 0, "length": len(text)}])) is None
    # A command-looking text that Telegram did not mark as a command is plain chatter.
    assert not converted(group_text(text)).addressed


def test_leading_mention_then_command_is_the_command() -> None:
    text = f"@{BOT} /reset"
    entities = [{"type": "mention", "offset": 0, "length": len(BOT) + 1}]
    event = convert(group_text(text, entities))
    assert event is not None and event.text == "/reset" and event.addressed


@pytest.mark.parametrize("text", ["/reset", "lovely weather"])
def test_group_staff_from_config_chat_and_anonymous_posting(text: str) -> None:
    """Staff (and so admins) in a group, for commands and unaddressed chatter alike."""
    entities = [{"type": "bot_command", "offset": 0, "length": 6}] if text.startswith("/") else None
    facts = [
        (event.is_admin, event.is_staff)
        for event in (
            converted(group_text(text, entities), admins=(111,)),
            converted(group_text(text, entities), chat_admins=frozenset({111})),
            converted(group_text(text, entities), chat_admins=frozenset({5})),
        )
    ]
    assert facts == [(True, True), (True, True), (False, False)]
    anonymous = update(
        {
            "chat": GROUP,
            "from": {
                "id": ANONYMOUS_ADMIN_ID,
                "is_bot": True,
                "first_name": "Group",
                "username": "GroupAnonymousBot",
            },
            "sender_chat": GROUP,
            "text": text,
            "entities": entities,
        }
    )
    event = convert(anonymous)
    assert event is not None and event.is_admin and event.is_staff and event.author_name == "Tea party"


def test_in_a_private_chat_only_configured_admins_are_staff() -> None:
    private = update({"chat": PRIVATE, "from": ALICE, "text": "hi"})
    assert converted(private, admins=(111,)).is_staff
    # Chat administrators are a group's: a private chat's user is not staff by being "its admin".
    assert not converted(private, chat_admins=frozenset({111})).is_staff


def test_forum_topics_are_separate_channels() -> None:
    forum = {**GROUP, "is_forum": True}
    body = {
        "chat": forum,
        "from": ALICE,
        "text": f"@{BOT} hi",
        "message_thread_id": 12,
        "is_topic_message": True,
    }
    body["entities"] = [{"type": "mention", "offset": 0, "length": len(BOT) + 1}]
    event = convert(update(body))
    assert event is not None and event.channel == "-1001234567890:12"


@pytest.mark.parametrize(
    "data",
    [
        # A sticker, a service message: no text to answer.
        {
            "message": {
                "message_id": 1,
                "date": 1,
                "chat": PRIVATE,
                "from": ALICE,
                "sticker": {
                    "file_id": "x",
                    "file_unique_id": "y",
                    "width": 512,
                    "height": 512,
                    "is_animated": False,
                    "is_video": False,
                    "type": "regular",
                },
            }
        },
        {"message": {"message_id": 1, "date": 1, "chat": GROUP, "from": ALICE, "new_chat_members": [ALICE]}},
        # Edits are no new message (an edited /reset must not run twice; see `to_edit`).
        {
            "edited_message": {
                "message_id": 1,
                "date": 1,
                "edit_date": 2,
                "chat": PRIVATE,
                "from": ALICE,
                "text": "hi again",
            }
        },
        {
            "my_chat_member": {
                "chat": GROUP,
                "from": ALICE,
                "date": 1,
                "old_chat_member": {"status": "left", "user": BOT_USER},
                "new_chat_member": {"status": "member", "user": BOT_USER},
            }
        },
        # Another bot talking in a private chat (e.g. a forwarded loop).
        {
            "message": {
                "message_id": 1,
                "date": 1,
                "chat": PRIVATE,
                "from": {**BOT_USER, "id": 5},
                "text": "beep",
            }
        },
        # ... or in a group, unaddressed: still never an event (no engine sees other bots).
        {
            "message": {
                "message_id": 1,
                "date": 1,
                "chat": GROUP,
                "from": {**BOT_USER, "id": 5},
                "text": "beep",
            }
        },
        # A voice note: no text and no file the bot reads.
        {
            "message": {
                "message_id": 1,
                "date": 1,
                "chat": PRIVATE,
                "from": ALICE,
                "voice": {"file_id": "v", "file_unique_id": "w", "duration": 3},
            }
        },
    ],
)
def test_non_text_updates_give_none(data: dict[str, Any]) -> None:
    upd = Update.de_json({"update_id": 1, **data}, Bot("123:not-a-real-token"))
    assert convert(upd) is None
