"""Files and deletes on the chat page in a real (headless) Chromium: the paperclip and a drop
attach a text file and an image, the reply reads them, a message is deleted with the keyboard.

Screenshots go to $CHINWAG_SHOTS_DIR when set (to look at them), else to the test's temporary
directory: `composer-chips.png` (the files as chips before sending), `conversation.png` (the
conversation after the reply) and `after-reload.png` (the stored message's file names)."""

from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path

from PIL import Image
from playwright.async_api import Page, async_playwright, expect

from storage.repository import ChatRepository
from tests.adapters.test_web_browser import ARGS, CHROMIUM, chromium_missing
from tests.conftest import EngineFactory
from tests.fakes.web_harness import running_web

NOTES = "The meeting moved to Thursday, 10:00."

# A drop as a user's drag makes it: a DataTransfer holding a File, dispatched on the conversation.
DROP_SCRIPT = """([name, type, base64]) => {
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name, { type }));
    const target = document.getElementById("log");
    for (const kind of ["dragenter", "dragover", "drop"]) {
        const init = { dataTransfer: transfer, bubbles: true, cancelable: true };
        target.dispatchEvent(new DragEvent(kind, init));
    }
}"""


def shots_dir(tmp_path: Path) -> Path:
    chosen = os.environ.get("CHINWAG_SHOTS_DIR")
    folder = Path(chosen) if chosen else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sunset_png() -> bytes:
    """A small picture with something in it, so the thumbnail shows whether it is drawn."""
    image = Image.new("RGB", (96, 64), (250, 180, 60))
    for y in range(32, 64):
        for x in range(96):
            image.putpixel((x, y), (30, 60 + y, 140))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def drop_file(page: Page, name: str, mime_type: str, data: bytes) -> None:
    await page.evaluate(DROP_SCRIPT, [name, mime_type, base64.b64encode(data).decode("ascii")])


async def attach_files(page: Page, shots: Path) -> None:
    """The paperclip picks a text file and a stray one, a drop adds an image, the stray one is
    removed again: two chips wait above the input."""
    attach = page.get_by_role("button", name="Attach files")
    async with page.expect_file_chooser() as chooser_info:
        await attach.click()
    chooser = await chooser_info.value
    assert chooser.is_multiple()
    await chooser.set_files(
        [
            {"name": "notes.txt", "mimeType": "text/plain", "buffer": NOTES.encode()},
            {"name": "oops.txt", "mimeType": "text/plain", "buffer": b"not this one"},
        ]
    )
    await drop_file(page, "sunset.png", "image/png", sunset_png())
    chips = page.locator("#chips .chip")
    await expect(chips).to_have_count(3)
    await expect(page.locator("#drop-hint")).to_be_hidden()
    await page.get_by_role("button", name="Remove oops.txt").click()
    await expect(chips.locator(".name")).to_have_text(["notes.txt", "sunset.png"])
    thumbnail = chips.nth(1).locator("img.thumb")
    await expect(thumbnail).to_be_visible()
    assert await thumbnail.evaluate("img => img.complete && img.naturalWidth") == 96
    await page.fill("#input", "what do these say?")
    await page.locator(".composer").screenshot(path=str(shots / "composer-chips.png"))


async def send_and_read_the_reply(page: Page, shots: Path) -> None:
    """The files go with the message: the reply reads the text file and says it cannot see the
    image; the user's bubble shows the names, and a thumbnail for the image."""
    await page.keyboard.press("Enter")
    await expect(page.locator("#chips .chip")).to_have_count(0)
    reply = page.locator(".message.assistant").last
    await expect(reply).to_have_attribute("data-status", "answered")
    await expect(reply).to_contain_text("echo[0]: what do these say?")
    await expect(reply).to_contain_text("notes.txt")
    await expect(reply).to_contain_text(NOTES)
    # The echo backend cannot see the image and says so, in a notice apart from the reply.
    await expect(reply.locator(".reply-notice")).to_have_text(re.compile(r"^\(I can't see images.*\)$"))
    question = page.locator(".message.user").last
    await expect(question.locator(".text")).to_have_text("what do these say?")
    await expect(question.locator(".file .name")).to_have_text(["notes.txt", "sunset.png"])
    await expect(question.locator(".file img.thumb")).to_have_count(1)
    await page.screenshot(path=str(shots / "conversation.png"))


async def reload_keeps_the_file_names(page: Page, shots: Path) -> None:
    """After a reload the stored message shows its files' names (an icon instead of the
    thumbnail: the bytes are not kept)."""
    await page.reload()
    question = page.locator(".message.user").first
    await expect(question.locator(".text")).to_have_text("what do these say?")
    await expect(question.locator(".file .name")).to_have_text(["notes.txt", "sunset.png"])
    await expect(question.locator(".file .icon-svg")).to_have_count(2)
    await expect(page.locator(".message.assistant").last).to_have_text("echo[2]: and now?")
    await page.screenshot(path=str(shots / "after-reload.png"))


async def delete_with_the_keyboard(page: Page) -> None:
    """The first message is deleted by keyboard: its button shows when focused; it and its reply
    leave the page and the history the model reads."""
    delete = page.locator(".message.user").first.get_by_role("button", name="Delete this message")
    await delete.focus()
    await expect(delete).to_have_css("opacity", "1")
    await page.keyboard.press("Enter")
    await expect(page.locator(".message")).to_have_text(["and now?", "echo[2]: and now?"])
    await page.fill("#input", "still there?")
    await page.keyboard.press("Enter")
    await expect(page.locator(".message.assistant").last).to_have_text("echo[2]: still there?")


async def test_files_and_deletes_in_a_real_browser(
    make_engine: EngineFactory, repository: ChatRepository, tmp_path: Path
) -> None:
    missing = chromium_missing()
    assert missing is None, missing
    shots = shots_dir(tmp_path)
    async with running_web(await make_engine(), repository) as web, async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 900, "height": 720})
            page.set_default_timeout(10_000)
            problems: list[str] = []  # script errors and console errors (CSP violations show there)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            await page.goto(web.url + "/")
            await expect(page.locator("#send")).to_be_enabled()  # the history is on screen

            await attach_files(page, shots)
            await send_and_read_the_reply(page, shots)
            await page.fill("#input", "and now?")
            await page.keyboard.press("Enter")
            await expect(page.locator(".message.assistant").last).to_have_text("echo[2]: and now?")
            await reload_keeps_the_file_names(page, shots)
            await delete_with_the_keyboard(page)

            # With the mouse: the button shows on hover.
            last_question = page.locator(".message.user").last
            await last_question.hover()
            await last_question.get_by_role("button", name="Delete this message").click()
            await expect(page.locator(".message")).to_have_text(["and now?", "echo[2]: and now?"])
            await page.reload()
            await expect(page.locator(".message")).to_have_text(["and now?", "echo[2]: and now?"])
            channel = await page.evaluate("localStorage.getItem('chinwag.channel')")
            assert problems == []
        finally:
            await browser.close()
    stored = await repository.recent_messages(f"web:{channel}", limit=10)
    assert [message.content for message in stored] == ["and now?", "echo[2]: and now?"]
