"""The machine's Chromium driven by Playwright, shared by the browser suites (test_browser.py,
test_web_phone_browser.py): finding the browser, the launch, a page signed in to the admin, and
their constants. The fixtures built on these (chromium, browser, web) are in conftest.py;
`make test` checks for the browser first (tests/preflight.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from django.contrib.staticfiles import finders

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page, Route

    from tests.servers import BackgroundLoop, LiveServer

# Looked for in this order after $CHROMIUM: the names Debian, Ubuntu, Homebrew's links and
# Google's packages install on the PATH.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FALLBACK = Path("/usr/bin/chromium")
INSTALL_HELP = """\
Install it, then run the tests again:
  Debian/Ubuntu:  sudo apt-get install chromium espeak-ng
  macOS:          brew install --cask chromium && brew install espeak-ng"""
CHROMIUM_HINT = """\
or point CHROMIUM at a Chromium or Chrome you already have, for example
  CHROMIUM="/Applications/Google Chrome.app/Contents/MacOS/Google Chrome" make test"""
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


def find_chromium() -> Path | None:
    """$CHROMIUM if set (it must exist: a wrong path is not silently replaced), else the first
    of CHROMIUM_NAMES on the PATH, else /usr/bin/chromium if present."""
    configured = os.environ.get("CHROMIUM")
    if configured:
        path = Path(configured).expanduser()
        return path if path.is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return CHROMIUM_FALLBACK if CHROMIUM_FALLBACK.is_file() else None


def chromium_missing() -> str:
    configured = os.environ.get("CHROMIUM")
    if configured:
        problem = f"CHROMIUM={configured} is not a file."
    else:
        problem = f"Chromium is missing: none of {', '.join(CHROMIUM_NAMES)} is on the PATH."
    return f"{problem}\n{INSTALL_HELP}\n{CHROMIUM_HINT}"


@contextmanager
def launched(loop: BackgroundLoop, extra_flags: Sequence[str] = ()) -> Iterator[Browser]:
    """Headless Chromium on the fakes' loop, closed with its Playwright on exit. A missing
    browser fails the test rather than skipping it: Playwright never downloads one here."""
    chromium = find_chromium()
    if chromium is None:
        pytest.fail(chromium_missing())
    from playwright.async_api import async_playwright

    playwright = loop.run(async_playwright().start())
    args = [*CHROMIUM_FLAGS, *extra_flags]
    browser = loop.run(playwright.chromium.launch(executable_path=str(chromium), args=args))
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


async def anonymous_page(browser: Browser, server: LiveServer, errors: list[str]) -> Page:
    """A new page, not signed in; the page's JavaScript errors are appended to errors."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    await context.route(f"{server.url}/static/**", serve_static)
    page = await context.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    return page


async def signed_in_page(browser: Browser, server: LiveServer, errors: list[str]) -> Page:
    """A new page signed in to the admin as USERNAME (the `web` fixture creates that user);
    the page's JavaScript errors are appended to errors."""
    page = await anonymous_page(browser, server, errors)
    await page.goto(f"{server.url}/admin/login/?next=/admin/")
    await page.fill("#id_username", USERNAME)
    await page.fill("#id_password", PASSWORD)
    await page.click("input[type=submit]")
    await page.wait_for_url(f"{server.url}/admin/")
    return page
