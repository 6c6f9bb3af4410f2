"""The search page in real headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

A screenshot of the rendered results is saved to ``artifacts/`` (git-ignored).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvicorn

from app.main import create_app
from app.settings import Settings

pytest_plugins = ["app_fixtures"]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium: apt-get install -y chromium"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def page_url(app_settings: Callable[..., Settings]) -> Iterator[str]:
    """A real uvicorn server in a thread of this process (no API key, no reranker)."""
    port = _free_port()
    config = uvicorn.Config(create_app(app_settings()), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(30)


def test_search_page_renders_results(page_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
        )
        try:
            page = context.new_page()
            page.goto(page_url)
            expect(page.locator("#index-info")).to_contain_text("sentences")
            assert page.locator("#rerank-field").is_hidden()  # no reranker configured
            query = page.get_by_label("Search query")
            query.fill("a large wild cat")
            query.press("Enter")  # keyboard submit
            first = page.locator("#results > li .result-text").first
            expect(first).to_contain_text("cat")
            expect(page.locator("#status")).to_contain_text("10 results")
            assert page.locator("#results > li").count() == 10
            assert page.locator("#results > li .bar").count() == 10
            expect(page.locator("#results > li .meta").first).to_contain_text("lexname")
            page.get_by_label("Number of results").select_option("5")
            page.get_by_role("button", name="Search").click()
            expect(page.locator("#status")).to_contain_text("5 results")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "search-page.png"), full_page=True)
        finally:
            context.close()
