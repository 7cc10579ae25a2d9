"""`to_event` and `edit_event` on recorded gateway payloads, and `discord_pieces` (pure functions)."""

from __future__ import annotations

import re
from typing import Any

import discord

from adapters.discord import MESSAGE_LIMIT, discord_pieces, to_event
from adapters.discord_events import channel_key, edit_event
from bot.events import ChatEvent, Download, Downloaded
from tests.fakes.discord_server import (
    ADMIN_ROLE,
    BOT_ID,
    GUILD_ID,
    MANAGER_ROLE,
    MEMBER_ROLE,
    OWNER_ID,
    UNKNOWN_ROLE,
    guild_payload,
    message_payload,
    user_payload,
)

ADMIN_IN_CONFIG = 5150
GENERAL = 700_000_000_000_000_001
DM = 600_000_000_000_000_001


def recorded(payload: dict[str, Any]) -> discord.Message:
    """A MESSAGE_CREATE body turned into the discord.py object, as the gateway client does."""
    client = discord.Client(intents=discord.Intents.default())
    state = client._connection
    state._add_guild(discord.Guild(data=guild_payload(GUILD_ID, (GENERAL,)), state=state))  # type: ignore[arg-type]
    channel, _ = state._get_guild_channel(payload)  # type: ignore[arg-type]
    return discord.Message(state=state, channel=channel, data=payload)  # type: ignore[arg-type]


ALICE = user_payload(42, "Alice")
BOT = user_payload(BOT_ID, "Chinwag", bot=True)

# A guild MESSAGE_CREATE as Discord's gateway sends it (API v10), ids and names changed.
RECORDED_GUILD_MENTION: dict[str, Any] = {
    "type": 0,
    "tts": False,
    "timestamp": "2026-11-20T18:42:07.311000+00:00",
    "pinned": False,
    "nonce": "1441121170958139392",
    "mentions": [
        {
            "username": "chinwag",
            "public_flags": 0,
            "primary_guild": None,
            "member": {
                "roles": [],
                "premium_since": None,
                "pending": False,
                "nick": None,
                "mute": False,
                "joined_at": "2026-11-01T10:00:00.000000+00:00",
                "flags": 0,
                "deaf": False,
                "communication_disabled_until": None,
                "banner": None,
                "avatar": None,
            },
            "id": str(BOT_ID),
            "global_name": None,
            "discriminator": "4821",
            "clan": None,
            "bot": True,
            "avatar_decoration_data": None,
            "avatar": None,
        }
    ],
    "mention_roles": [],
    "mention_everyone": False,
    "member": {
        "roles": [str(MANAGER_ROLE)],
        "premium_since": None,
        "pending": False,
        "nick": "Ally",
        "mute": False,
        "joined_at": "2025-03-02T09:15:44.120000+00:00",
        "flags": 0,
        "deaf": False,
        "communication_disabled_until": None,
        "banner": None,
        "avatar": None,
    },
    "id": "1441121171776028753",
    "flags": 0,
    "embeds": [],
    "edited_timestamp": None,
    "content": f"<@{BOT_ID}> what does `zip` do in Python?",
    "components": [],
    "channel_type": 0,
    "channel_id": str(GENERAL),
    "author": {
        "username": "alice_w",
        "public_flags": 0,
        "primary_guild": None,
        "id": "310000000000000042",
        "global_name": "Alice",
        "discriminator": "0",
        "clan": None,
        "avatar_decoration_data": None,
        "avatar": "a1b2c3d4e5f60718293a4b5c6d7e8f90",
    },
    "attachments": [],
    "guild_id": str(GUILD_ID),
}

# A DM MESSAGE_CREATE (no guild_id, no member).
RECORDED_DM: dict[str, Any] = {
    "type": 0,
    "tts": False,
    "timestamp": "2026-11-20T18:45:11.020000+00:00",
    "pinned": False,
    "nonce": "1441121942346702848",
    "mentions": [],
    "mention_roles": [],
    "mention_everyone": False,
    "id": "1441121943068160071",
    "flags": 0,
    "embeds": [],
    "edited_timestamp": None,
    "content": "hi there",
    "components": [],
    "channel_type": 1,
    "channel_id": str(DM),
    "author": RECORDED_GUILD_MENTION["author"],
    "attachments": [],
}


def guild_message(content: str, **options: Any) -> dict[str, Any]:
    """A guild message from Alice (no roles unless given), mentioning the bot if `content` does."""
    mentions = (BOT,) if f"<@{BOT_ID}>" in content or f"<@!{BOT_ID}>" in content else ()
    options.setdefault("author", ALICE)
    return message_payload(GENERAL, content, guild_id=GUILD_ID, mentions=mentions, **options)


def converted(payload: dict[str, Any], channels: frozenset[int] = frozenset()) -> ChatEvent | None:
    return to_event(recorded(payload), BOT_ID, frozenset({ADMIN_IN_CONFIG}), channels)


def an_event(payload: dict[str, Any], channels: frozenset[int] = frozenset()) -> ChatEvent:
    event = converted(payload, channels)
    assert event is not None, "this message should become an event"
    return event


def addressed(payload: dict[str, Any], channels: frozenset[int] = frozenset()) -> ChatEvent:
    event = an_event(payload, channels)
    assert event.addressed, "this message should be addressed to the bot"
    return event


def unaddressed(payload: dict[str, Any], channels: frozenset[int] = frozenset()) -> ChatEvent:
    event = an_event(payload, channels)
    assert not event.addressed, "this message should not be addressed to the bot"
    return event


def test_a_recorded_dm_is_addressed_to_the_bot_by_an_admin_who_is_not_staff() -> None:
    event = addressed(RECORDED_DM)
    assert event == ChatEvent(
        platform="discord",
        channel=str(DM),
        author_id="310000000000000042",
        author_name="Alice",
        text="hi there",
        is_admin=True,
        is_direct=True,
        message_id="1441121943068160071",
        is_staff=False,  # admin in their own DM only
        roles=(),
        addressed=True,
    )


def test_a_recorded_guild_mention_loses_the_mention_and_knows_the_manager() -> None:
    event = addressed(RECORDED_GUILD_MENTION)
    assert event.text == "what does `zip` do in Python?"
    assert (event.channel, event.author_name, event.is_direct, event.is_admin) == (
        str(GENERAL),
        "Ally",  # the server nickname
        False,
        True,  # the Managers role has Manage Server
    )
    assert event.is_staff and event.roles == (str(MANAGER_ROLE),) and event.addressed


def test_guild_messages_are_addressed_by_a_mention_a_reply_a_command_or_the_channel() -> None:
    chatter = unaddressed(guild_message("chatting"))
    assert (chatter.text, chatter.is_direct, chatter.is_admin, chatter.is_staff) == (
        "chatting",
        False,
        False,
        False,
    )
    assert addressed(guild_message("chatting"), channels=frozenset({GENERAL})).text == "chatting"
    mentioned = addressed(guild_message(f"<@{BOT_ID}>  what's up?"))
    assert (mentioned.text, mentioned.is_direct, mentioned.is_admin) == ("what's up?", False, False)
    assert addressed(guild_message(f"hey <@!{BOT_ID}>, hi")).text == "hey , hi"
    assert addressed(guild_message(f"<@{BOT_ID}> /reset")).text == "/reset"
    assert addressed(guild_message("/temperature 0.2")).text == "/temperature 0.2"
    assert unaddressed(guild_message("/play song")).text == "/play song"  # another bot's command
    bot_message = message_payload(GENERAL, "earlier", author=BOT)
    assert addressed(guild_message("follow-up", referenced=bot_message)).text == "follow-up"
    other = message_payload(GENERAL, "earlier", author=user_payload(9, "Bob"))
    assert unaddressed(guild_message("follow-up", referenced=other)).text == "follow-up"
    assert unaddressed(guild_message("  spaced  ")).text == "spaced"


def test_bots_and_service_messages_are_ignored() -> None:
    assert converted(guild_message(f"<@{BOT_ID}> hi", author=user_payload(77, "Other", bot=True))) is None
    assert converted(message_payload(DM, "me", author=BOT)) is None
    assert converted(guild_message(f"<@{BOT_ID}> pinned", message_type=6)) is None  # pins_add
    assert converted(message_payload(DM, "joined", author=ALICE, message_type=7)) is None


def test_guild_admins_are_managers_administrators_and_configured_ids() -> None:
    text = f"<@{BOT_ID}> /reset"
    assert addressed(guild_message(text, roles=(MANAGER_ROLE,))).is_admin
    assert addressed(guild_message(text, roles=(ADMIN_ROLE,))).is_admin
    assert addressed(guild_message(text, author=user_payload(ADMIN_IN_CONFIG, "Cfg"))).is_admin
    assert not addressed(guild_message(text)).is_admin


def test_guild_staff_are_managers_administrators_owner_and_configured_ids_in_any_message() -> None:
    for text in ("chatting", f"<@{BOT_ID}> hi"):
        staff = [
            (event.is_admin, event.is_staff)
            for event in (
                an_event(guild_message(text, roles=(MANAGER_ROLE,))),
                an_event(guild_message(text, roles=(ADMIN_ROLE,))),
                an_event(guild_message(text, author=user_payload(OWNER_ID, "Owner"))),
                an_event(guild_message(text, author=user_payload(ADMIN_IN_CONFIG, "Cfg"))),
                an_event(guild_message(text, roles=(MEMBER_ROLE,))),
                an_event(guild_message(text)),
            )
        ]
        assert staff == [(True, True)] * 4 + [(False, False)] * 2, text


def test_dm_users_are_admins_but_staff_only_when_configured() -> None:
    dm = an_event(message_payload(DM, "hi", author=ALICE))
    assert (dm.is_admin, dm.is_staff, dm.roles) == (True, False, ())
    configured = an_event(message_payload(DM, "hi", author=user_payload(ADMIN_IN_CONFIG, "Cfg")))
    assert (configured.is_admin, configured.is_staff) == (True, True)


def test_roles_are_the_members_role_ids_without_everyone() -> None:
    event = an_event(guild_message("chatting", roles=(MEMBER_ROLE, MANAGER_ROLE)))
    # discord.py sorts a member's roles by position (lowest first) and adds @everyone, whose id
    # is the guild's: it is left out.
    assert event.roles == (str(MANAGER_ROLE), str(MEMBER_ROLE))
    assert str(GUILD_ID) not in event.roles
    assert an_event(guild_message("chatting")).roles == ()
    # A role id the guild's role cache does not know (no GUILD_CREATE named it) is left out.
    assert an_event(guild_message("chatting", roles=(UNKNOWN_ROLE, MEMBER_ROLE))).roles == (str(MEMBER_ROLE),)


# --- splitting ---------------------------------------------------------------------------------


def undo_fences(pieces: list[str]) -> str:
    """The text before splitting: drop the fence lines added at the cuts ("\\n```" at the end of a
    part that ends inside a code block, "```lang\\n" at the start of the next)."""
    parts = list(pieces)
    for index in range(1, len(parts)):
        if parts[index - 1].endswith("\n```") and _open_fences(parts[index - 1][:-4]):
            parts[index - 1] = parts[index - 1][:-4]
            parts[index] = parts[index].split("\n", 1)[1]
    return "".join(parts)


def _open_fences(text: str) -> bool:
    return len(re.findall(r"^[ \t]*```", text, re.MULTILINE)) % 2 == 1


LONG_TEXT = (
    "Here is the plan.\n\n"
    + "word " * 350
    + "\n\n```python\n"
    + "".join(f"print('line {n}')  # a comment to make it longer\n" for n in range(80))
    + "```\n\nAnd that is all, "
    + "folks " * 100
)


def test_pieces_keep_fences_balanced_and_lose_nothing() -> None:
    assert len(LONG_TEXT) > 5000
    pieces = discord_pieces(LONG_TEXT)
    assert len(pieces) >= 3
    assert all(len(piece) <= MESSAGE_LIMIT for piece in pieces)
    assert all(not _open_fences(piece) for piece in pieces[:-1])
    assert any(piece.startswith("```python\n") for piece in pieces[1:])
    assert undo_fences(pieces) == LONG_TEXT
    assert discord_pieces("short") == ["short"]
    assert discord_pieces("") == []


def test_a_fence_opened_and_closed_on_one_line_stays_closed() -> None:
    text = "```x = 1```\n" + "y " * 1500
    pieces = discord_pieces(text)
    assert len(pieces) == 2
    assert "".join(pieces) == text  # nothing added: no code block was open at the cut


# --- attachments and edits ---------------------------------------------------------------------

# An attachment object as Discord sends it in MESSAGE_CREATE (API v10), ids and URL changed.
RECORDED_ATTACHMENT: dict[str, Any] = {
    "id": "1441130000000000001",
    "filename": "screenshot.png",
    "size": 48213,
    "url": "https://cdn.discordapp.com/attachments/1/1441130000000000001/screenshot.png?ex=a&is=b&hm=c&",
    "proxy_url": "https://media.discordapp.net/attachments/1/1441130000000000001/screenshot.png?ex=a&is=b&hm=c&",
    "width": 640,
    "height": 480,
    "content_type": "image/png",
    "placeholder": "4AcKFQJ4h4iPeIiHd4eHd4Z3",
    "placeholder_version": 1,
}


class FetchRecorder:
    """A `FetchUrl` that records the URLs it was asked for (and never downloads)."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def __call__(self, url: str) -> Download:
        self.urls.append(url)

        async def download(limit: int) -> Downloaded:
            raise AssertionError("nothing is downloaded while the event is built")

        return download


def test_attachments_become_lazy_attachments_with_discords_claims() -> None:
    text_file = {
        "id": "1441130000000000002",
        "filename": "notes.txt",
        "size": 12,
        "url": "https://cdn.example/notes.txt",
        "proxy_url": "https://cdn.example/notes.txt",
        "content_type": "text/plain; charset=utf-8",
    }
    unknown = {
        **text_file,
        "id": "1441130000000000003",
        "filename": "blob",
        "url": "https://cdn.example/blob",
    }
    del unknown["content_type"]  # Discord sends none for a type it does not know
    fetch = FetchRecorder()
    payload = {**RECORDED_DM, "content": "", "attachments": [RECORDED_ATTACHMENT, text_file, unknown]}
    event = to_event(recorded(payload), BOT_ID, frozenset(), fetch=fetch)
    assert event is not None and event.text == "" and event.addressed  # no text: still an event
    assert [(a.name, a.mime_type, a.size, a.image) for a in event.attachments] == [
        ("screenshot.png", "image/png", 48213, True),
        ("notes.txt", "text/plain; charset=utf-8", 12, False),
        ("blob", None, 12, False),
    ]
    assert fetch.urls == [RECORDED_ATTACHMENT["url"], text_file["url"], unknown["url"]]
    # Without a way to fetch them (as for an edit), files are left out.
    assert an_event(payload).attachments == ()


def test_a_guild_file_is_addressed_as_text_is() -> None:
    picture = {"attachments": [RECORDED_ATTACHMENT]}
    fetch = FetchRecorder()
    mentioned = to_event(
        recorded({**guild_message(f"<@{BOT_ID}>"), **picture}), BOT_ID, frozenset(), fetch=fetch
    )
    assert mentioned is not None and mentioned.addressed and mentioned.text == ""
    assert len(mentioned.attachments) == 1
    chatter = to_event(recorded({**guild_message(""), **picture}), BOT_ID, frozenset(), fetch=fetch)
    assert chatter is not None and not chatter.addressed  # the engine decides (`/listen all`)


def update_of(
    payload: dict[str, Any], *, cached: dict[str, Any] | None = None
) -> discord.RawMessageUpdateEvent:
    """A MESSAGE_UPDATE body as discord.py hands it to `on_raw_message_edit`."""
    update = discord.RawMessageUpdateEvent(data=payload, message=recorded(payload))  # type: ignore[arg-type]
    if cached is not None:
        update.cached_message = recorded(cached)
    return update


def edited(payload: dict[str, Any], content: str) -> dict[str, Any]:
    return {**payload, "content": content, "edited_timestamp": "2026-11-20T18:45:00.000000+00:00"}


def test_a_text_edit_is_an_event_with_the_new_text_of_the_same_message() -> None:
    original = guild_message(f"<@{BOT_ID}> what is 2+2?")
    event = edit_event(update_of(edited(original, f"<@{BOT_ID}> what is 2+3?")), BOT_ID, frozenset())
    assert event is not None
    assert (event.channel_key, event.message_id, event.text) == (
        f"discord:{GENERAL}",
        original["id"],
        "what is 2+3?",
    )
    assert channel_key(GENERAL) == event.channel_key
    dm_event = edit_event(update_of(edited(RECORDED_DM, "hi again")), BOT_ID, frozenset())
    assert dm_event is not None and (dm_event.text, dm_event.is_direct) == ("hi again", True)


def test_updates_that_change_no_persons_text_are_not_edits() -> None:
    original = guild_message("hello")
    # A link preview: the whole message again, never edited.
    assert edit_event(update_of({**original, "embeds": [{"type": "link"}]}), BOT_ID, frozenset()) is None
    # The same text as the cached message (an embed added to a message edited earlier).
    same = edited(original, "hello")
    assert edit_event(update_of(same, cached=same), BOT_ID, frozenset()) is None
    # The bot's own streamed reply, and another bot's edit.
    own = edited(message_payload(GENERAL, "echo[0]: hi", author=BOT, guild_id=GUILD_ID), "echo[0]: hi!")
    assert edit_event(update_of(own), BOT_ID, frozenset()) is None
    other_bot = user_payload(77, "Helper", bot=True)
    assert (
        edit_event(update_of(edited(guild_message("x", author=other_bot), "y")), BOT_ID, frozenset()) is None
    )
    # An update without content (built by discord.py only when the adapter lets one through).
    without_content = dict(edited(original, "ignored"))
    payload_update = update_of(without_content)
    del payload_update.data["content"]  # type: ignore[misc]
    assert edit_event(payload_update, BOT_ID, frozenset()) is None
