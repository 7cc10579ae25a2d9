"""`python -m bot export --user PLATFORM:ID`: one user's stored messages as JSON (a data request).

It holds the user's own messages and the bot's replies to them (what `/forget` would delete), in
every channel of that platform, oldest first per channel.
"""

from __future__ import annotations

import json
import re
from typing import Any

from bot.ports import MemberMessage, Repository
from bot.quota import utc_now

_USER = re.compile(r"([a-z]+):([A-Za-z0-9_-]{1,128})")


def parse_user(value: str) -> tuple[str, str]:
    """`"telegram:1011"` -> `("telegram", "1011")`; ValueError for anything else."""
    match = _USER.fullmatch(value.strip())
    if match is None:
        raise ValueError(f'expected PLATFORM:ID such as "telegram:1011", got {value[:60]!r}')
    return match.group(1), match.group(2)


def export_document(platform: str, user_id: str, messages: list[MemberMessage]) -> dict[str, Any]:
    """The JSON document for `messages` of `platform:user_id`."""
    return {
        "user": f"{platform}:{user_id}",
        "exported_at": utc_now().isoformat(),
        "message_count": len(messages),
        "messages": [
            {
                "channel": item.channel_key,
                "role": item.message.role,
                "author_name": item.message.author_name,
                "content": item.message.content,
                # What the message's attachments became (file texts, image placeholders), or null.
                "attached": item.message.attached,
                "created_at": item.message.created_at.isoformat(),
                "platform_message_id": item.message.platform_message_id,
                "cut": item.message.cut.value if item.message.cut is not None else None,
            }
            for item in messages
        ],
    }


async def export_user(repository: Repository, user: str) -> str:
    """The export of `user` ("platform:id") as indented JSON text. Raises ValueError for a
    malformed user, `StorageError` when the database fails."""
    platform, user_id = parse_user(user)
    messages = await repository.member_messages(platform, user_id)
    return json.dumps(export_document(platform, user_id, messages), ensure_ascii=False, indent=2) + "\n"
