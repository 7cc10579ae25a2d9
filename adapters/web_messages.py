"""The chat API's routes about messages already sent, and the limits of the ones to come.

- `DELETE /api/channels/{id}/messages/{message_id}`: the page's delete button.
- `GET /api/limits`: what one message may carry, so the page refuses files before sending them.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Request

from adapters.web_chat import PLATFORM, ChannelId, MessageId, is_private_channel, require_admin_key
from bot.errors import ChinwagError
from bot.ports import ChatService

NOT_FOUND = "no message with that id in this channel (never stored, or deleted already)"


def build_messages_router(
    engine: ChatService, admin_api_key: str | None, *, max_attachments: int, max_upload_bytes: int
) -> APIRouter:
    """The routes above. A delete follows the reset's access rule (adapters/web_chat.py)."""
    router = APIRouter()

    @router.delete("/api/channels/{channel_id}/messages/{message_id}")
    async def delete_message(
        request: Request, channel_id: ChannelId, message_id: MessageId
    ) -> dict[str, int]:
        """Delete a user message (by the `message_id` it was sent with) and the bot's reply to
        it, in order with the channel's pending messages: a reply still being written is finished
        (and then deleted) first. `{"deleted": 2}` counts the stored messages removed; 404 when
        the channel holds no message with that id (never stored, or deleted already): a message
        of another channel is out of reach. Needs the admin key, except for a private channel's
        own holder."""
        if not is_private_channel(channel_id):
            require_admin_key(request, admin_api_key)
        try:
            deleting = engine.delete(f"{PLATFORM}:{channel_id}", [message_id])
        except ChinwagError as error:  # the engine is shutting down
            raise HTTPException(503, "the bot is shutting down") from error
        # Shielded: a client that goes away does not cancel a delete half done.
        deleted = await asyncio.shield(deleting)
        if deleted == 0:
            raise HTTPException(404, NOT_FOUND)
        return {"deleted": deleted}

    @router.get("/api/limits")
    async def limits() -> dict[str, int]:
        """What one message may carry: `max_attachments` files and `max_upload_bytes` for the
        whole request body (the files' base64 included)."""
        return {"max_attachments": max_attachments, "max_upload_bytes": max_upload_bytes}

    return router
