"""Command line: `python -m bot run` (all enabled adapters), `python -m bot chat` (terminal),
`python -m bot migrate` (bring the database schema to the newest revision, then exit) and
`python -m bot export --user PLATFORM:ID` (one user's stored messages as JSON)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from bot.app import Application, configure_logging, database_options, serve
from bot.config import DEFAULT_CONFIG_PATH, Settings, load_settings
from bot.errors import ChinwagError, ConfigError
from storage.db import Database


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bot", description="Chinwag chat bot")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("run", "start every adapter enabled in the config, until SIGINT/SIGTERM"),
        ("chat", "chat in the terminal (reads stdin, prints replies; Ctrl-D quits)"),
        ("migrate", "migrate the database schema to the newest revision and exit (a release step)"),
        ("export", "write one user's stored messages as JSON (a data request) and exit"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument(
            "--config", default=str(DEFAULT_CONFIG_PATH), help="path to config.yaml (default: %(default)s)"
        )
        if name == "export":
            sub.add_argument("--user", required=True, help='PLATFORM:ID, e.g. "telegram:1011"')
            sub.add_argument("--output", help="file to write (default: standard output)")
    return parser


async def _chat(settings: Settings) -> None:
    from adapters.console import ConsoleAdapter

    interactive = sys.stdin.isatty()
    if interactive:
        print("Loading the model…", file=sys.stderr, flush=True)
    async with Application(settings) as app:
        console = ConsoleAdapter(
            app.engine, stdin=sys.stdin.buffer, stdout=sys.stdout, interactive=interactive
        )
        await console.run()


async def _migrate(settings: Settings) -> None:
    # Starting the database migrates it (under an advisory lock on PostgreSQL, so a release step
    # and workers starting at the same time do not collide); nothing else is started.
    database = Database(settings.storage.url.get_secret_value(), options=database_options(settings))
    await database.start()
    await database.stop()
    print("chinwag: the database schema is up to date", file=sys.stderr)


async def _export(settings: Settings, user: str) -> str:
    from bot.export import export_user
    from storage.repository import ChatRepository

    database = Database(settings.storage.url.get_secret_value(), options=database_options(settings))
    await database.start()
    try:
        return await export_user(ChatRepository(database), user)
    finally:
        await database.stop()


def _write_export(document: str, user: str, output: str | None) -> None:
    if output is None:
        sys.stdout.write(document)
    else:
        Path(output).write_text(document, encoding="utf-8")
        print(f"chinwag: exported {user} to {output}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as error:
        print(f"chinwag: configuration error: {error}", file=sys.stderr)
        return 2
    # The terminal chat keeps stderr quiet unless something is wrong: its stdout is the conversation.
    quiet_chat = args.command == "chat" and settings.logging.level == "INFO"
    configure_logging("WARNING" if quiet_chat else settings.logging.level)
    try:
        if args.command == "export":
            from bot.export import parse_user

            parse_user(args.user)  # a malformed --user is refused before the database is opened
            _write_export(asyncio.run(_export(settings, args.user)), args.user, args.output)
            return 0
        commands = {"chat": _chat, "migrate": _migrate, "run": serve}
        asyncio.run(commands[args.command](settings))
    except KeyboardInterrupt:
        return 0
    except ConfigError as error:
        print(f"chinwag: configuration error: {error}", file=sys.stderr)
        return 2
    except ChinwagError as error:
        print(f"chinwag: {error}", file=sys.stderr)
        return 1
    except ValueError as error:  # a malformed --user
        print(f"chinwag: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
