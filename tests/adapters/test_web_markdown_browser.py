"""Replies as Markdown on the chat page, in a real (headless) Chromium.

The design contract (adapters/static/chat.js, renderMarkdown): Markdown renders while it streams
and again from the history after a reload; HTML in a reply shows as text and never runs; links are
http(s) or mailto only and open without an opener; code blocks have a working copy button; user
messages stay plain text.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import Browser, Dialog, Page, async_playwright, expect

from bot.backends.base import PreparedPrompt
from bot.backends.echo import EchoBackend
from bot.ports import SamplingSettings
from storage.repository import ChatRepository
from tests.adapters.test_web_browser import ARGS, CHROMIUM, chromium_missing, screenshot_path
from tests.conftest import EngineFactory
from tests.fakes.web_harness import running_web


class ScriptedBackend(EchoBackend):
    """Answers a message with the parts scripted for it, streamed five characters at a time (so
    the page sees unfinished Markdown such as `**bo`). A message in `paused` streams its first
    part, then waits for that event before the rest."""

    def __init__(self, replies: dict[str, tuple[str, ...]]) -> None:
        self.replies = replies
        self.paused: dict[str, asyncio.Event] = {}

    async def generate(self, prompt: PreparedPrompt, settings: SamplingSettings) -> AsyncGenerator[str, None]:
        message = prompt.input_text.split(": ", 1)[1]
        for index, part in enumerate(self.replies[message]):
            if index and message in self.paused:
                await self.paused[message].wait()
            for start in range(0, len(part), 5):
                yield part[start : start + 5]


@dataclass
class PageWatch:
    """What the page did that it never should: script errors, console errors (CSP refusals show
    there) and dialogs (an `alert` from a payload)."""

    problems: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    # A failure, not a skip: these tests are the only proof that the page renders safely.
    missing = chromium_missing()
    assert missing is None, missing
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def open_page(browser: Browser, url: str, height: int = 760) -> tuple[Page, PageWatch]:
    """The chat page at `url` in a fresh context that may use the clipboard."""
    context = await browser.new_context(viewport={"width": 900, "height": height})
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
    page = await context.new_page()
    page.set_default_timeout(10_000)
    watch = PageWatch()
    page.on("pageerror", lambda error: watch.problems.append(str(error)))
    page.on("console", lambda msg: watch.problems.append(msg.text) if msg.type == "error" else None)

    async def refuse(dialog: Dialog) -> None:
        watch.dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", refuse)
    await page.goto(url + "/")
    await expect(page.locator("#empty")).to_be_visible()
    return page, watch


async def send(page: Page, text: str) -> None:
    await expect(page.locator("#send")).to_be_enabled()  # the history is on screen
    await page.fill("#input", text)
    await page.keyboard.press("Enter")


async def font_of(page: Page, selector: str) -> str:
    return str(await page.locator(selector).first.evaluate("e => getComputedStyle(e).fontFamily"))


ASK = "Show **me** some `markdown`"  # Markdown in the user's own message: it must stay text
CODE = "def add(a, b):\n    return a + b"
MARKDOWN_REPLY = (
    "Here is **bold** text and `inline code`.\n\n```python\ndef add(a, b):\n",
    "    return a + b\n```\n\n## Notes\n\n- *one*\n- two\n\n> quoted\n\n"
    "| name | value |\n|:-----|------:|\n| a | 1 |\n\n"
    "See [the docs](https://example.com/docs) or mail <help@example.com>.",
)


async def expect_rendered(page: Page) -> None:
    """The finished `MARKDOWN_REPLY` as the page must show it."""
    reply = page.locator(".message.assistant").last
    await expect(reply.locator("strong")).to_have_text("bold")
    await expect(reply.locator("p > code")).to_have_text("inline code")
    await expect(reply.locator("pre > code.language-python")).to_have_text(CODE + "\n")
    await expect(reply.locator(".code-head")).to_contain_text("python")
    await expect(reply.locator("h2")).to_have_text("Notes")
    await expect(reply.locator("ul > li")).to_have_text(["one", "two"])
    await expect(reply.locator("li em")).to_have_text("one")
    await expect(reply.locator("blockquote")).to_have_text("quoted")
    await expect(reply.locator("td.align-right")).to_have_text("1")
    link = reply.locator("a", has_text="the docs")
    await expect(link).to_have_attribute("href", "https://example.com/docs")
    await expect(link).to_have_attribute("rel", "noopener noreferrer")
    await expect(link).to_have_attribute("target", "_blank")
    await expect(reply.locator("a", has_text="help@example.com")).to_have_attribute(
        "href", "mailto:help@example.com"
    )
    for code in ("p > code", "pre > code"):
        assert "monospace" in await font_of(page, f".message.assistant {code}")
    assert "monospace" not in await font_of(page, ".message.assistant p")
    # The user's message is plain text: its asterisks and backticks are still there.
    user = page.locator(".message.user").last
    await expect(user).to_have_text(ASK)
    assert await user.locator("strong, code").count() == 0


async def test_a_reply_renders_as_markdown_while_it_streams_and_after_a_reload(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    backend = ScriptedBackend({ASK: MARKDOWN_REPLY})
    backend.paused[ASK] = asyncio.Event()
    engine = await make_engine(backend)
    async with running_web(engine, repository) as web, chromium() as browser:
        page, watch = await open_page(browser, web.url)
        await send(page, ASK)
        # Halfway: the fence is still open, yet the page already shows a code block.
        streaming = page.locator(".message.assistant.streaming")
        await expect(streaming.locator("strong")).to_have_text("bold")
        await expect(streaming.locator("pre > code")).to_have_text("def add(a, b):\n")
        assert await streaming.locator("ul").count() == 0
        backend.paused[ASK].set()
        await expect(page.locator(".message.assistant").last).to_have_attribute("data-status", "answered")
        await expect_rendered(page)

        # The copy button puts the code, without the fence's last newline, on the real clipboard.
        copy = page.locator(".message.assistant .code-block button.copy")
        await copy.click()
        await expect(copy).to_have_text("Copied")
        assert await page.evaluate("navigator.clipboard.readText()") == CODE

        await page.reload()
        await expect(page.locator(".message")).to_have_count(2)
        await expect_rendered(page)  # the history renders the same way
        await page.click("#clear")
        await expect(page.locator(".message")).to_have_count(0)
        await expect(page.locator("#empty")).to_be_visible()
        assert watch.problems == [] and watch.dialogs == []


ATTACK = "attack"
# Each line tries one way out: raw HTML with a handler, a script, javascript: and data: links in
# every Markdown form, an image from elsewhere (the CSP would refuse it, noisily), an iframe.
HOSTILE_REPLY = (
    '<img src=x onerror="window.pwned = 1; alert(1)">\n\n'
    "<script>window.pwned = 2; alert(2)</script>\n\n"
    "[click me](javascript:window.pwned=3) and <javascript:window.pwned=4> and "
    "[tab](java\tscript:window.pwned=5) and "
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCg2KTwvc2NyaXB0Pg==)\n\n"
    '![pic](https://example.com/x.png) <iframe src="/frame"></iframe>\n\n'
    '[ref link][r] and <a href="javascript:window.pwned=7">raw</a> and '
    '[titled](https://example.com/ok "a title")\n\n'
    "[r]: javascript:window.pwned=8\n",
)


async def expect_inert(page: Page, watch: PageWatch) -> None:
    reply = page.locator(".message.assistant").last
    await expect(reply).to_contain_text('<img src=x onerror="window.pwned = 1; alert(1)">')
    await expect(reply).to_contain_text("<script>window.pwned = 2; alert(2)</script>")
    await expect(reply).to_contain_text("[click me](javascript:window.pwned=3)")
    assert await page.locator(".message img, .message script, .message iframe").count() == 0
    hrefs = await reply.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert hrefs == ["https://example.com/x.png", "https://example.com/ok"]
    handlers = await page.locator(".message, .message *").evaluate_all(
        "nodes => nodes.flatMap(n => [...n.attributes].map(a => a.name)).filter(n => n.startsWith('on'))"
    )
    assert handlers == []
    await reply.get_by_text("click me").click()  # text, not a link: nothing happens
    assert await page.evaluate("typeof window.pwned") == "undefined"
    assert watch.dialogs == [] and watch.problems == []


async def test_html_scripts_and_javascript_links_in_a_reply_stay_inert(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    engine = await make_engine(ScriptedBackend({ATTACK: HOSTILE_REPLY}))
    async with running_web(engine, repository) as web, chromium() as browser:
        page, watch = await open_page(browser, web.url)
        await send(page, ATTACK)
        await expect(page.locator(".message.assistant").last).to_have_attribute("data-status", "answered")
        await expect_inert(page, watch)
        await page.reload()
        await expect(page.locator(".message")).to_have_count(2)
        await expect_inert(page, watch)  # rendered from the history: just as inert


# Installed before the page's scripts: the page's markdown-it is made with raw HTML on, as if the
# first wall had fallen, so only DOMPurify stands between the reply and the page.
RAW_HTML_MARKDOWN = """
(() => {
  let factory;
  Object.defineProperty(window, "markdownit", {
    configurable: true,
    get: () => factory && ((options) => factory({ ...options, html: true })),
    set: (made) => { factory = made; },
  });
})();
"""


async def test_the_sanitizer_alone_keeps_raw_html_inert(
    make_engine: EngineFactory, repository: ChatRepository
) -> None:
    engine = await make_engine(ScriptedBackend({ATTACK: HOSTILE_REPLY}))
    async with running_web(engine, repository) as web, chromium() as browser:
        page, watch = await open_page(browser, web.url)
        await page.add_init_script(RAW_HTML_MARKDOWN)
        await page.reload()
        await send(page, ATTACK)
        reply = page.locator(".message.assistant").last
        await expect(reply).to_have_attribute("data-status", "answered")
        # Markdown let the raw <a> through: proof that the first wall is really down here.
        await expect(reply.locator("a", has_text="raw")).to_have_count(1)
        assert await page.locator(".message img, .message script, .message iframe").count() == 0
        hrefs = await reply.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
        assert hrefs == ["https://example.com/x.png", None, "https://example.com/ok"]
        assert await page.evaluate("typeof window.pwned") == "undefined"
        assert watch.dialogs == []
        # The one report allowed: Chromium checks the page's CSP when DOMPurify's inert parser meets
        # the <img>'s onerror, and reports the refusal (nothing would run even without the CSP).
        refused = "Executing inline event handler violates the following Content Security Policy"
        assert [problem for problem in watch.problems if not problem.startswith(refused)] == []


# Two turns of a real conversation: the 135M model answers the first with code blocks; lists it
# writes when asked for tips, in a follow-up (asked in one message, it writes code and prose only).
QUESTIONS = ("Show a Python function that adds two numbers.", "List three tips for naming Python functions.")


@pytest.mark.model
@pytest.mark.timeout(900)  # about 400 tokens on the CPU: a minute or two on 2 busy cores
async def test_bundled_model_replies_render_as_markdown(
    make_engine: EngineFactory, repository: ChatRepository, tmp_path: Path
) -> None:
    """The real model's Markdown on the real page; also the README's screenshot
    (`CHINWAG_UPDATE_SCREENSHOT=1` writes docs/screenshot-chat.png)."""
    from bot.backends.local import LocalBackend  # torch: imported only by the model tests

    cache = Path(os.environ.get("CHINWAG_MODEL_CACHE", Path.home() / ".cache" / "chinwag" / "models"))
    backend = LocalBackend("bundled:smollm2", cache_dir=cache, context_window=2048, generation_timeout_s=600)
    await backend.start()
    try:
        # Greedy, so the replies (and the screenshot) are the same on every run.
        settings = {"temperature": 0, "max_new_tokens": 200, "generation_timeout_s": 600}
        engine = await make_engine(backend, model=settings)
        async with running_web(engine, repository) as web, chromium() as browser:
            page, watch = await open_page(browser, web.url, height=1180)
            for question in QUESTIONS:
                await send(page, question)
                reply = page.locator(".message.assistant").last
                await expect(reply).to_have_attribute("data-status", "answered", timeout=600_000)
            replies = page.locator(".message.assistant")
            code, tips = replies.nth(0), replies.nth(1)
            await expect(code.locator("pre > code").first).to_contain_text("def ")
            assert await tips.locator("ol > li").count() >= 2
            assert await tips.locator("li strong").count() >= 2
            screenshot = screenshot_path(tmp_path)
            await page.screenshot(path=str(screenshot))
            assert screenshot.stat().st_size > 10_000  # a rendered page, not an empty image
            assert watch.problems == [] and watch.dialogs == []
    finally:
        await backend.stop()
