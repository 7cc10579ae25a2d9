"""The terminal chat as a user runs it: `python -m bot chat` with stdin piped."""

from __future__ import annotations

import io
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapters.console import ConsoleAdapter
from tests.adapters.doubles import IgnoresUnaddressed
from tests.conftest import EngineFactory

REPO = Path(__file__).resolve().parents[2]


def config(tmp_path: Path, backend: str = "echo", extra: str = "") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"model:\n  backend: {backend}\n{extra}storage:\n  url: sqlite+aiosqlite:///{tmp_path / 'chat.db'}\n",
        encoding="utf-8",
    )
    return path


def chat(config_path: Path, stdin: bytes, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "bot", "chat", "--config", str(config_path)],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        cwd=config_path.parent,
        env=env,
        check=False,
    )


def test_piped_chat_prints_one_reply_per_line_and_remembers_across_runs(tmp_path: Path) -> None:
    path = config(tmp_path)
    first = chat(path, b"hi\nyo\n")
    assert first.returncode == 0, first.stderr.decode()
    assert first.stdout.decode().splitlines() == ["echo[0]: hi", "echo[2]: yo"]
    second = chat(path, b"still me\n")
    assert second.stdout.decode().splitlines() == ["echo[4]: still me"]


def test_the_terminal_is_not_rate_limited(tmp_path: Path) -> None:
    # The local operator may pipe a file: more lines than the limit allows all get answered.
    path = config(tmp_path, extra="chat:\n  rate_limit:\n    messages: 1\n")
    result = chat(path, b"one\ntwo\nthree\n")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == ["echo[0]: one", "echo[2]: two", "echo[4]: three"]


def test_commands_work_in_the_terminal(tmp_path: Path) -> None:
    result = chat(config(tmp_path), b"hello\n/reset\nagain\n/temperature 0\n/temperature\n")
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "echo[0]: hello"
    assert "reset" in lines[1].lower() and "cleared" in lines[1].lower()
    assert lines[2] == "echo[0]: again"
    assert lines[3] == "Temperature set to 0 for this chat."
    assert lines[4] == "Temperature (this chat's): 0"


async def test_the_terminals_user_is_the_operator_admin_and_staff(make_engine: EngineFactory) -> None:
    service = IgnoresUnaddressed(await make_engine())
    stdout = io.StringIO()
    console = ConsoleAdapter(service, stdin=io.BytesIO(b"hi\n"), stdout=stdout, interactive=False)
    await console.run()
    assert stdout.getvalue() == "echo[0]: hi\n"
    (event,) = service.events
    assert (event.is_admin, event.is_staff, event.is_direct, event.addressed, event.rate_limited) == (
        True,
        True,
        True,
        True,
        False,
    )


def test_garbage_input_does_not_crash_the_chat(tmp_path: Path) -> None:
    result = chat(config(tmp_path), b"\xff\xfe bad utf8\n\x00\x00\n\n" + b"x" * 20_000 + b"\nok\n")
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "echo[0]: \ufffd\ufffd bad utf8"
    assert "empty" in lines[1] and "empty" in lines[2]
    assert lines[3].startswith("echo[2]: xxx")
    assert "first 8000" in result.stdout.decode()
    assert lines[-1] == "echo[4]: ok"


def test_end_of_input_without_a_newline_and_without_input(tmp_path: Path) -> None:
    path = config(tmp_path)
    assert chat(path, b"last line").stdout.decode() == "echo[0]: last line\n"
    empty = chat(path, b"")
    assert empty.returncode == 0 and empty.stdout == b""


def test_run_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    path = config(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "run", "--config", str(path)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        assert process.stderr is not None
        seen = b""
        while b"Chinwag is up" not in seen and time.monotonic() < deadline:
            seen += process.stderr.readline()
        assert b"Chinwag is up" in seen, seen.decode()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait()


@pytest.mark.model
def test_the_bundled_model_answers_two_questions_through_a_pipe(tmp_path: Path) -> None:
    cache = os.environ.get("CHINWAG_MODEL_CACHE", str(Path.home() / ".cache" / "chinwag" / "models"))
    path = config(
        tmp_path,
        backend="local",
        extra=f"  temperature: 0\n  max_new_tokens: 24\n  cache_dir: {cache}\n",
    )
    result = chat(path, b"Hello, who are you?\nWhat did I just ask you?\n", timeout=600)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    # Nothing but the replies on the terminal: no library warning (transformers once printed a
    # FutureWarning about `past_key_values` in the middle of a reply).
    assert "Warning" not in result.stderr.decode(), result.stderr.decode()[-2000:]
    with sqlite3.connect(tmp_path / "chat.db") as db:
        stored = db.execute("SELECT role, content FROM messages ORDER BY id").fetchall()
    assert [role for role, _ in stored] == ["user", "assistant", "user", "assistant"]
    assert stored[0][1] == "Hello, who are you?" and stored[2][1] == "What did I just ask you?"
    answers = [content for role, content in stored if role == "assistant"]
    assert all(answer.strip() for answer in answers)
    assert result.stdout.decode() == "".join(f"{answer}\n" for answer in answers)


def test_interactive_terminal_shows_prompts_and_ends_on_ctrl_d(tmp_path: Path) -> None:
    """A real pseudo-terminal: the chat prompts, answers, and Ctrl-D ends it with exit code 0."""
    path = config(tmp_path)
    controller, terminal = os.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "chat", "--config", str(path)],
        stdin=terminal,
        stdout=terminal,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
        env=env,
    )
    os.close(terminal)

    def read_until(marker: bytes, timeout: float = 60) -> bytes:
        seen = b""
        deadline = time.monotonic() + timeout
        while marker not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                seen += os.read(controller, 4096)
        assert marker in seen, seen.decode(errors="replace")
        return seen

    try:
        read_until(b"you> ")
        os.write(controller, b"hello there\n")
        answer = read_until(b"you> ")
        assert b"bot> echo[0]: hello there" in answer
        os.write(controller, b"\x04")  # Ctrl-D on an empty line: end of input
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait()
        os.close(controller)
