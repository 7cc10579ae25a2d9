"""The openai backend against the fake OpenAI-compatible server, for end-to-end tests through the
platform adapters: what the model received is read from the fake's records."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from bot.backends.openai_chat import OpenAIChatBackend
from bot.backends.remote_retry import RetryPolicy
from tests.fakes.openai_server import FakeOpenAI

SYSTEM = "You are Chinwag, a test bot."


@dataclass
class RemoteModel:
    """A fake server and a started openai backend that talks to it."""

    fake: FakeOpenAI
    backend: OpenAIChatBackend

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The JSON body of every generation request, in order."""
        bodies = [request.body for request in self.fake.generation_requests]
        assert all(isinstance(body, dict) for body in bodies)
        return bodies

    def messages(self, index: int = -1) -> list[tuple[str, str]]:
        """The `(role, content)` messages of one request (the newest by default)."""
        return [(message["role"], message["content"]) for message in self.requests[index]["messages"]]

    def all_content(self) -> str:
        """Every message of every request, as one text (to check what never reached the model)."""
        return "\n".join(
            content for index in range(len(self.requests)) for _, content in self.messages(index)
        )


@asynccontextmanager
async def remote_model(*, send_usage: bool = False, vision: bool = False) -> AsyncIterator[RemoteModel]:
    """A started `FakeOpenAI` (see its `send_usage`) and an openai backend pointing at it, sending
    images as content parts when `vision` is set (`model.vision`)."""
    async with FakeOpenAI(send_usage=send_usage) as fake:
        assert isinstance(fake, FakeOpenAI)
        backend = OpenAIChatBackend(
            base_url=fake.base_url,
            model_name="fake-chat-1",
            api_key="sk-test",
            context_window=4096,
            connect_timeout_s=1.0,
            read_timeout_s=5.0,
            retry=RetryPolicy(max_retries=0, backoff_s=0.001),
            vision=vision,
        )
        await backend.start()
        try:
            yield RemoteModel(fake, backend)
        finally:
            await backend.stop()
