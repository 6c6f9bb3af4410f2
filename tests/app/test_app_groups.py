"""Documents in results over HTTP (#24): grouped search, highlights that slice the stored text, pages,
a real server over a real ``--chunk-tokens`` index."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_fixtures import write_jsonl

from indexer.pipeline import BuildOptions, run_build

pytest_plugins = ["app_fixtures"]

TOPICS = {
    "cats": "Cats purr when content. A cat hunts mice at night. Kittens play with yarn. Lions are big cats.",
    "ships": "Ships cross the ocean. A sailor steers the vessel through storms. Harbours shelter boats.",
    "bread": "Bakers knead dough before dawn. Bread rises in a warm oven. Sourdough needs a starter culture.",
    "stars": "Stars burn hydrogen. A telescope reveals distant galaxies. The night sky holds many stars.",
}


@pytest.fixture(scope="module")
def grouped_server(tmp_path_factory, launch_server):
    tmp = tmp_path_factory.mktemp("groups")
    rows = [{"id": name, "text": f"{text} " * 3, "topic": name[0]} for name, text in TOPICS.items()]
    rows.append({"text": "An untitled memo about cats and ships. It mentions bread too.", "topic": "m"})
    run_build(
        BuildOptions(
            inputs=[write_jsonl(Path(tmp) / "d.jsonl", rows)], output=Path(tmp) / "idx", chunk_tokens=24, progress=False
        )
    )
    server = launch_server(Path(tmp) / "idx")
    server.wait_started()
    with server.client() as client:
        yield client


def test_grouped_search_returns_documents_with_exact_highlights(grouped_server):
    body = {"query": "a cat chasing mice", "k": 2, "group_by": "doc_id", "group_size": 2, "return_document": True}
    r = grouped_server.post("/search", json=body)
    assert r.status_code == 200, r.text
    groups = r.json()["results"]
    assert len(groups) == 2 and groups[0]["group"] == "cats"
    for g in groups:
        assert set(g) >= {"group", "score", "metadata", "hits", "document"}
        assert g["score"] == g["hits"][0]["score"] and len(g["hits"]) <= 2
        assert "_semsearch_document" not in g["metadata"]
        for h in g["hits"]:
            assert set(h) >= {"id", "text", "score", "start", "end"}
            assert g["document"][h["start"] : h["end"]] == h["text"]
    # GET and batch take the same fields
    r = grouped_server.get("/search", params={"q": "a cat chasing mice", "k": 2, "group_by": "doc_id"})
    assert [g["group"] for g in r.json()["results"]] == ["cats", groups[1]["group"]]
    assert "document" not in r.json()["results"][0]
    r = grouped_server.post("/search/batch", json={"queries": ["ocean", "oven"], "k": 1, "group_by": "topic"})
    assert [row[0]["group"] for row in r.json()["results"]][1] == "b"
    for mode in ("lexical", "hybrid"):
        r = grouped_server.post("/search", json={**body, "mode": mode, "query": "cats mice"})
        assert r.json()["results"][0]["group"] == "cats", mode
    r = grouped_server.post("/search", json={**body, "filter": {"topic": "b"}})
    assert [g["group"] for g in r.json()["results"]] == ["bread"]


def test_pages_are_disjoint_and_concatenate(grouped_server):
    whole = grouped_server.post("/search", json={"query": "night", "k": 4, "group_by": "doc_id"}).json()
    pages = [
        grouped_server.post("/search", json={"query": "night", "k": 2, "offset": o, "group_by": "doc_id"}).json()
        for o in (0, 2)
    ]
    assert [g["group"] for p in pages for g in p["results"]] == [g["group"] for g in whole["results"]]
    hits = grouped_server.post("/search", json={"query": "night", "k": 6}).json()["results"]
    paged = [
        grouped_server.get("/search", params={"q": "night", "k": 3, "offset": o}).json()["results"] for o in (0, 3)
    ]
    assert [h["id"] for p in paged for h in p] == [h["id"] for h in hits]


def test_grouping_fields_are_validated(grouped_server):
    for bad in ({"group_by": "a b"}, {"group_by": "doc_id", "group_size": 0}, {"offset": -1}, {"group_size": "3"}):
        assert grouped_server.post("/search", json={"query": "x", **bad}).status_code == 422, bad


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_query_cache_metrics_and_input_type(grouped_server):
    before = grouped_server.get("/metrics").text
    for _ in range(3):
        assert grouped_server.post("/search", json={"query": "a repeated query about sourdough"}).status_code == 200
    after = grouped_server.get("/metrics").text
    assert _metric(after, "semsearch_query_cache_hits_total") - _metric(before, "semsearch_query_cache_hits_total") >= 2
    assert _metric(after, "semsearch_query_cache_entries") >= 1
    # MiniLM declares no prompts: input_type changes nothing; an unknown input_type is a 422
    plain = grouped_server.post("/embed", json={"texts": ["bread"]}).json()["embeddings"]
    for kind in ("query", "passage"):
        assert (
            grouped_server.post("/embed", json={"texts": ["bread"], "input_type": kind}).json()["embeddings"] == plain
        )
    assert grouped_server.post("/embed", json={"texts": ["bread"], "input_type": "doc"}).status_code == 422
    r = grouped_server.post(
        "/v1/embeddings",
        json={"model": "sentence-transformers/all-MiniLM-L6-v2", "input": "bread", "input_type": "query"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["embedding"] == plain[0]
