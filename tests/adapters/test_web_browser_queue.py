"""The chat page in a real (headless) Chromium while its reply waits in the model's queue: the
pending bubble shows the place in line, follows it, and gives way to the reply's text."""

from __future__ import annotations

import asyncio
from pathlib import Path

from playwright.async_api import async_playwright, expect

from storage.repository import ChatRepository
from tests.adapters.test_web_browser import ARGS, CHROMIUM, chromium_missing
from tests.bot.doubles import LineBackend
from tests.conftest import EngineFactory
from tests.fakes.waiting import wait_until
from tests.fakes.web_harness import read_sse, running_web, web_client


async def test_the_pending_bubble_shows_its_place_in_line_until_the_reply(
    make_engine: EngineFactory, repository: ChatRepository, tmp_path: Path
) -> None:
    missing = chromium_missing()
    assert missing is None, missing
    backend = LineBackend()  # the model answers one at a time
    backend.hold("first", "second")
    engine = await make_engine(backend)
    async with (
        running_web(engine, repository) as web,
        web_client(web) as client,
        async_playwright() as playwright,
    ):
        # Two other conversations (API clients) keep the model busy and the line long.
        async def other(text: str) -> None:
            url = f"/api/channels/api-{text}/messages?stream=true"
            async with client.stream("POST", url, json={"text": text}) as response:
                await read_sse(response)

        others = [asyncio.create_task(other("first"))]
        await wait_until(lambda: backend.running == ["first"], what="the first reply has the model")
        others.append(asyncio.create_task(other("second")))
        await wait_until(lambda: backend.places() == [None, 1], what="the second waits")

        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 900, "height": 640})
            page.set_default_timeout(10_000)
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            await page.goto(web.url + "/")
            await expect(page.locator("#send")).to_be_enabled()
            await page.fill("#input", "hello")
            await page.keyboard.press("Enter")
            reply = page.locator(".message.assistant").last
            await expect(reply).to_have_text("#2 in line")  # after 2 s in line
            await expect(reply).to_have_class("message assistant streaming queued")
            await page.screenshot(path=str(tmp_path / "queue.png"))

            backend.release("first")
            await expect(reply).to_have_text("#1 in line")
            backend.release("second")
            await expect(reply).to_have_text("echo[0]: hello")
            await expect(reply).to_have_attribute("data-status", "answered")
            await expect(reply).to_have_class("message assistant markdown")
            await asyncio.wait_for(asyncio.gather(*others), 10)

            await page.reload()  # the stored conversation has the reply only
            await expect(page.locator(".message")).to_have_text(["hello", "echo[0]: hello"])
            assert problems == []
        finally:
            await browser.close()
