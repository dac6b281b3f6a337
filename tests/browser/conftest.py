"""Fixtures of the browser tests: a real headless Chromium, Debian's ``chromium`` package, driven by
Playwright for Python.

Playwright's own browser builds cannot be downloaded on these machines (never ``playwright install``):
the test points Playwright at the system's Chromium instead. Where either is missing (a laptop) the
tests skip with the reason; CI installs both and sets RDT_REQUIRE_BROWSER=1, which turns the skip into a
failure, so that the browser tests never pass there by being skipped.
"""

from __future__ import annotations

import os
import shutil

import pytest


def browser_unavailable(reason: str) -> None:
    if os.environ.get("RDT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and RDT_REQUIRE_BROWSER=1 makes it mandatory")
    pytest.skip(reason)


@pytest.fixture
def browser():
    """A headless Chromium (Playwright ``Browser``), closed after the test."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        browser_unavailable("Playwright for Python is not installed (pip install -e '.[dev]')")
    chromium = shutil.which("chromium")
    if chromium is None:
        browser_unavailable("no chromium on PATH (Debian: apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield browser
        finally:
            browser.close()
