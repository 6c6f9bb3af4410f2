"""Search modes (dense, lexical, hybrid), metadata filters and safe lexical queries (semsearch.search.modes).

Brute-force references: seeded synthetic vectors and texts in a real SQLite store + FTS5 table and
a real FAISS index; the references use numpy exact scans and a from-scratch BM25 in Python. The
real-model tests use the shared WordNet index and indexes built with ``indexer.pipeline.run_build``.
"""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
from collections import Counter
from typing import Any

import numpy as np
import pytest
from conftest import write_jsonl

from indexer.pipeline import BuildOptions, run_build, run_delete
from semsearch.errors import InvalidInputError
from semsearch.index.lexical import STOPWORDS, query_terms
from semsearch.index.manifest import Manifest
from semsearch.index.segment import Segment, SegmentView, write_segment
from semsearch.search.filters import compile_filter
from semsearch.search.modes import DEFAULT_MODE, HybridParams, search
from semsearch.search.reader import SearchIndex

# Words whose Porter stems are distinct and equal to themselves modulo a bijection, so a Python
# BM25 over the raw words equals FTS5's over the stems.
VOCAB = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
]
N_DOCS, DIM = 400, 16


# ------------------------------------------------------------------------------------------- synthetic index


def _metadata(rng: np.random.Generator, i: int) -> dict[str, Any]:
    meta: dict[str, Any] = {"lang": ["en", "de", "fr"][i % 3], "flag": bool(i % 2)}
    if i % 10 != 0:  # every tenth row has no year
        meta["year"] = int(rng.integers(2000, 2021))
    if i % 25 == 0:
        meta["year_text"] = "2010"
    meta["score"] = float(np.round(rng.random(), 3))
    meta["nested"] = {"group": f"g{i % 4}"}
    return meta


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[SearchIndex, np.ndarray, list[str], list[dict]]:
    rng = np.random.default_rng(7)
    directory = tmp_path_factory.mktemp("synth")
    texts = [" ".join(rng.choice(VOCAB, size=int(rng.integers(3, 15)))) for _ in range(N_DOCS)]
    metas = [_metadata(rng, i) for i in range(N_DOCS)]
    vecs = rng.standard_normal((N_DOCS, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    iids = np.arange(N_DOCS, dtype=np.int64) * 3 + 5  # ids are not row positions
    rows = [(int(i), f"doc{n}", t, json.dumps(m)) for n, (i, t, m) in enumerate(zip(iids, texts, metas, strict=True))]

    def fill(conn: sqlite3.Connection) -> None:
        conn.executemany("INSERT INTO docs(iid, ext_id, id_is_int, text, metadata) VALUES (?, ?, 0, ?, ?)", rows)

    seg_dir, meta = write_segment(
        directory, "s1", iids, vecs, fill, index_type="flat", index_params={}, model_fingerprint="0", origin={}
    )
    manifest = Manifest(
        model="synthetic",
        model_fingerprint="0",
        pooling="mean",
        backend="torch",
        max_seq_length=0,
        dimension=DIM,
        index_type="flat",
        index_params={},
        count=N_DOCS,
        corpus_checksum=meta.corpus_sum,
    )
    idx = SearchIndex(directory, manifest, [SegmentView(Segment.load(seg_dir), np.zeros(0, np.int64))])
    yield idx, vecs, texts, metas
    idx.close()


def _queries(n: int, seed: int = 11) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(VOCAB, size=int(rng.integers(1, 4)))) for _ in range(n)]
    q = rng.standard_normal((n, DIM)).astype(np.float32)
    return texts, q / np.linalg.norm(q, axis=1, keepdims=True)


def _bm25_reference(texts: list[str], query: str, k1: float = 1.2, b: float = 0.75) -> dict[int, float]:
    """Row -> BM25 score (FTS5's formula, idf floored at 1e-6) for rows matching at least one term."""
    docs = [t.split() for t in texts]
    n = len(docs)
    avgdl = sum(map(len, docs)) / n
    terms = query_terms(query)
    df = {t: sum(1 for d in docs if t in d) for t in terms}
    idf = {t: max(math.log((n - df[t] + 0.5) / (df[t] + 0.5)), 1e-6) for t in terms}
    out: dict[int, float] = {}
    for row, d in enumerate(docs):
        tf = Counter(d)
        s = sum(idf[t] * tf[t] * (k1 + 1) / (tf[t] + k1 * (1 - b + b * len(d) / avgdl)) for t in terms if tf[t])
        if any(tf[t] for t in terms):
            out[row] = s
    return out


def _matches(meta: dict[str, Any], spec: dict[str, Any]) -> bool:
    """Python reference of the filter semantics (typed JSON comparisons)."""

    def get(path: str) -> Any:
        cur: Any = meta
        for part in path.split("."):
            if not isinstance(cur, dict) or part not in cur:
                return _MISSING
            cur = cur[part]
        return cur

    def same_type(a: Any, b: Any) -> bool:
        if isinstance(a, bool) or isinstance(b, bool):
            return isinstance(a, bool) and isinstance(b, bool)
        if isinstance(a, str) or isinstance(b, str):
            return isinstance(a, str) and isinstance(b, str)
        return True

    for field, cond in spec.items():
        v = get(field)
        if v is _MISSING:
            return False
        if not isinstance(cond, dict):
            cond = {"in": [cond]}
        if "in" in cond:
            if not any(same_type(v, c) and v == c for c in cond["in"]):
                return False
            continue
        for op, bound in cond.items():
            if not same_type(v, bound) or isinstance(v, bool):
                return False
            ok = {"gt": v > bound, "gte": v >= bound, "lt": v < bound, "lte": v <= bound}[op]
            if not ok:
                return False
    return True


_MISSING = object()

FILTERS: list[dict[str, Any]] = [
    {"lang": "de"},
    {"lang": {"in": ["en", "fr"]}},
    {"year": {"gte": 2005, "lte": 2010}},
    {"year": {"gt": 2018}},
    {"year": {"lt": 2003}, "lang": "en"},
    {"flag": True},
    {"score": {"gt": 0.25, "lt": 0.5}},
    {"year_text": "2010"},
    {"year_text": 2010},  # typed: the number does not match the string
    {"year": "2010"},  # typed: the string does not match numbers
    {"nested.group": {"in": ["g1", "g3"]}, "flag": False},
    {"year": {"in": [2001, 2002, 2019]}},
    {"lang": {"gte": "e", "lt": "f"}},  # string range
    {"lang": {"in": []}},
]


@pytest.mark.parametrize("spec", FILTERS, ids=lambda s: json.dumps(s))
def test_filter_matches_python_reference(synth, spec) -> None:
    idx, _, _, metas = synth
    got = idx.matching_iids(compile_filter(spec))
    expected = np.array([5 + 3 * i for i, m in enumerate(metas) if _matches(m, spec)], dtype=np.int64)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("spec", [None, {"lang": "de"}, {"year": {"gte": 2005, "lte": 2010}}, {"year_text": "2010"}])
def test_dense_filtered_is_exact_top_k(synth, spec) -> None:
    idx, vecs, _, metas = synth
    texts, q = _queries(20)
    k = 10
    res = search(idx, texts, q, k, "dense", spec)
    rows = [i for i, m in enumerate(metas) if spec is None or _matches(m, spec)]
    for qi, hits in enumerate(res):
        scores = vecs[rows] @ q[qi]
        order = np.argsort(-scores)[:k]
        assert len(hits) == min(k, len(rows))  # never fewer than k while k rows match
        assert [h.iid for h in hits] == [5 + 3 * rows[j] for j in order]
        np.testing.assert_allclose([h.score for h in hits], scores[order], rtol=1e-5, atol=1e-6)
        assert all(h.dense_score == h.score for h in hits)


@pytest.mark.parametrize("spec", [None, {"lang": "fr"}, {"year": {"gte": 2010}}])
def test_lexical_is_bm25_top_k_among_matching_rows(synth, spec) -> None:
    idx, _, texts, metas = synth
    queries, q = _queries(25, seed=3)
    k = 7
    res = search(idx, queries, q, k, "lexical", spec)
    for qi, hits in enumerate(res):
        ref = {r: s for r, s in _bm25_reference(texts, queries[qi]).items() if spec is None or _matches(metas[r], spec)}
        expected = sorted(ref, key=lambda r: (-ref[r], r))[:k]
        assert len(hits) == len(expected)
        np.testing.assert_allclose([h.score for h in hits], [ref[r] for r in expected], rtol=1e-6)
        # same scores in the same order; ids equal except where scores tie exactly
        got_ids = [h.iid for h in hits]
        for h, r in zip(hits, expected, strict=True):
            if sum(1 for s in ref.values() if abs(s - ref[r]) < 1e-9) == 1:
                assert h.iid == 5 + 3 * r
        assert len(set(got_ids)) == len(got_ids)
        assert all(h.lexical_score == h.score for h in hits)
        np.testing.assert_allclose(
            [h.dense_score for h in hits],
            [float(idx.exact_scores(q[qi : qi + 1], np.array([[h.iid]]))[0, 0]) for h in hits],
            rtol=1e-5,
        )


def _hybrid_reference(
    vecs: np.ndarray, texts: list[str], rows: list[int], qtext: str, qvec: np.ndarray, k: int, p: HybridParams
) -> list[tuple[int, float]]:
    depth = max(p.depth, k)
    cos = {r: float(vecs[r] @ qvec) for r in rows}
    bm = {r: s for r, s in _bm25_reference(texts, qtext).items() if r in cos}
    dense_list = sorted(cos, key=lambda r: -cos[r])[:depth]
    lex_list = sorted(bm, key=lambda r: (-bm[r], r))[:depth]
    d_rank = {r: i + 1 for i, r in enumerate(dense_list)}
    l_rank = {r: i + 1 for i, r in enumerate(lex_list)}
    union = set(dense_list) | set(lex_list)
    fused: dict[int, float] = {}
    if p.method == "rrf":
        for r in union:
            fused[r] = (p.weight / (p.rrf_k + d_rank[r]) if r in d_rank else 0.0) + (
                (1 - p.weight) / (p.rrf_k + l_rank[r]) if r in l_rank else 0.0
            )
    else:
        u = sorted(union)
        d = np.array([cos[r] for r in u])
        lx = np.array([bm.get(r, 0.0) for r in u])

        def norm(x: np.ndarray) -> np.ndarray:
            if p.method == "minmax":
                return (x - x.min()) / (x.max() - x.min()) if x.max() > x.min() else np.zeros_like(x)
            return (x - x.mean()) / x.std() if x.std() > 0 else np.zeros_like(x)

        for r, v in zip(u, p.weight * norm(d) + (1 - p.weight) * norm(lx), strict=True):
            fused[r] = float(v)
    best = sorted(union, key=lambda r: (-fused[r], -cos[r], r))[:k]
    return [(5 + 3 * r, fused[r]) for r in best]


@pytest.mark.parametrize(
    "params",
    [
        HybridParams("rrf", rrf_k=60, depth=20, weight=0.5),
        HybridParams("rrf", rrf_k=5, depth=8, weight=0.7),
        HybridParams("minmax", depth=15, weight=0.4),
        HybridParams("zscore", depth=30, weight=0.6),
    ],
    ids=lambda p: f"{p.method}-k{p.rrf_k}-d{p.depth}-w{p.weight}",
)
@pytest.mark.parametrize("spec", [None, {"lang": "de"}, {"year": {"lt": 2004}}])
def test_hybrid_matches_brute_force_fusion(synth, params, spec) -> None:
    idx, vecs, texts, metas = synth
    queries, q = _queries(15, seed=5)
    queries[0] = "!!! ???"  # no term: the lexical list is empty, dense alone decides
    k = 10
    res = search(idx, queries, q, k, "hybrid", spec, hybrid=params)
    rows = [i for i, m in enumerate(metas) if spec is None or _matches(m, spec)]
    for qi, hits in enumerate(res):
        ref = _hybrid_reference(vecs, texts, rows, queries[qi], q[qi], k, params)
        assert len(hits) == min(k, len(rows))
        assert [h.iid for h in hits] == [r for r, _ in ref]
        np.testing.assert_allclose([h.score for h in hits], [s for _, s in ref], rtol=1e-5, atol=1e-9)
        bm = _bm25_reference(texts, queries[qi])
        for h in hits:  # every hybrid hit carries its exact cosine and BM25 (0 when no term matches)
            row = (h.iid - 5) // 3
            assert h.dense_score == pytest.approx(float(vecs[row] @ q[qi]), rel=1e-5, abs=1e-6)
            assert h.lexical_score == pytest.approx(bm.get(row, 0.0), rel=1e-6, abs=1e-9)


def test_filter_with_fewer_matches_than_k_and_with_none(synth) -> None:
    idx, _, _, metas = synth
    texts, q = _queries(3)
    spec = {"year_text": "2010"}
    n = sum(_matches(m, spec) for m in metas)
    assert 0 < n < 30
    for mode in ("dense", "hybrid"):
        assert [len(r) for r in search(idx, texts, q, 50, mode, spec)] == [n] * 3
    for mode in ("dense", "lexical", "hybrid"):
        assert search(idx, texts, q, 5, mode, {"lang": "xx"}) == [[], [], []]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"lang": {"eq": "en"}}, "valid operators: in, gt, gte, lt, lte"),
        ({"lang": {}}, "empty condition"),
        ({"year": {"in": 2010}}, "takes a list"),
        ({"year": {"in": [2010], "gt": 1}}, "cannot be combined"),
        ({"year": {"gte": 1, "lte": "z"}}, "all numbers or all strings"),
        ({"flag": {"gt": True}}, "all numbers or all strings"),
        ({"year": [2010]}, "string, number or boolean"),
        ({"year": None}, "string, number or boolean"),
        ({"year": float("nan")}, "finite"),
        ({"bad field": 1}, "invalid filter field name"),
        ({"$.x": 1}, "invalid filter field name"),
        ({"x') OR 1=1 --": 1}, "invalid filter field name"),
        (["lang", "en"], "must be an object"),
    ],
)
def test_invalid_filters_are_rejected_with_a_clear_message(synth, spec, message) -> None:
    idx, _, _, _ = synth
    texts, q = _queries(1)
    with pytest.raises(InvalidInputError, match=message):
        search(idx, texts, q, 5, "dense", spec)


def test_argument_validation(synth) -> None:
    idx, _, _, _ = synth
    texts, q = _queries(2)
    with pytest.raises(InvalidInputError, match="dense, lexical, hybrid"):
        search(idx, texts, q, 5, "sparse")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="needs the encoded query vectors"):
        search(idx, texts, None, 5, "hybrid")
    with pytest.raises(InvalidInputError, match="2 queries"):
        search(idx, texts, q[:1], 5, "dense")
    with pytest.raises(InvalidInputError, match="k must be"):
        search(idx, texts, q, 0)
    with pytest.raises(InvalidInputError, match="fusion method"):
        HybridParams("max")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="weight"):
        HybridParams(weight=1.5)
    assert search(idx, [], np.zeros((0, DIM), np.float32), 5) == []
    assert len(search(idx, texts, None, 3, "lexical")[0]) <= 3  # lexical needs no vectors
    assert DEFAULT_MODE == "dense"


# ------------------------------------------------------------------------------------------- query escaping


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cat AND dog", '"cat" OR "dog"'),
        ('"exact phrase"', '"exact" OR "phrase"'),
        ("NEAR(cat dog, 2)", '"near" OR "cat" OR "dog" OR "2"'),
        ("pre* -minus ^caret text:col {x b}", '"pre" OR "minus" OR "caret" OR "text" OR "col" OR "x" OR "b"'),
        ("the cat of the hat", '"cat" OR "hat"'),
        ("AND OR NOT", '"and" OR "or" OR "not"'),  # only stopwords: kept, as plain words
        ("Café naïve snake_case", '"café" OR "naïve" OR "snake" OR "case"'),
        ("dog dog DOG", '"dog"'),
        ("?!... ---", None),
        ('""', None),
        ("", None),
    ],
)
def test_query_terms_are_plain_words(text, expected) -> None:
    assert query_terms(text) == ([t.strip('"') for t in expected.split(" OR ")] if expected else [])


def test_stopwords_are_lucenes() -> None:
    assert len(STOPWORDS) == 33 and "the" in STOPWORDS and "not" in STOPWORDS


HOSTILE = [
    '"',
    '""',
    "'",
    "*",
    "^",
    "(",
    ")",
    "((((",
    ":",
    "-",
    "+",
    "AND",
    "OR",
    "NOT",
    "NEAR",
    "NEAR(",
    "a AND",
    'dog" OR "cat',
    "dog*",
    "text:dog",
    "{text}: dog",
    "dog NEAR/2 cat",
    "x'); DROP TABLE docs; --",
    "\x00",
    "🙂🙂",
    "?!.,;",
    "  ",
    "rowid:1",
    "docs_fts MATCH 'x'",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_lexical_queries_never_raise(small_index, text) -> None:
    idx = SearchIndex.load(small_index)
    try:
        hits = search(idx, [text], None, 5, "lexical")[0]
        assert len(hits) <= 5
        if not query_terms(text):
            assert hits == []
    finally:
        idx.close()


# ------------------------------------------------------------------------------------------- real model


def test_real_index_modes_agree_on_an_exact_gloss(small_index, encoder) -> None:
    idx = SearchIndex.load(small_index)
    try:
        target = next(d for d in idx.iter_docs() if len(d.text.split()) > 6)
        vec = encoder.encode([target.text])
        for mode in ("dense", "lexical", "hybrid"):
            hits = search(idx, [target.text], vec, 5, mode)[0]  # type: ignore[arg-type]
            assert hits[0].id == target.id, mode
            assert hits[0].dense_score == pytest.approx(1.0, abs=1e-4)
        word = max(query_terms(target.text), key=len)
        lex = search(idx, [word], None, 50, "lexical")[0]
        assert lex and all(word in h.text.lower() for h in lex)
        pos = target.metadata["pos"]
        filtered = search(idx, [target.text], vec, 20, "hybrid", {"pos": pos})[0]
        assert filtered[0].id == target.id and all(h.metadata["pos"] == pos for h in filtered)
        d = filtered[0].to_dict()
        assert {"dense_score", "lexical_score"} <= d.keys()
    finally:
        idx.close()


def test_lexical_index_follows_add_delete_and_versions(tmp_path, small_index, encoder) -> None:
    root = tmp_path / "idx"
    shutil.copytree(small_index, root, symlinks=True)
    new = write_jsonl(
        tmp_path / "new.jsonl",
        [
            {"id": "z1", "text": "the zyzzyva is a tropical weevil", "kind": "insect"},
            {"id": "z2", "text": "a quokka smiles at tourists on Rottnest island", "kind": "mammal"},
        ],
    )
    run_build(BuildOptions(inputs=[new], output=root, progress=False), incremental=True)

    def lexical(query: str, spec: dict | None = None) -> list[str]:
        idx = SearchIndex.load(root)
        try:
            return [str(h.id) for h in search(idx, [query], None, 10, "lexical", spec)[0]]
        finally:
            idx.close()

    assert lexical("zyzzyva") == ["z1"]
    assert lexical("quokka tourists", {"kind": "mammal"}) == ["z2"]
    assert lexical("quokka", {"kind": "insect"}) == []
    run_delete(root, ["z1"])
    assert lexical("zyzzyva") == []
    assert lexical("quokka") == ["z2"]
    # the previous version is immutable and still has its own consistent FTS table
    old = SearchIndex.load(root / "versions" / "v000002")
    try:
        assert [h.id for h in search(old, ["zyzzyva"], None, 5, "lexical")[0]] == ["z1"]
        n_fts = sum(seg.docs.conn.execute("SELECT COUNT(*) FROM docs_fts").fetchone()[0] for seg in old.segments)
        assert n_fts == old.count == 302
    finally:
        old.close()
    cur = SearchIndex.load(root)
    try:
        hits = search(cur, ["zyzzyva weevil quokka"], encoder.encode(["zyzzyva weevil quokka"]), 5, "hybrid")[0]
        assert "z1" not in {h.id for h in hits} and hits[0].id == "z2"
        assert cur.lexical("zyzzyva")[0].size == 0
    finally:
        cur.close()
