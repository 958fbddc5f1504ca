"""Debian's Chromium driven by Playwright, shared by the browser suites (test_browser.py,
test_web_phone_browser.py): the launch, a page signed in to the admin, and their constants.
The fixtures built on these (chromium, browser, web) are in conftest.py."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from django.contrib.staticfiles import finders

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page, Route

    from tests.live import BackgroundLoop, LiveServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
USERNAME, PASSWORD = "reviewer", "a-long-test-password-42"


@contextmanager
def launched(loop: BackgroundLoop, extra_flags: Sequence[str] = ()) -> Iterator[Browser]:
    """Headless Chromium on the fakes' loop, closed with its Playwright on exit. A missing
    browser fails the test rather than skipping it: Playwright never downloads one here."""
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: `make test` installs it (apt-get install chromium)")
    from playwright.async_api import async_playwright

    playwright = loop.run(async_playwright().start())
    args = [*CHROMIUM_FLAGS, *extra_flags]
    browser = loop.run(playwright.chromium.launch(executable_path=str(CHROMIUM), args=args))
    try:
        yield browser
    finally:
        loop.run(browser.close())
        loop.run(playwright.stop())


async def serve_static(route: Route) -> None:
    # daphne serves no static files (a deployment puts them behind its web server); the browser
    # gets the admin's CSS and our JS straight from the app's static folders.
    found = finders.find(urlsplit(route.request.url).path.removeprefix("/static/"))
    if found:
        await route.fulfill(path=found)
    else:
        await route.fulfill(status=404)


async def signed_in_page(browser: Browser, server: LiveServer, errors: list[str]) -> Page:
    """A new page signed in to the admin as USERNAME (the `web` fixture creates that user);
    the page's JavaScript errors are appended to errors."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    await context.route(f"{server.url}/static/**", serve_static)
    page = await context.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(f"{server.url}/admin/login/?next=/admin/")
    await page.fill("#id_username", USERNAME)
    await page.fill("#id_password", PASSWORD)
    await page.click("input[type=submit]")
    await page.wait_for_url(f"{server.url}/admin/")
    return page
