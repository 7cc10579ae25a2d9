"""The chat page's Stop button in a real (headless) Chromium: the kept text survives a reload."""

from __future__ import annotations

import re

from playwright.async_api import async_playwright, expect

from storage.repository import ChatRepository
from tests.adapters.test_web_browser import ARGS, CHROMIUM, chromium_missing
from tests.bot.doubles import EndlessBackend
from tests.conftest import EngineFactory
from tests.fakes.web_harness import running_web

WORDS = re.compile(r"w\d+( w\d+)*")  # the kept words as the rendered (Markdown) bubble shows them

AFTER = "el => getComputedStyle(el, '::after').content"  # the cut marker is drawn by chat.css


async def test_stop_in_a_real_browser_keeps_the_text_across_a_reload(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    missing = chromium_missing()
    assert missing is None, missing
    engine = await make_engine(EndlessBackend(delay_s=0.05))  # a reply that only Stop ends
    async with running_web(engine, repository) as web, async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = await browser.new_page()
            page.set_default_timeout(10_000)
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            await page.goto(web.url + "/")
            await expect(page.locator("#stop")).to_be_hidden()
            await expect(page.locator("#send")).to_be_enabled()

            await page.fill("#input", "tell me a long story")
            await page.keyboard.press("Enter")
            reply = page.locator(".message.assistant").last
            await expect(reply).to_contain_text("w2 ")  # streaming
            await expect(page.locator("#send")).to_be_disabled()
            await page.click("#stop")

            await expect(reply).to_have_attribute("data-status", "answered")
            await expect(reply).to_have_attribute("data-cut", "stopped")
            await expect(page.locator("#stop")).to_be_hidden()
            await expect(page.locator("#send")).to_be_enabled()
            kept = (await reply.text_content() or "").strip()
            assert WORDS.fullmatch(kept), kept  # the text so far; the notice is the marker
            assert await reply.evaluate(AFTER) == '"(stopped)"'

            await page.reload()
            after = page.locator(".message")
            await expect(after).to_have_text(["tell me a long story", kept])
            await expect(after.last).to_have_attribute("data-cut", "stopped")
            assert await after.last.evaluate(AFTER) == '"(stopped)"'
            await expect(page.locator("#send")).to_be_enabled()

            # Send works again after a stop: the next reply streams, and Stop ends it too.
            await page.fill("#input", "and another")
            await page.click("#send")
            await expect(page.locator(".message.assistant").last).to_contain_text("w1 ")
            await page.click("#stop")
            await expect(page.locator(".message.assistant").last).to_have_attribute("data-cut", "stopped")
            assert problems == []
        finally:
            await browser.close()
