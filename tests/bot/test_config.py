"""The config loader: defaults, ${ENV} expansion, and one clear line for every mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import Settings, load_settings, parse_settings
from bot.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_shipped_config_is_valid_and_matches_the_defaults() -> None:
    shipped = load_settings(REPO / "config.yaml", environ={})
    # The shipped relative SQLite path lives beside config.yaml, wherever the bot starts from.
    assert shipped.storage.url.get_secret_value() == f"sqlite+aiosqlite:///{REPO}/data/bot.db"
    assert Settings().storage.url.get_secret_value() == "sqlite+aiosqlite:///data/bot.db"
    assert shipped.model_copy(update={"storage": Settings().storage}) == Settings()
    assert shipped.model.backend == "local" and shipped.model.path == "bundled:smollm2"
    assert shipped.web.port == 8080 and shipped.telegram.token is None


def test_telegram_timings_are_read_and_zero_caching_is_allowed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "telegram:\n  poll_timeout_s: 50\n  edit_interval_s: 0.5\n  typing_interval_s: 2\n"
        "  admin_cache_s: 0\n  drain_s: 0\n",
    )
    telegram = load_settings(path, environ={}).telegram
    assert (telegram.poll_timeout_s, telegram.edit_interval_s, telegram.typing_interval_s) == (50, 0.5, 2.0)
    assert telegram.admin_cache_s == 0.0 and telegram.drain_s == 0.0


def test_an_empty_file_means_all_defaults(tmp_path: Path) -> None:
    loaded = load_settings(write(tmp_path, ""), environ={})
    # The default SQLite path, anchored beside the file (see the relative-path tests below).
    assert loaded.storage.url.get_secret_value() == f"sqlite+aiosqlite:///{tmp_path}/data/bot.db"
    assert loaded.model_copy(update={"storage": Settings().storage}) == Settings()


def test_env_references_are_expanded_and_unset_ones_mean_not_set(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "telegram:\n  token: ${TG}\ndiscord:\n  token: ${NOPE}\n"
        "model:\n  system_prompt: 'Hi ${WHO}, unset ${NOPE}.'\n",
    )
    settings = load_settings(path, environ={"TG": "123:abc", "WHO": "Ada"})
    assert settings.telegram.token is not None and settings.telegram.token.get_secret_value() == "123:abc"
    assert settings.discord.token is None
    assert settings.model.system_prompt == "Hi Ada, unset ."


def test_an_explicit_empty_system_prompt_is_kept(tmp_path: Path) -> None:
    assert (
        load_settings(write(tmp_path, "model:\n  system_prompt: ''\n"), environ={}).model.system_prompt == ""
    )


def test_access_lists_personas_and_quota_are_read(tmp_path: Path) -> None:
    text = (
        "access:\n  allowed_users: ['telegram:1011', 'discord:81234', 'web:room_1']\n"
        "  blocked_channels: ['telegram:-1001234', 'telegram:-1001234:7']\n  direct_messages: false\n"
        "discord:\n  allowed_roles: ['123', 456]\n"
        "chat:\n  quota:\n    tokens_per_day: 0\n  group_context: member\n"
        "personas:\n  Sea_Dog-2:\n    system_prompt: Arr\n    temperature: 0.9\n"
    )
    settings = load_settings(write(tmp_path, text), environ={})
    assert settings.access.allowed_users == ("telegram:1011", "discord:81234", "web:room_1")
    assert not settings.access.direct_messages
    assert settings.discord.allowed_roles == (123, 456)
    assert settings.chat.quota.tokens_per_day == 0 and settings.chat.group_context == "member"
    assert settings.personas["Sea_Dog-2"].temperature == 0.9


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model:\n  temprature: 0.5\n", "unknown key 'model.temprature' (did you mean 'temperature'?)"),
        ("modle:\n  backend: echo\n", "unknown key 'modle' (did you mean 'model'?)"),
        ("model:\n  temperature: hot\n", "invalid value for 'model.temperature'"),
        (
            "model:\n  temperature: 3\n",
            "invalid value for 'model.temperature': Input should be less than or equal to 2",
        ),
        ("model:\n  backend: gpt5\n", "invalid value for 'model.backend'"),
        ("model:\n  top_k: -1\n", "invalid value for 'model.top_k'"),
        ("web:\n  port: 70000\n", "invalid value for 'web.port'"),
        ("chat:\n  rate_limit:\n    messages: 0\n", "invalid value for 'chat.rate_limit.messages'"),
        ("telegram:\n  admins: [abc]\n", "invalid value for 'telegram.admins.0'"),
        ("telegram:\n  poll_timeout_s: 0\n", "invalid value for 'telegram.poll_timeout_s'"),
        ("telegram:\n  poll_timeout_s: 51\n", "invalid value for 'telegram.poll_timeout_s'"),
        ("telegram:\n  edit_interval_s: 0\n", "invalid value for 'telegram.edit_interval_s'"),
        ("telegram:\n  typing_interval_s: -1\n", "invalid value for 'telegram.typing_interval_s'"),
        ("telegram:\n  admin_cache_s: -0.5\n", "invalid value for 'telegram.admin_cache_s'"),
        ("telegram:\n  drain_s: -1\n", "invalid value for 'telegram.drain_s'"),
        ("storage:\n  url: mysql://x\n", "invalid value for 'storage.url': expected a sqlite+aiosqlite://"),
        (
            "access:\n  allowed_users: [1011]\n",
            "invalid value for 'access.allowed_users': expected \"platform:id\"",
        ),
        ("access:\n  blocked_users: ['telegram:abc']\n", "got 'telegram:abc'"),
        ("access:\n  allowed_users: ['slack:U123']\n", "invalid value for 'access.allowed_users'"),
        ("access:\n  allowed_channels: ['discord:-5']\n", "invalid value for 'access.allowed_channels'"),
        ("access:\n  blocked_channels: ['telegram: -100']\n", "invalid value for 'access.blocked_channels'"),
        ("access:\n  direct_messages: maybe\n", "invalid value for 'access.direct_messages'"),
        ("discord:\n  allowed_roles: [admins]\n", "invalid value for 'discord.allowed_roles.0'"),
        ("chat:\n  quota:\n    tokens_per_day: -5\n", "invalid value for 'chat.quota.tokens_per_day'"),
        ("chat:\n  retention_days: -1\n", "invalid value for 'chat.retention_days'"),
        ("chat:\n  group_context: private\n", "invalid value for 'chat.group_context'"),
        (
            "personas:\n  sea dog:\n    system_prompt: Arr\n",
            "invalid value for 'personas': persona name 'sea dog' must be 1 to 32 letters",
        ),
        ("personas:\n  default:\n    system_prompt: x\n", "'default' is reserved"),
        ("personas:\n  pirate:\n    temperature: 0.9\n", "invalid value for 'personas.pirate.system_prompt'"),
        (
            "personas:\n  pirate:\n    system_prompt: ''\n",
            "invalid value for 'personas.pirate.system_prompt'",
        ),
        ("personas:\n  pirate:\n    system_prompt: x\n    mood: 3\n", "unknown key 'personas.pirate.mood'"),
        ("- just\n- a list\n", "expected a mapping of sections"),
        ("model: [\n", "not valid YAML at line"),
    ],
)
def test_mistakes_give_one_line_naming_the_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), environ={})
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_secrets_never_appear_in_errors(tmp_path: Path) -> None:
    secret = "987654:SUPER-SECRET-TOKEN"
    cases = [
        "telegram:\n  admins: ['${TG}']\n",  # a secret put where an int belongs
        "storage:\n  url: 'postgresql://bot:${TG}@db/chat'\n",  # wrong driver, password inside
        "discord:\n  token: {nested: '${TG}'}\n",
    ]
    for text in cases:
        with pytest.raises(ConfigError) as caught:
            load_settings(write(tmp_path, text), environ={"TG": secret})
        assert secret not in str(caught.value)
        assert "SUPER-SECRET" not in repr(caught.value)


def test_secret_values_are_masked_in_reprs() -> None:
    settings = parse_settings({"telegram": {"token": "123:abc"}, "model": {"api_key": "sk-xyz"}}, environ={})
    assert "123:abc" not in repr(settings) and "sk-xyz" not in repr(settings)
    assert "123:abc" not in str(settings.model_dump())


def test_a_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "nope.yaml")


def test_the_cli_reports_config_errors_in_one_line_with_exit_code_2(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  backend: echo\n  tempreature: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "bot", "chat", "--config", str(path)],
        input=b"hi\n",
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == b""
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "model.tempreature" in lines[0]


def test_a_relative_sqlite_path_is_beside_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "deploy"
    folder.mkdir()
    path = write(folder, "storage:\n  url: sqlite+aiosqlite:///data/../state/bot.db?timeout=5\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory plays no part
    for given in (path, Path("../deploy/config.yaml")):
        url = load_settings(given, environ={}).storage.url.get_secret_value()
        assert url == f"sqlite+aiosqlite:///{folder}/state/bot.db?timeout=5"


def test_the_default_sqlite_path_without_a_config_file_is_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no config.yaml here: all defaults, "beside" the missing file
    url = load_settings(environ={}).storage.url.get_secret_value()
    assert url == f"sqlite+aiosqlite:///{tmp_path}/data/bot.db"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:////var/lib/chinwag/bot.db",
        "sqlite+aiosqlite:///~/chinwag.db",
        "sqlite+aiosqlite:///file:bot.db?mode=rwc&uri=true",
        "postgresql+asyncpg://bot@db/chat",
    ],
)
def test_other_database_urls_are_kept_as_written(tmp_path: Path, url: str) -> None:
    path = write(tmp_path, f"storage:\n  url: '{url}'\n")
    assert load_settings(path, environ={}).storage.url.get_secret_value() == url
