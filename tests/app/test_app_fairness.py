"""One request cannot hold the others, through a real server (issue 20, item 7).

A maximum-size ``/embed`` (64 texts of 4,000 characters: seconds of encoding on 2 cores) is sent
first; a short search is sent once the embed is being encoded. Before the fix the embed was one batch
and the search waited for all of it, so it finished after the embed; now the embed is encoded in
``max_batch_tokens`` chunks and the search is served between two of them, so it finishes first
(completion order is the evidence, not a latency threshold). The chunked embeddings are bit for bit
those of the same texts encoded in one batch in-process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from app_fixtures import ServerProcess

from semsearch.index.layout import resolve_version_dir
from semsearch.index.manifest import Manifest
from semsearch.models.encoder import Encoder

pytest_plugins = ["app_fixtures"]


def long_texts(rows: list[dict], n: int, chars: int = 4000) -> list[str]:
    texts, i = [], 0
    for j in range(n):
        text = f"{j}: "
        while len(text) < chars:
            text += rows[i % len(rows)]["text"] + " "
            i += 1
        texts.append(text[:chars])
    return texts


def test_a_short_search_is_answered_between_chunks_of_a_max_size_embed(
    launch_server: Callable[..., ServerProcess], app_index: Path, app_corpus_rows: list[dict]
) -> None:
    server = launch_server(app_index)  # the defaults: max_batch_tokens 256, max_embed_texts 64
    server.wait_started()
    texts = long_texts(app_corpus_rows, 64)
    finished: list[str] = []
    embedded: dict[str, np.ndarray] = {}

    def embed() -> None:
        with httpx.Client(base_url=server.url, timeout=600) as client:  # seconds at a busy machine's load
            r = client.post("/embed", json={"texts": texts})
            assert r.status_code == 200, r.text
            embedded["vectors"] = np.array(r.json()["embeddings"], dtype=np.float32)
        finished.append("embed")

    with server.client() as client:
        assert client.post("/search", json={"query": "warm up", "k": 1}).status_code == 200
        thread = threading.Thread(target=embed)
        thread.start()
        # the embed is being encoded once the encoder has run a batch beyond the warm-up ones
        before = _encode_batches(client)
        deadline = time.monotonic() + 120
        while _encode_batches(client) <= before and time.monotonic() < deadline and "embed" not in finished:
            time.sleep(0.05)
        r = client.post("/search", json={"query": "a large wild cat", "k": 3})
        assert r.status_code == 200 and len(r.json()["results"]) == 3
        finished.append("search")
    thread.join(600)
    assert finished == ["search", "embed"], finished

    manifest = Manifest.read(resolve_version_dir(app_index))
    encoder = Encoder.from_manifest(manifest, num_threads=2)
    expected = encoder.encode(texts, batch_size=len(texts))  # one batch
    assert np.array_equal(embedded["vectors"], expected)  # bit for bit


def _encode_batches(client) -> float:  # type: ignore[no-untyped-def]
    """How many micro-batches the encoder has run (``/metrics``)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("semsearch_encode_batch_size_count"):
            return float(line.split()[-1])
    raise AssertionError("no encode batch metric")
