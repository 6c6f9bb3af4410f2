"""``python -m indexer eval`` on a tiny hand-made BEIR fixture (tests/fixtures/beir_tiny) and STS file.

The lexical figures are computed by hand from the fixture (see the comments): BM25 ranks a document
matching more query terms first among these short documents, and documents without a query term are
not retrieved at all.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from indexer.cli import app, main
from semsearch.eval.evaluation import correlations
from semsearch.search.modes import DEFAULT_HYBRID

FIXTURE = Path(__file__).parents[1] / "fixtures" / "beir_tiny"
L2 = math.log2
runner = CliRunner()

# q1 "volcano eruption": d1 (both terms, rel 1) then d2 ("volcano", rel 2)
Q1_NDCG = (1 / L2(2) + 2 / L2(3)) / (2 / L2(2) + 1 / L2(3))
# q2 "chocolate cake recipe": d4 (two terms, not judged) then d3 ("recipe", rel 1)
Q2_NDCG = (1 / L2(3)) / 1.0
# q3 "quantum computing": only d6 ("computing", not relevant) is retrieved; d5 (rel 2) is missed
# q4 swallows/tides: d7 and d8 (both rel 1) are the only lexical matches; d6 is judged 0
LEXICAL_EXPECTED = {
    "ndcg@10": (Q1_NDCG + Q2_NDCG + 0.0 + 1.0) / 4,
    "recall@10": (1 + 1 + 0 + 1) / 4,
    "recall@100": (1 + 1 + 0 + 1) / 4,
    "mrr@10": (1 + 0.5 + 0 + 1) / 4,
}


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("beir") / "idx"
    result = runner.invoke(
        app,
        [
            "eval",
            "beir",
            "--data",
            str(FIXTURE),
            "--index",
            str(root),
            "--build",
            "--no-progress",
            "--mode",
            "lexical",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    return root


def _eval(root: Path, *args: str) -> dict:
    result = runner.invoke(app, ["eval", "beir", "--data", str(FIXTURE), "--index", str(root), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_lexical_metrics_equal_the_hand_computed_values(tiny_index: Path, tmp_path: Path) -> None:
    per_query = tmp_path / "pq.jsonl"
    report = _eval(tiny_index, "--mode", "lexical", "--per-query", str(per_query))
    assert report["queries"] == 4 and report["documents"] == 8 and report["mode"] == "lexical"
    for name, value in LEXICAL_EXPECTED.items():
        assert report["metrics"][name] == pytest.approx(value, abs=1e-12), name
    assert report["metrics"]["ndcg@10"] == pytest.approx(0.622662, abs=1e-6)
    rows = {r["query_id"]: r for r in map(json.loads, per_query.read_text().splitlines())}
    assert rows["q1"]["top10"] == ["d1", "d2"] and rows["q1"]["ndcg@10"] == pytest.approx(Q1_NDCG)
    assert rows["q2"]["top10"] == ["d4", "d3"] and rows["q2"]["mrr@10"] == 0.5
    assert rows["q3"]["top10"] == ["d6"] and rows["q3"]["recall@100"] == 0.0
    assert set(rows["q4"]["top10"]) == {"d7", "d8"} and rows["q4"]["ndcg@10"] == pytest.approx(1.0)


def test_dense_and_hybrid_find_every_document(tiny_index: Path) -> None:
    for mode in ("dense", "hybrid"):
        report = _eval(tiny_index, "--mode", mode, "-k", "100")
        # all 8 documents are returned, so recall@10 is 1; q1's most relevant document and the
        # tides/swallows pair are unambiguous for the real model
        assert report["metrics"]["recall@10"] == 1.0, mode
        assert 0.6 < report["metrics"]["ndcg@10"] <= 1.0, mode
        assert report["timings"]["search_ms_per_query"] >= 0
    hybrid = _eval(tiny_index, "--mode", "hybrid", "--fusion", "minmax", "--weight", "0.3", "--depth", "5")
    assert hybrid["hybrid"] == {"method": "minmax", "rrf_k": DEFAULT_HYBRID.rrf_k, "depth": 5, "weight": 0.3}


def test_filter_option_and_table_output(tiny_index: Path) -> None:
    result = runner.invoke(
        app,
        [
            "eval",
            "beir",
            "--data",
            str(FIXTURE),
            "--index",
            str(tiny_index),
            "--mode",
            "lexical",
            "--filter",
            '{"title": {"in": ["Volcano eruption", "Chocolate cake"]}}',
        ],
    )
    assert result.exit_code == 0, result.output
    assert "mode lexical" in result.output and "ndcg@10" in result.output
    # only d1 and d4 can be returned: q1 -> d1 (rel 1 of ideal 2, 1); q2 -> d4 (not relevant)
    report = _eval(
        tiny_index,
        "--mode",
        "lexical",
        "--filter",
        '{"title": {"in": ["Volcano eruption", "Chocolate cake"]}}',
    )
    q1 = 1.0 / (2 / L2(2) + 1 / L2(3))
    assert report["metrics"]["ndcg@10"] == pytest.approx(q1 / 4)


def test_build_reuses_an_existing_index(tiny_index: Path) -> None:
    _eval(tiny_index, "--build", "--mode", "lexical")
    assert sorted(p.name for p in (tiny_index / "versions").iterdir()) == ["v000001"]


def test_usage_and_data_errors_exit_nonzero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_mode = runner.invoke(app, ["eval", "beir", "--data", str(FIXTURE), "--index", str(tmp_path), "--mode", "x"])
    assert bad_mode.exit_code == 2
    argv = ["indexer", "eval", "beir", "--data", str(tmp_path / "missing"), "--index", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "error:" in err and "does not exist" in err
    monkeypatch.setattr(sys, "argv", [*argv[:4], str(FIXTURE), "--index", str(tmp_path), "--filter", "{bad"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 1 and "--filter is not valid JSON" in capsys.readouterr().err


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An (untrained) one-output cross-encoder folder over the packaged MiniLM: enough to rerank."""
    import torch
    from sentence_transformers import CrossEncoder

    from semsearch.models.source import resolve_model

    out = tmp_path_factory.mktemp("cross-encoder") / "model"
    torch.manual_seed(0)
    CrossEncoder(str(resolve_model(None).path), num_labels=1).save(str(out))
    return out


def test_rerank_retrieval_weight_and_its_deprecated_flag(
    tiny_index: Path, cross_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """--retrieval-weight sets the rerank fusion weight; the old --rerank-weight still does, with a warning."""
    from semsearch import runtime

    rerank = ("--mode", "lexical", "--reranker", str(cross_encoder_dir), "--candidates", "5")
    report = _eval(tiny_index, *rerank, "--retrieval-weight", "0.6")
    assert report["retrieval_weight"] == 0.6 and report["reranker"] == str(cross_encoder_dir)
    monkeypatch.setattr(runtime, "_warned_renames", set())
    with caplog.at_level("WARNING"):
        old = _eval(tiny_index, *rerank, "--rerank-weight", "0.6")
    assert old["retrieval_weight"] == 0.6 and old["metrics"] == report["metrics"]
    assert "--rerank-weight is deprecated" in caplog.text and "--retrieval-weight" in caplog.text
    help_text = runner.invoke(app, ["eval", "beir", "--help"], env={"COLUMNS": "200"}).stdout  # no wrapped names
    assert "--retrieval-weight" in help_text and "--rerank-weight" not in help_text


def test_sts_correlations_of_the_cosine(tmp_path: Path, encoder) -> None:
    pairs = [
        ("A man is playing a guitar.", "A man plays the guitar.", 4.8),
        ("A woman is slicing an onion.", "Someone is cutting an onion.", 4.2),
        ("A dog runs in the park.", "A cat sleeps on the sofa.", 1.0),
        ("The stock market fell sharply.", "A child is eating ice cream.", 0.0),
        ("Two kids play football.", "Children are playing soccer.", 4.0),
        ("A plane is taking off.", "An airplane departs from the runway.", 3.8),
    ]
    path = tmp_path / "sts.tsv"
    path.write_text("score\tsentence1\tsentence2\n" + "".join(f"{s}\t{a}\t{b}\n" for a, b, s in pairs))
    result = runner.invoke(app, ["eval", "sts", "--data", str(path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)[str(path)]
    a = encoder.encode([p[0] for p in pairs])
    b = encoder.encode([p[1] for p in pairs])
    expected = correlations(np.einsum("nd,nd->n", a, b), [p[2] for p in pairs])
    assert report["pairs"] == 6 and report["pooling"] == "mean"
    assert report["cosine"]["spearman"] == pytest.approx(expected["spearman"], abs=1e-6)
    assert report["cosine"]["pearson"] == pytest.approx(expected["pearson"], abs=1e-4)
    assert report["cosine"]["spearman"] > 80
