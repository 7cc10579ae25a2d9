"""The terminal chat (`python -m bot chat`): stdin lines in, streamed replies out.

Works on a TTY (prompts, streaming as the model writes) and with stdin piped or redirected from a
file (no prompts, one reply per input line). History lives in the database under `console:local`.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import threading
from typing import BinaryIO, TextIO

from bot.events import ChatEvent
from bot.ports import ChatService
from bot.sanitize import decode_text

CHANNEL = "local"
USER_PROMPT = "you> "
BOT_PROMPT = "bot> "


def _local_user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        return "you"


class ConsoleAdapter:
    """Chats with the local operator (always an admin and staff: this is their own bot) on
    stdin/stdout."""

    name = "console"

    def __init__(
        self,
        engine: ChatService,
        *,
        stdin: BinaryIO,
        stdout: TextIO,
        interactive: bool,
    ) -> None:
        self._engine = engine
        self._stdin = stdin
        self._stdout = stdout
        self._interactive = interactive
        self._user_name = _local_user_name()

    async def run(self) -> None:
        """Answer line after line until end of input (Ctrl-D)."""
        lines = self._start_reader()
        if self._interactive:
            self._write("Chinwag terminal chat. /help lists the commands; Ctrl-D quits.\n")
        while True:
            if self._interactive:
                self._write(USER_PROMPT)
            raw = await lines.get()
            if raw is None:
                if self._interactive:
                    self._write("\n")
                return
            await self._answer(decode_text(raw).rstrip("\n"))

    async def _answer(self, text: str) -> None:
        event = ChatEvent(
            platform="console",
            channel=CHANNEL,
            author_id="local",
            author_name=self._user_name,
            text=text,
            is_admin=True,
            is_direct=True,
            rate_limited=False,  # the local operator: no flood protection
            is_staff=True,  # the operator: past every access list and quota
        )
        reply = self._engine.handle(event)
        if self._interactive:
            self._write(BOT_PROMPT)
        async for chunk in reply:
            self._write(chunk)
        self._write("\n")

    def _start_reader(self) -> asyncio.Queue[bytes | None]:
        """Read stdin on a daemon thread: a blocked `readline` must never keep the process alive
        after the chat ended (a worker of the default executor would)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        def read_lines() -> None:
            try:
                for line in iter(self._stdin.readline, b""):
                    loop.call_soon_threadsafe(queue.put_nowait, line)
            except (OSError, ValueError):  # stdin closed underneath us
                pass
            finally:
                # RuntimeError: the loop is already closed, so nobody is waiting for the end.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(queue.put_nowait, None)

        threading.Thread(target=read_lines, name="chinwag-stdin", daemon=True).start()
        return queue

    def _write(self, text: str) -> None:
        self._stdout.write(text)
        self._stdout.flush()
