"""The chat page in a real (headless) Chromium: type, watch the reply stream in, reload."""

from __future__ import annotations

import os
from pathlib import Path

from playwright.async_api import async_playwright, expect

from storage.repository import ChatRepository
from tests.bot.doubles import SlowEchoBackend
from tests.conftest import EngineFactory
from tests.fakes.web_harness import running_web

CHROMIUM = Path("/usr/bin/chromium")
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshot-chat.png"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_missing() -> str | None:
    """Why the browser cannot run, or None."""
    if not CHROMIUM.exists():
        return f"Chromium is needed at {CHROMIUM} (apt-get install -y chromium)"
    return None


def screenshot_path(tmp_path: Path) -> Path:
    """docs/screenshot-chat.png when CHINWAG_UPDATE_SCREENSHOT=1 (to refresh the README's picture);
    otherwise a temporary file, so that running the tests never changes the checkout."""
    return DOCS_SCREENSHOT if os.environ.get("CHINWAG_UPDATE_SCREENSHOT") == "1" else tmp_path / "chat.png"


async def test_chat_in_a_real_browser(
    make_engine: EngineFactory, repository: ChatRepository, tmp_path: Path
) -> None:
    # A failure, not a skip: this test is the only proof that the page works.
    missing = chromium_missing()
    assert missing is None, missing
    # A short pause per chunk, so the page has to render a reply that is still arriving.
    engine = await make_engine(SlowEchoBackend(delay_s=0.15))
    async with running_web(engine, repository) as web, async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 900, "height": 640})
            page.set_default_timeout(10_000)
            problems: list[str] = []  # script errors and console errors (CSP violations show there)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            await page.goto(web.url + "/")
            await expect(page.locator("#empty")).to_be_visible()

            await page.fill("#input", "hi <b>there</b>")
            await page.keyboard.press("Enter")
            reply = page.locator(".message.assistant").last
            # Part of the reply is on screen while the rest is still being generated.
            await page.wait_for_function(
                "() => { const b = [...document.querySelectorAll('.message.assistant')].pop();"
                " return b && b.classList.contains('streaming') && b.textContent.length > 0; }"
            )
            partial = await reply.text_content() or ""
            assert partial and partial != "echo[0]: hi <b>there</b>", partial
            await expect(reply).to_have_text("echo[0]: hi <b>there</b>")  # escaped, not rendered
            assert await page.locator(".message b").count() == 0

            await page.fill("#input", "how are you?")
            await page.click("#send")
            await expect(page.locator(".message.assistant").last).to_have_text("echo[2]: how are you?")
            await expect(page.locator(".message.assistant").last).to_have_attribute("data-status", "answered")

            await page.reload()
            texts = page.locator(".message")
            await expect(texts).to_have_text(
                ["hi <b>there</b>", "echo[0]: hi <b>there</b>", "how are you?", "echo[2]: how are you?"]
            )
            await page.click("#advanced summary")
            await page.fill("#system", "You are a pirate.")
            # The README's picture shows a real model's Markdown reply instead: see
            # test_web_markdown_browser.py (test_a_bundled_model_reply_renders_as_markdown).
            screenshot = tmp_path / "chat.png"
            await page.screenshot(path=str(screenshot))
            assert screenshot.stat().st_size > 10_000  # a rendered page, not an empty image

            await page.click("#apply")
            await expect(page.locator("#options-status")).to_contain_text("System prompt updated")
            await page.click("#clear")
            await expect(page.locator(".message")).to_have_count(0)
            await page.reload()
            await expect(page.locator("#empty")).to_be_visible()
            await expect(page.locator(".message")).to_have_count(0)
            channel = await page.evaluate("localStorage.getItem('chinwag.channel')")
            assert problems == []
        finally:
            await browser.close()
    settings = await repository.get_settings(f"web:{channel}")
    assert settings.system_prompt == "You are a pirate."
    assert await repository.message_count(f"web:{channel}") == 0
