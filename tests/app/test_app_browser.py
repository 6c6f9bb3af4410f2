"""The search page in real headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

A screenshot of the rendered results is saved to ``artifacts/`` (git-ignored).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

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


@contextmanager
def chromium(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium browser context with its own profile under ``tmp_path``, closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
        )
        try:
            yield context
        finally:
            context.close()


def open_page(context: Any, url: str) -> Any:
    """A new tab on the search page, once it has loaded /info (the index line shows its size)."""
    from playwright.sync_api import expect

    page = context.new_page()
    page.goto(url)
    expect(page.locator("#index-info")).to_contain_text("sentences")
    return page


def submit(page: Any, query: str | None = None, *, mode: str | None = None, k: int | None = None) -> None:
    """Fill in what is given (query, mode, number of results) and click the Search button."""
    if query is not None:
        page.get_by_label("Search query").fill(query)
    if mode is not None:
        page.get_by_label("Mode").select_option(mode)
    if k is not None:
        page.get_by_label("Number of results").select_option(str(k))
    page.get_by_role("button", name="Search").click()


def result_texts(page: Any) -> list[str]:
    return list(page.locator("#results > li .result-text").all_inner_texts())


def bar_widths(page: Any) -> list[float]:
    styles = page.locator("#results > li .bar > span").evaluate_all("els => els.map(e => e.style.width)")
    return [float(w.rstrip("%")) for w in styles]


def test_search_page_renders_results(page_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with chromium(tmp_path) as context:
        page = open_page(context, page_url)
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
        submit(page, k=5)
        expect(page.locator("#status")).to_contain_text("5 results")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "search-page.png"), full_page=True)


def test_search_page_labels_scales_url_and_refusals(page_url: str, tmp_path: Path) -> None:
    """Score label per mode, bars relative to the list, query/k/mode in the URL (shareable, back button),
    old results cleared when a query is refused, and a favicon."""
    from playwright.sync_api import expect

    with chromium(tmp_path) as context:
        page = open_page(context, page_url)
        submit(page, "a large wild cat", mode="lexical", k=5)
        expect(page.locator("#status")).to_contain_text("5 results")
        labels = page.locator("#results > li .score-label").all_inner_texts()
        assert len(labels) == 5 and all(t.startswith("BM25 ") for t in labels), labels
        widths = bar_widths(page)
        assert widths[0] == 100.0 and min(widths) < 50.0 and widths == sorted(widths, reverse=True), widths
        params = parse_qs(urlparse(page.url).query)
        assert params == {"q": ["a large wild cat"], "k": ["5"], "mode": ["lexical"]}, page.url
        lexical_texts = result_texts(page)

        submit(page, "a tool for cutting", mode="hybrid")
        expect(page).to_have_url(re.compile(r"mode=hybrid"))
        expect(page.locator("#results > li .score-label").first).to_contain_text("hybrid score")
        assert result_texts(page) != lexical_texts

        page.go_back()  # the previous search comes back, form and results
        expect(page.get_by_label("Search query")).to_have_value("a large wild cat")
        expect(page.get_by_label("Mode")).to_have_value("lexical")
        expect(page.locator("#results > li .score-label").first).to_contain_text("BM25")
        expect(page.locator("#results > li .result-text")).to_have_text(lexical_texts)

        shared = context.new_page()  # a shared link runs its search on load
        shared.goto(f"{page_url}?q=a+large+wild+cat&k=5&mode=dense")
        expect(shared.locator("#status")).to_contain_text("5 results")
        expect(shared.locator("#results > li .score-label").first).to_contain_text("cosine")
        assert shared.get_by_label("Number of results").input_value() == "5"

        # a refused query (over max_query_chars, typed past the input's maxlength by script) clears the list
        page.evaluate("document.getElementById('q').value = 'x'.repeat(1001)")
        submit(page)
        expect(page.locator("#error")).to_contain_text("1000")
        expect(page.locator("#results > li")).to_have_count(0)

        icon = page.request.get(page_url + "favicon.ico")
        assert icon.status == 200 and icon.headers["content-type"].startswith("image/svg+xml")
        href = page.locator("link[rel=icon]").get_attribute("href")
        assert href and page.request.get(page_url.rstrip("/") + href).status == 200


DOCUMENTS = {
    "cats": "Cats purr when content. A cat hunts mice at night. Kittens play with yarn. Lions are big cats.",
    "ships": "Ships cross the ocean. A sailor steers the vessel through storms. Harbours shelter boats.",
    "bread": "Bakers knead dough before dawn. Bread rises in a warm oven. Sourdough needs a starter culture.",
}


@pytest.fixture(scope="module")
def documents_url(tmp_path_factory: pytest.TempPathFactory, app_settings: Callable[..., Settings]) -> Iterator[str]:
    """A real server over an index of passages (--chunk-tokens), in a thread of this process."""
    from app_fixtures import write_jsonl

    from indexer.pipeline import BuildOptions, run_build

    tmp = tmp_path_factory.mktemp("documents")
    rows = [{"id": name, "text": f"{text} {text}", "topic": name} for name, text in DOCUMENTS.items()]
    run_build(
        BuildOptions(inputs=[write_jsonl(tmp / "d.jsonl", rows)], output=tmp / "idx", chunk_tokens=24, progress=False)
    )
    port = _free_port()
    config = uvicorn.Config(
        create_app(app_settings(index=tmp / "idx")), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(30)


def test_documents_view_highlights_passages_in_the_stored_text(documents_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with chromium(tmp_path) as context:
        page = open_page(context, documents_url)
        expect(page.locator("#documents-field")).to_be_visible()  # an index of passages offers the view
        page.get_by_label("Documents").check()
        submit(page, "a cat chasing mice", k=5)
        expect(page.locator("#status")).to_contain_text("3 documents")
        expect(page).to_have_url(re.compile(r"view=documents"))
        first = page.locator("#results > li.document").first
        expect(first.locator(".document-title")).to_have_text("Document cats")
        # the whole stored document is shown, its best passages marked inside it
        assert first.locator(".document-text").inner_text() == f"{DOCUMENTS['cats']} {DOCUMENTS['cats']}"
        marks = first.locator(".document-text mark").all_inner_texts()
        assert marks and all(m in DOCUMENTS["cats"] + " " + DOCUMENTS["cats"] for m in marks)
        expect(first.locator(".score-label")).to_contain_text("best passage")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "documents-page.png"), full_page=True)
        page.get_by_label("Documents").uncheck()  # back to passages
        submit(page)
        expect(page.locator("#status")).to_contain_text("results")
        expect(page.locator("#results > li .result-text").first).to_be_visible()
