"""Start-up pre-flight: a web port already taken stops `run` at once, before the model loads."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bot.__main__ import main
from bot.app import serve
from bot.backends.echo import EchoBackend
from bot.config import load_settings
from bot.errors import ChinwagError
from tests.fakes.waiting import wait_until


class StartRecorder(EchoBackend):
    """Echo that records whether anything started it (the model load, for a real backend)."""

    def __init__(self) -> None:
        self.started = False

    async def start(self) -> None:
        self.started = True


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 with a listener on it (another bot, say)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield int(listener.getsockname()[1])


def write_config(folder: Path, port: int) -> Path:
    config = {
        "model": {"backend": "echo"},
        "storage": {"url": "sqlite+aiosqlite:///data/bot.db"},
        "telegram": {"enabled": False},
        "discord": {"enabled": False},
        "web": {"host": "127.0.0.1", "port": port},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


async def test_a_taken_port_fails_fast_before_the_backend_starts(tmp_path: Path, taken_port: int) -> None:
    settings = load_settings(write_config(tmp_path, taken_port), environ={})
    backend = StartRecorder()
    began = time.perf_counter()
    with pytest.raises(ChinwagError) as caught:
        await asyncio.wait_for(serve(settings, backend), 10)
    assert time.perf_counter() - began < 2
    assert not backend.started
    message = str(caught.value)
    assert f"127.0.0.1:{taken_port}" in message and "already in use" in message
    assert f"web.port (now {taken_port})" in message
    assert not (tmp_path / "data").exists()  # nor was the database opened


def test_run_says_which_setting_to_change_and_exits_1(
    tmp_path: Path, taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--config", str(write_config(tmp_path, taken_port))]) == 1
    assert capsys.readouterr().err == (
        f"chinwag: the web server cannot listen on 127.0.0.1:{taken_port}: the port is already in use "
        f"(is another Chinwag running?); stop the other program or set web.port (now {taken_port}) "
        "in the config file to a free port\n"
    )
    assert not (tmp_path / "data").exists()


async def test_a_free_port_passes_the_preflight_and_the_bot_starts(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    settings = load_settings(write_config(tmp_path, port), environ={})
    backend = StartRecorder()
    task = asyncio.create_task(serve(settings, backend))

    async def listening() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    try:
        # The bot comes up and listens where the pre-flight looked.
        await wait_until(listening, what=f"the bot listens on port {port}")
        assert backend.started
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # The relative SQLite path resolved against the config file's folder.
    assert (tmp_path / "data" / "bot.db").exists()
