"""Encoder backends end to end: torch vs onnx vs onnx-int8 on real sentences, the export cache, the index.

Real packaged all-MiniLM-L6-v2 and real STS-B dev sentences (``data/stsb``). One temporary ONNX cache
per module, so the model is exported and quantised once. Bounds were measured with
``bench/bench_encode.py`` on the 3K unique STS-B dev sentences (docs/benchmarks.md): cosine to torch
onnx ≥ 0.99999 (float export), onnx-int8 mean 0.993 / min 0.973; STS-B dev Spearman onnx-int8
-0.07 points vs torch. The bounds below leave margin for a different CPU's int8 kernels.
No timing asserts: speed is what the bench measures.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from semsearch.models.encoder import Encoder
from semsearch.models.onnx import INT8_RECIPE

STSB_DEV = Path(__file__).resolve().parents[2] / "data" / "stsb" / "stsb_dev.tsv"
# (mean, min) cosine to the torch embedding over the 50 sentences
COSINE_BOUNDS = {"onnx": (0.99999, 0.9999), "onnx-int8": (0.985, 0.95)}
MAX_SPEARMAN_DROP = 1.0  # points (×100) on 200 pairs


def stsb_dev(n: int) -> list[tuple[str, str, float]]:
    with STSB_DEV.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        c1, c2, cs = (header.index(k) for k in ("sentence1", "sentence2", "score"))
        rows = [(r[c1], r[c2], float(r[cs])) for r in reader if len(r) == len(header)]
    step = max(1, len(rows) // n)  # spread over the genres (the file is grouped by genre)
    return rows[::step][:n]


@pytest.fixture(scope="module")
def onnx_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``SEMSEARCH_CACHE_DIR`` of this module; Encoder's ``cache_dir`` is its ``onnx`` subfolder."""
    return tmp_path_factory.mktemp("semsearch-cache")


@pytest.fixture(scope="module")
def encoders(onnx_root: Path) -> dict[str, Encoder]:
    cache = str(onnx_root / "onnx")
    return {b: Encoder(backend=b, cache_dir=None if b == "torch" else cache) for b in ("torch", "onnx", "onnx-int8")}


@pytest.fixture(scope="module")
def pairs() -> list[tuple[str, str, float]]:
    if not STSB_DEV.is_file():
        pytest.fail(f"{STSB_DEV} is missing: the STS-B dev file ships with the repository")
    return stsb_dev(200)


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_backend_embeddings_match_torch(
    encoders: dict[str, Encoder], pairs: list[tuple[str, str, float]], backend: str
) -> None:
    sentences = list(dict.fromkeys(s for a, b, _ in pairs[:40] for s in (a, b)))[:50]
    assert len(sentences) == 50
    ref = encoders["torch"].encode(sentences)
    got = encoders[backend].encode(sentences)
    assert got.shape == ref.shape == (50, 384)
    assert got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = np.einsum("nd,nd->n", got, ref)
    mean_bound, min_bound = COSINE_BOUNDS[backend]
    assert cos.mean() >= mean_bound, f"{backend}: mean cosine to torch {cos.mean():.5f}"
    assert cos.min() >= min_bound, f"{backend}: min cosine to torch {cos.min():.5f}"


def test_backends_keep_input_order_and_batching(encoders: dict[str, Encoder]) -> None:
    """Length-sorted batching restores input order, and batching does not change a vector."""
    texts = ["a long sentence about a man playing a guitar on a stage in front of people", "a cat", "x"]
    for backend in ("onnx", "onnx-int8"):
        enc = encoders[backend]
        together = enc.encode(texts, batch_size=2)
        alone = np.vstack([enc.encode([t]) for t in texts])
        np.testing.assert_allclose(together, alone, atol=1e-4)
        # and each row is the right text: closer to its own single encoding than to any other
        assert (np.argmax(together @ alone.T, axis=1) == np.arange(len(texts))).all()


@pytest.mark.parametrize("backend", ["torch", "onnx", "onnx-int8"])
def test_vector_does_not_depend_on_batch_or_padding(encoders: dict[str, Encoder], backend: str) -> None:
    """Determinism: a text's vector is the same (cosine >= 0.99999) alone, in length-sorted batches, in
    shuffled batches of several sizes and next to a 256-token text that pads its batch heavily.

    onnx-int8 needs per-row activation scales for this: onnxruntime's quantize_dynamic (one scale per
    batch tensor) gave cosines down to 0.979 here."""
    from tests.conftest import sample_rows

    enc = encoders[backend]
    texts = [r["text"] for r in sample_rows(60)]
    long_text = " ".join(texts)  # > max_seq_length: truncated to 256 tokens
    probe = texts[::5]
    alone = np.vstack([enc.encode([t]) for t in probe])
    rng = np.random.default_rng(0)
    worst = 1.0
    for batch_size in (2, 7, 64):
        order = rng.permutation(len(texts))
        mixed = [texts[i] for i in order] + [long_text]
        vecs = enc.encode(mixed, batch_size=batch_size)
        where = {t: i for i, t in enumerate(mixed)}
        got = vecs[[where[t] for t in probe]]
        worst = min(worst, float(np.einsum("nd,nd->n", got, alone).min()))
    padded = enc.encode([long_text, *probe], batch_size=len(probe) + 1)[1:]  # every probe padded to 256
    worst = min(worst, float(np.einsum("nd,nd->n", padded, alone).min()))
    assert worst >= 0.99999, f"{backend}: min cosine between batchings {worst:.7f}"


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_stsb_spearman_within_one_point_of_torch(
    encoders: dict[str, Encoder], pairs: list[tuple[str, str, float]], backend: str
) -> None:
    from scipy.stats import spearmanr

    gold = np.array([g for _, _, g in pairs])

    def rho(enc: Encoder) -> float:
        a = enc.encode([p[0] for p in pairs])
        b = enc.encode([p[1] for p in pairs])
        return 100 * float(spearmanr(np.einsum("nd,nd->n", a, b), gold).statistic)

    torch_rho, got = rho(encoders["torch"]), rho(encoders[backend])
    assert torch_rho > 75, f"torch Spearman {torch_rho:.2f} on {len(pairs)} STS-B dev pairs: the data looks wrong"
    assert torch_rho - got <= MAX_SPEARMAN_DROP, f"{backend}: {got:.2f} vs torch {torch_rho:.2f}"


def test_second_encoder_reuses_the_cache(
    encoders: dict[str, Encoder], onnx_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The module fixture exported and quantised once; a new Encoder on the same cache builds nothing."""
    cache = onnx_root / "onnx"
    files = sorted(cache.glob("*-encoder/*"))
    names = {p.name for p in files}
    assert {"model.onnx", f"model-int8-{INT8_RECIPE}.onnx", "meta.json"} <= names, names
    before = {p: p.stat().st_mtime_ns for p in files}
    with caplog.at_level(logging.INFO, logger="semsearch.models.onnx"):
        for backend in ("onnx", "onnx-int8"):
            again = Encoder(backend=backend, cache_dir=str(cache))  # type: ignore[arg-type]
            np.testing.assert_allclose(
                again.encode(["a man is playing a guitar"]),
                encoders[backend].encode(["a man is playing a guitar"]),
                atol=1e-6,
            )
    assert {p: p.stat().st_mtime_ns for p in sorted(cache.glob("*-encoder/*"))} == before
    messages = [r.getMessage() for r in caplog.records]
    assert any("reusing cached ONNX model" in m for m in messages), messages
    assert not any("exported ONNX model" in m or "quantised ONNX model" in m for m in messages), messages


def test_onnx_encoder_does_not_import_torch(encoders: dict[str, Encoder], onnx_root: Path) -> None:
    """With the export cached, an ONNX encoder loads and encodes without torch or sentence-transformers."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from semsearch.models.encoder import Encoder\n"
        f"e = Encoder(backend='onnx-int8', cache_dir={str(onnx_root / 'onnx')!r})\n"
        "v = e.encode(['a man is playing a guitar'])\n"
        "print(json.dumps({'mods': [m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules],"
        " 'vec': v[0].tolist()}))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["mods"] == [], out["mods"]
    expected = encoders["onnx-int8"].encode(["a man is playing a guitar"])[0]
    np.testing.assert_allclose(np.asarray(out["vec"], dtype=np.float32), expected, atol=1e-5)


def test_token_count_is_the_models_and_never_loads_torch_on_onnx(encoders: dict[str, Encoder], onnx_root: Path) -> None:
    """``Encoder.count_tokens`` (the ``usage`` of /v1/embeddings): the transformers tokenizer's untruncated
    counts capped at max_seq_length, summed; an ONNX encoder counts with its tokenizer only (no torch, no
    sentence-transformers model built), in a fresh process."""
    import json
    import subprocess
    import sys

    texts = ["a man is playing a guitar", "", "naïve café 图书馆", "word " * 400]
    torch_encoder = encoders["torch"]
    hf = torch_encoder.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)
    expected = sum(min(len(ids), torch_encoder.max_seq_length) for ids in hf["input_ids"])
    assert expected < sum(len(ids) for ids in hf["input_ids"])  # the long text is capped
    for encoder in encoders.values():
        assert encoder.count_tokens(texts) == expected
        assert encoder.count_tokens([]) == 0
    code = (
        "import json, sys\n"
        "from semsearch.models.encoder import Encoder\n"
        f"e = Encoder(backend='onnx-int8', cache_dir={str(onnx_root / 'onnx')!r})\n"
        f"n = e.count_tokens({texts!r})\n"
        "print(json.dumps({'mods': [m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules],"
        " 'st_built': e._st is not None, 'n': n}))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {"mods": [], "st_built": False, "n": expected}


@pytest.fixture()
def onnx_env(onnx_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The indexer and the service use the default cache: point it at this module's cache."""
    import os

    for name in [n for n in os.environ if n.startswith("SEMSEARCH_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SEMSEARCH_CACHE_DIR", str(onnx_root))
    yield


def test_index_built_with_onnx_records_backend_and_serves(
    tmp_path: Path, onnx_env: None, encoders: dict[str, Encoder]
) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings
    from indexer.pipeline import BuildOptions, run_build
    from semsearch.search.reader import SearchIndex

    rows = [
        "A small domesticated carnivorous mammal with soft fur, kept as a pet or for catching mice.",
        "A large wild cat of Africa and Asia with a tawny coat and a mane in the male.",
        "A motor vehicle with four wheels used to carry passengers on roads.",
        "A stringed musical instrument played by strumming or plucking.",
        "The study of the composition and properties of matter.",
    ]
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(rows) + "\n", encoding="utf-8")
    root = tmp_path / "idx"
    run_build(BuildOptions(inputs=[corpus], output=root, backend="onnx", progress=False))
    index = SearchIndex.load(root)
    try:
        assert index.manifest.backend == "onnx"
        # the stored vectors are the onnx encoder's
        stored = index.live_vectors()[1]
        np.testing.assert_allclose(np.sort(stored @ encoders["onnx"].encode(rows).T, axis=None)[-5:], 1.0, atol=1e-4)
    finally:
        index.close()
    app = create_app(Settings(index=root, reload_poll_s=0, threads=2))
    with TestClient(app) as client:
        info = client.get("/info").json()
        assert info["encoder"]["backend"] == "onnx", info["encoder"]
        assert info["index"]["backend"] == "onnx", info["index"]
        response = client.post("/search", json={"query": "a car to drive on the road", "k": 2})
        assert response.status_code == 200, response.text
        hits = response.json()["results"]
        assert hits[0]["text"].startswith("A motor vehicle"), hits


@pytest.fixture(scope="module")
def built_indexes(tmp_path_factory: pytest.TempPathFactory, onnx_root: Path) -> dict[str, Path]:
    """Indexes over the same 400 WordNet glosses, one per backend, built with the build defaults."""
    import os

    from indexer.pipeline import BuildOptions, run_build
    from tests.conftest import sample_rows, write_jsonl

    saved = os.environ.get("SEMSEARCH_CACHE_DIR")
    os.environ["SEMSEARCH_CACHE_DIR"] = str(onnx_root)
    try:
        root = tmp_path_factory.mktemp("built")
        corpus = write_jsonl(root / "c.jsonl", sample_rows(400))
        out = {}
        for backend in ("torch", "onnx", "onnx-int8"):
            out[backend] = root / backend
            run_build(BuildOptions(inputs=[corpus], output=out[backend], backend=backend, progress=False))  # type: ignore[arg-type]
        # the same build with other chunk and batch sizes
        out["onnx-int8-small-chunks"] = root / "small"
        run_build(
            BuildOptions(
                inputs=[corpus],
                output=out["onnx-int8-small-chunks"],
                backend="onnx-int8",
                chunk_size=37,
                batch_size=5,
                progress=False,
            )
        )
    finally:
        if saved is None:
            os.environ.pop("SEMSEARCH_CACHE_DIR", None)
        else:
            os.environ["SEMSEARCH_CACHE_DIR"] = saved
    return out


@pytest.mark.parametrize("backend", ["torch", "onnx", "onnx-int8"])
def test_exact_text_query_finds_itself_first(
    built_indexes: dict[str, Path], encoders: dict[str, Encoder], backend: str
) -> None:
    """Searching an indexed sentence's exact text (encoded alone, as the service does for a lone
    query) returns that sentence first with cosine >= 0.9999, for 60 sentences of the index."""
    from semsearch.search.modes import search
    from semsearch.search.reader import SearchIndex

    index = SearchIndex.load(built_indexes[backend])
    try:
        assert index.manifest.backend == backend
        from tests.conftest import sample_rows

        queries = [r["text"] for r in sample_rows(400)][::7]
        failures = []
        for q in queries:
            (hits,) = search(index, [q], encoders[backend].encode([q]), k=3)
            if hits[0].text != q or hits[0].score < 0.9999:
                failures.append((q[:40], hits[0].text[:40], round(hits[0].score, 6)))
        assert not failures, f"{backend}: {len(failures)} of {len(queries)} exact-text queries: {failures[:5]}"
    finally:
        index.close()


def test_builds_with_other_chunk_and_batch_sizes_give_the_same_vectors(built_indexes: dict[str, Path]) -> None:
    """onnx-int8 build with chunk 4096 / batch 64 (defaults) vs chunk 37 / batch 5: the same vectors."""
    from semsearch.search.reader import SearchIndex

    a = SearchIndex.load(built_indexes["onnx-int8"])
    b = SearchIndex.load(built_indexes["onnx-int8-small-chunks"])
    try:
        assert a.count == b.count == 400
        va = a.live_vectors()[1]
        vb = b.live_vectors()[1]
        cos = np.einsum("nd,nd->n", va, vb)
        assert cos.min() >= 0.99999, f"min cosine {cos.min():.7f}, {(cos < 0.99999).sum()} of 400 rows differ"
    finally:
        a.close()
        b.close()
