"""IR metrics, BEIR/STS readers and correlations (semsearch.eval.evaluation) against hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from semsearch.errors import InvalidInputError
from semsearch.eval.evaluation import (
    correlations,
    doc_text,
    evaluate_run,
    hits_to_ranking,
    iter_corpus,
    load_beir,
    mrr_at_k,
    ndcg_at_k,
    parse_metric,
    pearson,
    ranking_from_scores,
    read_qrels,
    read_sts,
    recall_at_k,
    spearman,
)
from semsearch.search.reader import Hit

FIXTURE = Path(__file__).parents[1] / "fixtures" / "beir_tiny"
L2 = math.log2


# ------------------------------------------------------------------------------------------- nDCG


def test_ndcg_graded_relevance_uses_linear_gain() -> None:
    rels = {"a": 3, "b": 2, "c": 1, "z": 0}
    ranked = ["c", "x", "a", "b"]
    dcg = 1 / L2(2) + 0 / L2(3) + 3 / L2(4) + 2 / L2(5)
    idcg = 3 / L2(2) + 2 / L2(3) + 1 / L2(4)
    assert ndcg_at_k(ranked, rels, 10) == pytest.approx(dcg / idcg)
    # cut-off: only the first two ranks count, the ideal is cut at 2 as well
    assert ndcg_at_k(ranked, rels, 2) == pytest.approx((1 / L2(2)) / (3 / L2(2) + 2 / L2(3)))
    # not 2^rel - 1 (the "exponential gain" variant gives a different value)
    exp_dcg = 1 / L2(2) + 7 / L2(4) + 3 / L2(5)
    exp_idcg = 7 / L2(2) + 3 / L2(3) + 1 / L2(4)
    assert ndcg_at_k(ranked, rels, 10) != pytest.approx(exp_dcg / exp_idcg)


def test_ndcg_perfect_empty_and_unjudged() -> None:
    rels = {"a": 2, "b": 1}
    assert ndcg_at_k(["a", "b", "x"], rels, 10) == pytest.approx(1.0)
    assert ndcg_at_k([], rels, 10) == 0.0
    assert ndcg_at_k(["x", "y"], rels, 10) == 0.0
    assert ndcg_at_k(["a"], {"a": 0}, 10) == 0.0  # no relevant document: 0, not a division error
    # negative judgments give no gain (and no penalty)
    assert ndcg_at_k(["n", "a"], {"n": -1, "a": 1}, 10) == pytest.approx(1 / L2(3))


def test_ndcg_ideal_includes_relevant_documents_never_retrieved() -> None:
    rels = {"a": 1, "b": 1, "c": 1}
    assert ndcg_at_k(["a"], rels, 10) == pytest.approx(1 / (1 + 1 / L2(3) + 1 / L2(4)))


# ------------------------------------------------------------------------------------------- recall / MRR


def test_recall_at_k() -> None:
    rels = {"a": 1, "b": 2, "c": 1, "z": 0}
    ranked = ["z", "a", "x", "b"]
    assert recall_at_k(ranked, rels, 1) == 0.0
    assert recall_at_k(ranked, rels, 2) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, rels, 100) == pytest.approx(2 / 3)
    assert recall_at_k(ranked, {"z": 0}, 10) == 0.0


def test_mrr_at_k() -> None:
    rels = {"b": 1, "d": 3}
    assert mrr_at_k(["a", "b", "c", "d"], rels, 10) == pytest.approx(0.5)
    assert mrr_at_k(["a", "b"], rels, 1) == 0.0
    assert mrr_at_k(["d"], rels, 10) == 1.0
    assert mrr_at_k(["x", "y"], rels, 10) == 0.0


def test_ties_follow_trec_eval_order() -> None:
    # equal scores: trec_eval orders by doc id descending
    scores = {"d1": 0.5, "d3": 0.5, "d2": 0.9, "d0": 0.1}
    assert ranking_from_scores(scores) == ["d2", "d3", "d1", "d0"]
    ranked = ranking_from_scores(scores)
    rels = {"d1": 1}
    assert mrr_at_k(ranked, rels, 10) == pytest.approx(1 / 3)
    assert ndcg_at_k(ranked, rels, 10) == pytest.approx(1 / L2(4))


def test_parse_metric() -> None:
    assert parse_metric("nDCG@10") == ("ndcg", 10)
    assert parse_metric("recall@100") == ("recall", 100)
    for bad in ("ndcg", "map@10", "mrr@0", "recall@x"):
        with pytest.raises(InvalidInputError, match="ndcg, recall, mrr"):
            parse_metric(bad)


def test_evaluate_run_means_and_skips_queries_without_relevant_documents() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 2, "c": 1}, "q3": {"x": 0}}
    run = {"q1": ["a"], "q2": ["c", "z", "b"], "q9": ["a"]}
    res = evaluate_run(run, qrels, ["ndcg@10", "recall@1", "mrr@10"])
    assert res.queries == 2 and res.skipped == 1
    q2_ndcg = (1 / L2(2) + 2 / L2(4)) / (2 / L2(2) + 1 / L2(3))
    assert res.per_query["q2"]["ndcg@10"] == pytest.approx(q2_ndcg)
    assert res.metrics["ndcg@10"] == pytest.approx((1 + q2_ndcg) / 2)
    assert res.metrics["recall@1"] == pytest.approx((1 + 0.5) / 2)
    assert res.metrics["mrr@10"] == pytest.approx(1.0)
    # a judged query missing from the run counts as 0
    assert evaluate_run({}, {"q1": {"a": 1}}, ["ndcg@10"]).metrics["ndcg@10"] == 0.0


def test_hits_to_ranking_counts_a_document_once() -> None:
    hits = [
        Hit("d1#0", "s", 0.9, {}, 0, doc_id="d1", start=0, end=1),
        Hit("d2#3", "s", 0.8, {}, 1, doc_id="d2", start=0, end=1),
        Hit("d1#2", "s", 0.7, {}, 2, doc_id="d1", start=0, end=1),
        Hit(42, "s", 0.6, {}, 3),
    ]
    assert hits_to_ranking(hits) == [("d1", 0.9), ("d2", 0.8), ("42", 0.6)]


# ------------------------------------------------------------------------------------------- readers


def test_load_beir_fixture() -> None:
    ds = load_beir(FIXTURE, "test")
    assert list(ds.queries) == ["q1", "q2", "q3", "q4"]  # q5 has no judgments in this split
    assert ds.qrels["q1"] == {"d1": 1, "d2": 2}
    assert ds.qrels["q4"]["d6"] == 0
    docs = list(iter_corpus(ds.corpus_path))
    assert len(docs) == 8
    assert docs[0] == {
        "id": "d1",
        "text": "Volcano eruption Lava poured down the slopes of the mountain after the eruption.",
        "title": "Volcano eruption",
    }
    assert doc_text("", "  body ") == "body" and doc_text(None, "x") == "x"


def test_beir_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_beir(tmp_path / "nope")
    with pytest.raises(InvalidInputError, match=r"corpus\.jsonl"):
        load_beir(tmp_path)
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_beir(FIXTURE, "dev")
    bad = tmp_path / "bad.tsv"
    bad.write_text("q\td\ts\nq1\td1\t1\n")
    with pytest.raises(InvalidInputError, match="header"):
        read_qrels(bad)
    bad.write_text("query-id\tcorpus-id\tscore\nq1\td1\thigh\n")
    with pytest.raises(InvalidInputError, match="not a number"):
        read_qrels(bad)


def test_read_sts_uses_quote_none(tmp_path: Path) -> None:
    path = tmp_path / "sts.tsv"
    path.write_text(
        "genre\tfilename\tyear\tid\tscore\tsentence1\tsentence2\n"
        'main\tx\t2012\t1\t2.5\tHe said "hi\tShe said "hello"\n'
        "main\tx\t2012\t2\t5.000\tA cat.\tA cat.\n",
        encoding="utf-8",
    )
    pairs = read_sts(path)
    assert [(p.sentence1, p.sentence2, p.score) for p in pairs] == [
        ('He said "hi', 'She said "hello"', 2.5),
        ("A cat.", "A cat.", 5.0),
    ]
    path.write_text("a\tb\nx\ty\n")
    with pytest.raises(InvalidInputError, match="sentence1, sentence2 and score"):
        read_sts(path)


def test_correlations_times_100() -> None:
    res = correlations([0.1, 0.4, 0.2, 0.9], [1.0, 3.0, 2.0, 4.0])
    assert res["spearman"] == pytest.approx(100.0)
    assert res["pearson"] == pytest.approx(100 * 1.3 / math.sqrt(0.38 * 5.0))  # cov / (sd_x sd_y)
    assert correlations([1, 2, 3], [3, 2, 1])["spearman"] == pytest.approx(-100.0)
    with pytest.raises(InvalidInputError):
        correlations([1.0], [1.0])


def test_spearman_and_pearson_on_hand_made_numbers_and_undefined_input() -> None:
    # ranks of x: 1 3 2 4, of y: 1 2 3 4 -> d^2 = 0 1 1 0: rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman([0.1, 0.9, 0.4, 1.2], [1.0, 2.0, 3.0, 4.0]) == pytest.approx(0.8)
    assert pearson([1.0, 2.0, 3.0], [2.0, 4.0, 7.0]) == pytest.approx(5 / math.sqrt(2 * 114 / 9))  # cov / (sd sd)
    # undefined (a constant list, fewer than two values): 0, never NaN, so early stopping can compare it
    for metric in (spearman, pearson):
        assert metric([3.0, 3.0, 3.0], [1.0, 2.0, 3.0]) == 0.0
        assert metric([1.0, 2.0], [5.0, 5.0]) == 0.0
        assert metric([1.0], [2.0]) == 0.0
    assert correlations([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == {"spearman": 0.0, "pearson": 0.0}
