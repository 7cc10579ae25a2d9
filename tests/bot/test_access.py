"""The access policy's table: who passes, who is refused, who is told."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bot.access import NOTICE_INTERVAL_S, Access, AccessPolicy, RoleRules
from bot.config import AccessConfig
from bot.events import ChatEvent

DM = ChatEvent("telegram", "1011", "1011", "Ann", "hi", is_admin=True, is_direct=True)
GROUP = ChatEvent("telegram", "-1001", "1011", "Ann", "hi")
GUILD = ChatEvent("discord", "600", "81234", "Bo", "hi", roles=("7",))
ROLES = {"discord": RoleRules(allowed=frozenset({"7"}), blocked=frozenset({"9"}))}


def policy(roles: dict[str, RoleRules] | None = None, **lists: object) -> AccessPolicy:
    return AccessPolicy(AccessConfig.model_validate(lists), roles)


@pytest.mark.parametrize(
    ("lists", "event", "permitted"),
    [
        ({}, GROUP, True),
        ({"allowed_users": ["telegram:1011"]}, GROUP, True),
        ({"allowed_users": ["telegram:2022"]}, GROUP, False),
        ({"allowed_users": ["discord:1011"]}, GROUP, False),  # the platform is part of the id
        ({"allowed_users": ["telegram:1011"], "blocked_users": ["telegram:1011"]}, GROUP, False),
        ({"blocked_users": ["telegram:2022"]}, GROUP, True),
        ({"allowed_channels": ["telegram:-1001"]}, GROUP, True),
        ({"allowed_channels": ["telegram:-1002"]}, GROUP, False),
        ({"blocked_channels": ["telegram:-1001"]}, GROUP, False),
        ({"allowed_channels": ["telegram:-1001"]}, DM, False),  # a DM is a channel too
        ({"direct_messages": False}, DM, False),
        ({"direct_messages": False}, GROUP, True),
        # The user of a private chat is admin of it for commands, and that lets no one past.
        ({"allowed_users": ["telegram:2022"]}, DM, False),
        # Staff (configured admins, group administrators) always pass.
        ({"allowed_users": ["telegram:2022"]}, replace(GROUP, is_staff=True), True),
        ({"blocked_users": ["telegram:1011"]}, replace(GROUP, is_staff=True), True),
        ({"direct_messages": False}, replace(DM, is_staff=True), True),
    ],
)
def test_lists(lists: dict[str, object], event: ChatEvent, permitted: bool) -> None:
    assert policy(**lists).permits(event) is permitted


@pytest.mark.parametrize(
    ("roles", "permitted"),
    [
        (("7",), True),
        (("7", "9"), False),  # a blocked role wins
        (("8",), False),  # allowed_roles is set and none is held
        ((), False),
    ],
)
def test_discord_roles(roles: tuple[str, ...], permitted: bool) -> None:
    assert policy(ROLES).permits(replace(GUILD, roles=roles)) is permitted


def test_roles_do_not_apply_in_dms_or_to_other_platforms() -> None:
    assert policy(ROLES).permits(replace(GUILD, is_direct=True, roles=()))
    assert policy(ROLES).permits(GROUP)
    assert policy(ROLES).permits(replace(GUILD, roles=(), is_staff=True))


def test_restricts_only_when_something_is_set() -> None:
    assert not policy().restricts
    assert not policy({"discord": RoleRules()}).restricts
    assert policy(direct_messages=False).restricts
    assert policy(ROLES).restricts
    assert policy(blocked_channels=["discord:600"]).restricts


def test_one_notice_per_hour_in_private_chats_silence_in_groups() -> None:
    now = [1000.0]
    rules = AccessPolicy(AccessConfig(allowed_users=("telegram:2022",)), clock=lambda: now[0])
    assert rules.check(DM) is Access.REFUSE_WITH_NOTICE
    assert rules.check(DM) is Access.REFUSE_SILENTLY
    assert rules.check(replace(DM, author_id="3033")) is Access.REFUSE_WITH_NOTICE  # per user
    now[0] += NOTICE_INTERVAL_S - 1
    assert rules.check(DM) is Access.REFUSE_SILENTLY
    now[0] += 1
    assert rules.check(DM) is Access.REFUSE_WITH_NOTICE
    assert rules.check(GROUP) is Access.REFUSE_SILENTLY
    assert rules.check(replace(GROUP, author_id="2022")) is Access.ALLOW
