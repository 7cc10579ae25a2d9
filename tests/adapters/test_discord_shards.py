"""Discord sharding: `discord.shard_count` alone runs every shard in one process (discord.py's
AutoShardedClient); with `discord.shard_id`, each process runs one shard."""

from __future__ import annotations

from collections.abc import AsyncIterator

import discord
import pytest
from pydantic import SecretStr

from adapters.discord import DiscordAdapter, shard_for
from bot.config import DiscordConfig, parse_settings
from bot.errors import ConfigError
from tests.conftest import EngineFactory
from tests.fakes.discord_server import GUILD_ID, FakeDiscord

# Every command the bot publishes (the contract's and the community's).
COMMAND_SET = {"help", "reset", "system", "temperature", "persona", "context", "listen", "usage", "forget"}

DM = 600_000_000_000_000_001

TOKEN = "MTIz.TEST-discord-token-never-logged"


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(token=TOKEN) as server:
        yield server


async def start_shard(
    fake: FakeDiscord, make_engine: EngineFactory, shard_id: int | None, count: int
) -> DiscordAdapter:
    config = DiscordConfig(
        token=SecretStr(TOKEN),
        api_base=fake.api_base,
        gateway_url=fake.gateway_url,
        shard_id=shard_id,
        shard_count=count,
        ready_timeout_s=10.0,
    )
    adapter = DiscordAdapter(config, await make_engine(), guild_ready_timeout_s=0.05)
    await adapter.start()
    return adapter


async def test_a_process_identifies_as_its_shard_and_only_shard_0_publishes_commands(
    fake: FakeDiscord, make_engine: EngineFactory
) -> None:
    adapter = await start_shard(fake, make_engine, 1, 2)
    try:
        assert fake.identify_payloads[-1]["shard"] == [1, 2]
        assert fake.commands == []  # global commands: shard 0 publishes them
    finally:
        await adapter.stop()
    adapter = await start_shard(fake, make_engine, 0, 2)
    try:
        assert fake.identify_payloads[-1]["shard"] == [0, 2]
        assert {command["name"] for command in fake.commands} == COMMAND_SET
    finally:
        await adapter.stop()


async def test_shard_count_alone_runs_every_shard_in_this_process(
    fake: FakeDiscord, make_engine: EngineFactory
) -> None:
    adapter = await start_shard(fake, make_engine, None, 1)
    try:
        assert isinstance(adapter._client, discord.AutoShardedClient)
        assert fake.identify_payloads[-1]["shard"] == [0, 1]
        fake.push_message(DM, "hi")
        await fake.wait_for(lambda: fake.texts(DM) == ["echo[0]: hi"])
        # One process holds every shard: it publishes the commands.
        assert {command["name"] for command in fake.commands} == COMMAND_SET
    finally:
        await adapter.stop()


def test_guilds_are_spread_by_discords_formula_and_direct_messages_go_to_shard_0() -> None:
    assert shard_for(None, 4) == 0
    assert shard_for(GUILD_ID, 1) == 0
    assert shard_for(GUILD_ID, 4) == (GUILD_ID >> 22) % 4
    assert {shard_for((n << 22), 3) for n in range(6)} == {0, 1, 2}


@pytest.mark.parametrize(
    ("discord", "message"),
    [
        ({"shard_id": 0}, "shard_id needs shard_count"),
        ({"shard_id": 2, "shard_count": 2}, "shard_id must be below shard_count"),
    ],
)
def test_shard_settings_are_checked(discord: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings({"discord": discord})
