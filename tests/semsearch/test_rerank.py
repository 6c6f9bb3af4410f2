"""Cross-encoder training (semsearch.training) and reranking (semsearch.models.reranker) with the real MiniLM model."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from app.routes.status import reranker_info
from semsearch import training
from semsearch.errors import InvalidInputError, ModelLoadError
from semsearch.ingest.readers import ScoredPair, read_scored_pairs
from semsearch.models.onnx import INT8_RECIPE
from semsearch.models.reranker import (
    RERANKER_META_FILE,
    FeatureBackend,
    FusionConfig,
    Reranker,
    available_backends,
    fuse_logits,
    register_backend,
)
from semsearch.models.source import model_fingerprint
from semsearch.score_norm import zscore
from semsearch.training import (
    EarlyStopping,
    RelevanceExample,
    TrainConfig,
    train_cross_encoder,
    tune_fusion_weight,
)
from semsearch.training import evaluate as training_evaluate
from semsearch.training.data import relevance_examples

REPO = Path(__file__).resolve().parents[2]
STSB = REPO / "data" / "stsb"

QUERY = "A man is playing a guitar."
TEXTS = [
    "A man plays the guitar.",
    "A woman is slicing an onion.",
    "Someone is playing an instrument.",
    "The stock market fell sharply today.",
]


@pytest.fixture(scope="module")
def stsb_slices() -> tuple[list[ScoredPair], list[ScoredPair]]:
    train = read_scored_pairs(STSB / "stsb_train.tsv")
    dev = read_scored_pairs(STSB / "stsb_dev.tsv")
    return train[:64], dev[:32]


def _train(out: Path, train: list[ScoredPair], dev: list[ScoredPair], **kwargs: Any) -> training.TrainResult:
    options: dict[str, Any] = {"epochs": 1, "batch_size": 16, "seed": 7, "show_progress": False}
    options.update(kwargs)
    return train_cross_encoder(TrainConfig(output_dir=out, scored=train, dev=dev, **options))


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, stsb_slices: tuple[list[ScoredPair], list[ScoredPair]]
) -> tuple[Path, training.TrainResult]:
    out = tmp_path_factory.mktemp("reranker") / "model"
    train, dev = stsb_slices
    return out, _train(out, train, dev, test=dev[:16])


@pytest.fixture(scope="module")
def reranker(trained: tuple[Path, training.TrainResult]) -> Reranker:
    return Reranker(trained[0])


# ------------------------------------------------------------------------------------------------- data


def test_stsb_copies_read_completely() -> None:
    assert len(read_scored_pairs(STSB / "stsb_train.tsv")) == 5749
    dev = read_scored_pairs(STSB / "stsb_dev.tsv")
    assert len(dev) == 1500
    assert all(0.0 <= p.score <= 5.0 for p in dev)
    assert not (STSB / "stsb_test.tsv").exists()  # the test split stays out of the repo
    for name in ("LICENSE.txt", "SOURCE.txt", "readme.txt", "README.md"):
        assert (STSB / name).is_file()


def test_read_scored_pairs_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n1\t2\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="missing column"):
        read_scored_pairs(bad)
    quotes = tmp_path / "quotes.tsv"
    quotes.write_text('sentence1\tsentence2\tscore\n"Hi, he said\tit\'s "fine\t2.5\n', encoding="utf-8")
    assert read_scored_pairs(quotes) == [ScoredPair('"Hi, he said', "it's \"fine", 2.5)]


def test_relevance_examples_drop_known_positives() -> None:
    examples = [
        RelevanceExample("q1", ("pos 1",), ("given neg",)),
        RelevanceExample("q2", ("pos 2", "pos 3")),
    ]
    calls: list[tuple[list[str], int]] = []

    def miner(queries: list[str], k: int) -> list[list[str]]:
        calls.append((queries, k))
        return [["pos 1", "mined a", "given neg", "mined b"], [" pos 3", "mined c"]]

    pairs, stats = relevance_examples(examples, miner, 5, 2)
    assert calls == [(["q1", "q2"], 5)]
    assert [(p.text_a, p.text_b, p.label) for p in pairs] == [
        ("q1", "pos 1", 1.0),
        ("q1", "given neg", 0.0),
        ("q1", "mined a", 0.0),
        ("q2", "pos 2", 1.0),
        ("q2", "pos 3", 1.0),
        ("q2", "mined c", 0.0),
    ]
    assert not any(p.symmetric for p in pairs)
    assert stats == {
        "queries": 2,
        "positives": 3,
        "given_negatives": 1,
        "mined_negatives": 2,
        "dropped_positives": 2,
        "queries_without_negatives": 0,
    }


# ---------------------------------------------------------------------------------------------- fusion math


def test_fuse_logits_on_hand_made_numbers() -> None:
    # per-list: z(ce) = [-1.2247, 0, 1.2247], z(cos) = [1.2247, 0, -1.2247]
    np.testing.assert_allclose(fuse_logits([1.0, 2.0, 3.0], [30.0, 20.0, 10.0], 0.5), [0.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(
        fuse_logits([1.0, 2.0, 3.0], [30.0, 20.0, 10.0], 0.25), [-0.612372436, 0.0, 0.612372436], atol=1e-9
    )
    np.testing.assert_allclose(fuse_logits([1.0, 5.0], [0.0, 1.0], 0.0), [-1.0, 1.0])
    # fixed (dev) statistics for independent pairs
    stats = {"ce_mean": 1.0, "ce_std": 2.0, "cos_mean": 0.5, "cos_std": 0.25}
    np.testing.assert_allclose(fuse_logits([3.0], [1.0], 0.4, stats), [0.6 * 1.0 + 0.4 * 2.0])
    with pytest.raises(InvalidInputError):
        fuse_logits([1.0, 2.0], [1.0], 0.5)


def test_tune_fusion_weight_picks_best_dev_weight() -> None:
    gold = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    ce = np.array([0.2, 0.1, 2.0, 3.0, 4.0, 5.0])  # first two swapped, by a small margin
    cos = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])  # perfect ranking
    weight, best, curve = tune_fusion_weight(ce, cos, gold, grid=(0.0, 0.5, 1.0))
    assert curve["0.00"] < 1.0
    assert best == pytest.approx(1.0)
    assert weight == 0.5  # ties go to the smaller weight: 0.5 already ranks perfectly
    assert tune_fusion_weight(cos, ce, gold, grid=(0.0, 0.5, 1.0))[0] == 0.0


def test_fusion_config_parsing() -> None:
    assert FusionConfig.from_json(None) is None
    assert FusionConfig.from_json({"mode": "none"}) is None
    config = FusionConfig.from_json({"mode": "zscore", "weight": 0.3})
    assert config == FusionConfig(weight=0.3, retrieval_weight=0.3, mode="zscore", pairwise_stats=None)
    assert config.retrieval_weight == 0.3
    split = FusionConfig.from_json({"mode": "zscore", "weight": 0.3, "retrieval_weight": 0.8})
    assert split is not None and split.weight == 0.3 and split.retrieval_weight == 0.8
    with pytest.raises(ModelLoadError):
        FusionConfig.from_json({"mode": "zscore", "weight": 0.3, "retrieval_weight": -0.1})
    with pytest.raises(ModelLoadError):
        FusionConfig.from_json({"mode": "rrf", "weight": 0.3})
    with pytest.raises(ModelLoadError):
        FusionConfig.from_json({"mode": "zscore", "weight": 1.5})


def test_early_stopping_counter() -> None:
    stopper = EarlyStopping(patience=2)
    assert stopper.update(0.5) and stopper.update(0.7)
    assert not stopper.update(0.6) and not stopper.should_stop
    assert not stopper.update(0.7) and stopper.should_stop  # equal is no improvement
    assert stopper.best == 0.7


# -------------------------------------------------------------------------------------------- training


def test_training_writes_a_loadable_reranker_folder(
    trained: tuple[Path, training.TrainResult], reranker: Reranker
) -> None:
    out, result = trained
    for name in ("config.json", "model.safetensors", "tokenizer.json", "model_card.md", RERANKER_META_FILE):
        assert (out / name).is_file(), name
    meta = json.loads((out / RERANKER_META_FILE).read_text(encoding="utf-8"))
    assert meta == result.metadata
    assert meta["num_labels"] == 1 and meta["seed"] == 7
    assert meta["data"]["train_scored"]["rows"] == 64 and meta["data"]["dev"]["rows"] == 32
    assert len(meta["data"]["train_scored"]["sha256"]) == 64
    assert meta["hyperparameters"]["batch_size"] == 16
    assert [h["epoch"] for h in meta["history"]] == [1] and meta["best_epoch"] == 1
    assert set(meta["dev_metrics"]) >= {"cosine_spearman", "both_orders_spearman", "fusion_spearman"}
    assert set(meta["test_metrics"]) >= {"cosine_spearman", "both_orders_spearman", "fusion_spearman"}
    assert meta["fusion"]["mode"] == "zscore" and 0.0 <= meta["fusion"]["weight"] <= 1.0
    assert meta["dev_metrics"]["fusion_spearman"] >= meta["dev_metrics"]["both_orders_spearman"] - 1e-12
    assert set(meta["timings"]) >= {"train_seconds", "total_seconds"}
    assert "torch" in meta["versions"]
    assert "Spearman" in (out / "model_card.md").read_text(encoding="utf-8")
    assert not list(out.parent.glob(".model.partial-*"))

    scores = reranker.score(QUERY, TEXTS)
    assert scores.shape == (4,) and np.all((scores > 0.0) & (scores < 1.0))
    info = reranker_info(reranker)  # the service's /info view of this real trained card
    assert info["path"] == str(out.resolve())
    assert info["trained_on"]["train_scored"]["rows"] == 64
    assert info["fusion"] == {
        "mode": "zscore",
        "weight": meta["fusion"]["weight"],
        "scope": "per_query",
        "pairwise_weight": meta["fusion"]["weight"],
    }
    assert info["evaluated_on"]["test"]["rows"] == 16
    json.dumps(info)


def test_output_folder_is_not_clobbered(tmp_path: Path, stsb_slices: tuple[list[ScoredPair], list[ScoredPair]]) -> None:
    (tmp_path / "keep.txt").write_text("x", encoding="utf-8")
    with pytest.raises(InvalidInputError):
        _train(tmp_path, *stsb_slices)
    with pytest.raises(InvalidInputError, match="not a reranker folder"):
        _train(tmp_path, *stsb_slices, overwrite=True)


def test_failed_training_leaves_no_debris(
    tmp_path: Path, stsb_slices: tuple[list[ScoredPair], list[ScoredPair]]
) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(ModelLoadError):
        _train(tmp_path / "out", *stsb_slices, base_model=empty)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-model"]


def test_same_seed_gives_identical_scores(
    tmp_path: Path,
    trained: tuple[Path, training.TrainResult],
    reranker: Reranker,
    stsb_slices: tuple[list[ScoredPair], list[ScoredPair]],
) -> None:
    train, dev = stsb_slices
    result = _train(tmp_path / "again", train, dev, fusion=False)
    again = Reranker(result.output_dir)
    np.testing.assert_array_equal(
        again.logits([(QUERY, t) for t in TEXTS]), reranker.logits([(QUERY, t) for t in TEXTS])
    )
    assert result.history[0].dev_metric == trained[1].history[0].dev_metric
    assert result.history[0].train_loss == trained[1].history[0].train_loss
    # trained with fusion=False: no fusion unless asked for (per-query only)
    assert result.metadata["fusion"] is None and again.fusion is None
    scores = again.score(QUERY, TEXTS, [0.9, 0.1, 0.5, 0.05])
    assert np.all((scores > 0) & (scores < 1))
    fused = Reranker(result.output_dir, retrieval_weight=0.3)
    assert fused.fusion is not None and fused.fusion.pairwise_stats is None
    expected = 0.7 * zscore(again.logits([(QUERY, t) for t in TEXTS])) + 0.3 * zscore([0.9, 0.1, 0.5, 0.05])
    np.testing.assert_allclose(fused.score(QUERY, TEXTS, [0.9, 0.1, 0.5, 0.05]), expected, rtol=1e-6)


def test_scores_match_cross_encoder_predict(trained: tuple[Path, training.TrainResult], reranker: Reranker) -> None:
    from sentence_transformers import CrossEncoder

    expected = CrossEncoder(str(trained[0])).predict([(QUERY, t) for t in TEXTS], show_progress_bar=False)
    got = reranker.score(QUERY, TEXTS)  # no retrieval scores: sigmoid(logit), like predict
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert list(np.argsort(-got, kind="stable")) == list(np.argsort(-expected, kind="stable"))
    assert [i for i, _ in reranker.rank(QUERY, TEXTS)] == list(np.argsort(-expected, kind="stable"))


def test_fused_scores_use_per_query_zscores(reranker: Reranker) -> None:
    assert reranker.fusion is not None
    retrieval = [0.9, 0.1, 0.5, 0.05]
    logits = reranker.logits([(QUERY, t) for t in TEXTS])
    w = reranker.fusion.retrieval_weight
    expected = (1 - w) * zscore(logits) + w * zscore(retrieval)
    np.testing.assert_allclose(reranker.score(QUERY, TEXTS, retrieval), expected, rtol=1e-6, atol=1e-9)
    with pytest.raises(InvalidInputError):
        reranker.score(QUERY, TEXTS, retrieval[:2])
    assert reranker.score(QUERY, []).shape == (0,)


def test_score_pairs_symmetric_and_fused(reranker: Reranker) -> None:
    pairs = [(QUERY, t) for t in TEXTS]
    forward = reranker.logits(pairs).astype(np.float64)
    backward = reranker.logits([(b, a) for a, b in pairs]).astype(np.float64)
    mean = (forward + backward) / 2
    sym = reranker.score_pairs(pairs)  # trained as symmetric: both orders by default
    np.testing.assert_allclose(sym, 1 / (1 + np.exp(-mean)), rtol=1e-5)
    np.testing.assert_allclose(reranker.score_pairs(pairs, symmetric=False), 1 / (1 + np.exp(-forward)), rtol=1e-5)
    cos = [0.8, 0.1, 0.6, 0.0]
    assert reranker.fusion is not None and reranker.fusion.pairwise_stats is not None
    stats = reranker.fusion.pairwise_stats
    w = reranker.fusion.weight
    expected = (1 - w) * (mean - stats["ce_mean"]) / stats["ce_std"] + w * (np.array(cos) - stats["cos_mean"]) / stats[
        "cos_std"
    ]
    np.testing.assert_allclose(reranker.score_pairs(pairs, cosine_scores=cos), expected, rtol=1e-5)


def test_fusion_can_be_disabled_or_overridden(trained: tuple[Path, training.TrainResult]) -> None:
    plain = Reranker(trained[0], fusion=False)
    assert plain.fusion is None
    scores = plain.score(QUERY, TEXTS, [0.9, 0.1, 0.5, 0.05])  # retrieval scores ignored: sigmoid
    assert np.all((scores > 0) & (scores < 1))
    heavy = Reranker(trained[0], retrieval_weight=1.0)
    np.testing.assert_allclose(heavy.score(QUERY, TEXTS, [0.9, 0.1, 0.5, 0.05]), zscore([0.9, 0.1, 0.5, 0.05]))
    with pytest.warns(DeprecationWarning, match="deprecated; use retrieval_weight"):
        old_name = Reranker(trained[0], fusion_weight=1.0)  # the old keyword still sets the weight
    assert old_name.fusion == heavy.fusion
    assert heavy.fusion is not None and heavy.fusion.weight == trained[1].metadata["fusion"]["weight"]
    assert heavy.fusion.retrieval_weight == 1.0  # the per-query weight; score_pairs keeps the dev weight


def test_backend_hook(trained: tuple[Path, training.TrainResult], reranker: Reranker) -> None:
    with pytest.raises(InvalidInputError, match="unknown reranker backend"):
        Reranker(trained[0], backend="no-such-backend")

    def factory(cross_encoder: Any, context: Any) -> FeatureBackend:
        assert context.model_dir == trained[0].resolve()

        def run(features: dict[str, Any]) -> torch.Tensor:
            with torch.inference_mode():
                return cross_encoder(features)["scores"]

        return FeatureBackend(cross_encoder, run)

    register_backend("test-features", factory)
    assert "test-features" in available_backends()
    hooked = Reranker(trained[0], backend="test-features")
    np.testing.assert_allclose(hooked.score(QUERY, TEXTS), reranker.score(QUERY, TEXTS), rtol=1e-5, atol=1e-6)
    assert hooked.backend == "test-features"


def test_onnx_backends_match_torch_and_reuse_the_cache(
    trained: tuple[Path, training.TrainResult], reranker: Reranker, tmp_path: Path
) -> None:
    """fp32 ONNX reproduces the torch logits; int8 keeps the order of clearly separated candidates."""
    pairs = [(QUERY, t) for t in TEXTS] + [(t, QUERY) for t in TEXTS]
    reference = reranker.logits(pairs)
    options = {"cache_dir": tmp_path}
    fp32 = Reranker(trained[0], backend="onnx", backend_options=options)
    np.testing.assert_allclose(fp32.logits(pairs), reference, atol=1e-3)
    int8 = Reranker(trained[0], backend="onnx-int8", backend_options=options)
    quantised = int8.logits(pairs)
    assert np.max(np.abs(quantised - reference)) < 0.25 * float(np.ptp(reference))
    assert np.argmax(quantised[:4]) == np.argmax(reference[:4])
    assert int8.backend == "onnx-int8"
    cached = sorted(p.name for p in tmp_path.glob("*-cross-encoder/*.onnx"))
    assert cached == [f"model-int8-{INT8_RECIPE}.onnx", "model.onnx"]  # the int8 recipe names the file
    # keyed by the one model fingerprint (the encoder's, recorded in index manifests)
    assert [p.name for p in tmp_path.glob("*-cross-encoder")] == [f"{model_fingerprint(trained[0])}-cross-encoder"]
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*-cross-encoder/*.onnx")}
    Reranker(trained[0], backend="onnx-int8", backend_options=options)  # second load: from the cache
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*-cross-encoder/*.onnx")} == mtimes
    # the service's memory bound: runs above arena_keep_tokens free onnxruntime's arena, same logits
    bounded = Reranker(trained[0], backend="onnx", backend_options={**options, "arena_keep_tokens": 8})
    assert bounded._backend.run.__self__.arena_keep_tokens == 8  # type: ignore[attr-defined]
    np.testing.assert_array_equal(bounded.logits(pairs), fp32.logits(pairs))


def test_auto_backend_is_int8_where_it_can_be_cached_else_torch(
    trained: tuple[Path, training.TrainResult], reranker: Reranker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``auto``: onnx-int8 for a local folder with a usable cache; torch (with a warning naming the cause) when
    the cache cannot be created, scoring exactly like the torch reranker."""
    auto = Reranker(trained[0], backend="auto", backend_options={"cache_dir": tmp_path / "cache"})
    assert auto.backend == "onnx-int8"
    assert list((tmp_path / "cache").glob(f"*-cross-encoder/model-int8-{INT8_RECIPE}.onnx"))
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would be", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="semsearch.models.reranker"):
        fallback = Reranker(trained[0], backend="auto", backend_options={"cache_dir": blocked})
    assert fallback.backend == "torch"
    assert "reranker backend auto" in caplog.text and "using torch" in caplog.text and str(blocked) in caplog.text
    pairs = [(QUERY, t) for t in TEXTS]
    np.testing.assert_array_equal(fallback.logits(pairs), reranker.logits(pairs))
    with pytest.raises(InvalidInputError, match="available: auto, "):
        Reranker(trained[0], backend="no-such-backend")


def test_missing_model_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError):
        Reranker(tmp_path / "nothing-here")


def test_early_stopping_keeps_best_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stsb_slices: tuple[list[ScoredPair], list[ScoredPair]]
) -> None:
    """Scripted dev metric 0.5, 0.9, 0.7 with patience 1: stop after epoch 3, ship epoch 2's weights."""
    train, dev = stsb_slices
    probe = [(QUERY, t) for t in TEXTS]
    scripted = iter([0.5, 0.9, 0.7, 0.95])
    seen: list[np.ndarray] = []

    def fake_eval(model: Any, dev_pairs: Any, batch_size: int) -> float:
        seen.append(training.predict_logits(model, probe))
        return next(scripted)

    monkeypatch.setattr(training_evaluate, "scored_dev_metric", fake_eval)
    result = _train(tmp_path / "es", train[:32], dev, epochs=4, patience=1, fusion=False, learning_rate=1e-4)
    assert [h.dev_metric for h in result.history] == [0.5, 0.9, 0.7]
    assert result.best_epoch == 2 and result.best_dev_metric == 0.9 and result.stopped_early
    assert result.metadata["best_epoch"] == 2
    kept = Reranker(result.output_dir).logits(probe)
    np.testing.assert_allclose(kept, seen[1], atol=1e-5)
    assert not np.allclose(kept, seen[2], atol=1e-5)  # epoch 3 differed: the test is meaningful


# --------------------------------------------------------------------------------------- train-reranker CLI


def test_train_reranker_cli_relevance_with_mined_dev(tmp_path: Path, small_index: Path) -> None:
    """Relevance pairs + held-out dev pairs, negatives mined from a real index, a retrieval weight:
    the folder loads, uses dev MRR, mined negatives, and the given per-query fusion weight."""
    import subprocess
    import sys

    from conftest import sample_rows, write_jsonl

    by_query = {f"what is a {r['lemma'].replace('_', ' ')}": r["text"] for r in sample_rows(300)[::5]}
    rows = [{"query": q, "text": t} for q, t in list(by_query.items())[:20]]
    assert len(rows) == 20
    train = write_jsonl(tmp_path / "train.jsonl", rows[:14])
    dev = write_jsonl(tmp_path / "dev.jsonl", rows[14:])
    out = tmp_path / "rr"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "indexer", "train-reranker", *args]
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)

    common = ["--relevance", str(train), "--dev-relevance", str(dev), "--epochs", "1", "--batch-size", "8"]
    refused = cli(*common, "--output", str(out))
    assert refused.returncode == 2 and "--mine-index" in refused.stderr
    res = cli(*common, "--mine-index", str(small_index), "--retrieval-weight", "0.7", "--output", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "best dev mrr" in res.stdout
    meta = json.loads((out / RERANKER_META_FILE).read_text())
    assert meta["dev_metric"] == "mrr" and 0.0 < meta["dev_metrics"]["mrr"] <= 1.0
    assert meta["data"]["dev_relevance"] == {"queries": 6}
    assert meta["data"]["train_relevance"]["queries"] == 14
    assert meta["data"]["train_relevance"]["mined_negatives"] > 0
    assert meta["fusion"]["retrieval_weight"] == 0.7
    rr = Reranker(out)
    assert rr.fusion is not None and rr.fusion.retrieval_weight == 0.7
    texts = [rows[0]["text"], rows[1]["text"]]
    expected = fuse_logits(rr.logits([(rows[0]["query"], t) for t in texts]), [0.9, 0.1], 0.7)
    np.testing.assert_allclose(rr.score(rows[0]["query"], texts, retrieval_scores=[0.9, 0.1]), expected)


def test_num_layers_trains_a_shallower_reranker_that_reloads(
    tmp_path: Path, stsb_slices: tuple[list[ScoredPair], list[ScoredPair]]
) -> None:
    train, dev = stsb_slices
    result = _train(tmp_path / "l2", train[:32], dev[:16], num_layers=2, fusion=False)
    assert result.metadata["hyperparameters"]["num_layers"] == 2
    assert result.metadata["hyperparameters"]["base_num_layers"] == 6
    reloaded = Reranker(result.output_dir)
    assert reloaded.cross_encoder.model.config.num_hidden_layers == 2
    assert len(reloaded.cross_encoder.model.bert.encoder.layer) == 2
    assert reloaded.score(QUERY, TEXTS).shape == (len(TEXTS),)
    with pytest.raises(InvalidInputError, match=r"num_layers must be in 1\.\.6"):
        _train(tmp_path / "l9", train[:16], dev[:8], num_layers=9)


def test_read_relevance_pairs_prepends_titles_and_names_bad_lines(tmp_path: Path) -> None:
    from indexer.train_cmd import read_relevance_pairs

    good = tmp_path / "pairs.jsonl"
    good.write_text(
        '{"query": "q1", "title": "T", "text": "body"}\n\n{"query": "q2", "title": "", "text": "only body"}\n',
        encoding="utf-8",
    )
    assert read_relevance_pairs(good, "query", "text") == [("q1", "T body"), ("q2", "only body")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q1", "text": "x"}\n{"text": "no query"}\n', encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"bad\.jsonl:2: not a JSON object with 'query' and 'text'"):
        read_relevance_pairs(bad, "query", "text")


@pytest.mark.parametrize("no_sts_fusion", [["--no-fusion"], []], ids=["no-fusion", "no-dev"])
def test_test_split_with_retrieval_weight_but_no_sts_fusion(
    tmp_path: Path, stsb_slices: tuple[list[ScoredPair], list[ScoredPair]], no_sts_fusion: list[str]
) -> None:
    """--test with --retrieval-weight when no STS fusion is tuned (--no-fusion, or no --dev): the per-query
    weight ships, the test split is reported without a fused score (no dev statistics to fuse with)."""
    import subprocess
    import sys

    train, dev = stsb_slices

    def tsv(name: str, pairs: list[ScoredPair]) -> str:
        rows = "".join(f"{p.sentence1}\t{p.sentence2}\t{p.score}\n" for p in pairs)
        (tmp_path / name).write_text("sentence1\tsentence2\tscore\n" + rows, encoding="utf-8")
        return str(tmp_path / name)

    out = tmp_path / "rr"
    args = ["train-reranker", "--scored", tsv("train.tsv", train[:16]), "--test", tsv("test.tsv", dev[8:16])]
    args += ["--dev", tsv("dev.tsv", dev[:8])] if no_sts_fusion else []
    args += [*no_sts_fusion, "--retrieval-weight", "0.7", "--epochs", "1", "--batch-size", "8", "--output", str(out)]
    res = subprocess.run([sys.executable, "-m", "indexer", *args], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "test both_orders_spearman" in res.stdout and "fusion_spearman" not in res.stdout
    meta = json.loads((out / RERANKER_META_FILE).read_text(encoding="utf-8"))
    assert meta["fusion"]["weight"] == 0.7 and meta["fusion"]["retrieval_weight"] == 0.7
    assert "pairwise_stats" not in meta["fusion"]
    assert set(meta["test_metrics"]) == {
        "cosine_spearman",
        "cross_encoder_spearman",
        "both_orders_spearman",
        "both_orders_pearson",
    }
    assert meta["data"]["test"]["rows"] == 8
    rr = Reranker(out)
    assert rr.fusion is not None and rr.fusion.retrieval_weight == 0.7 and rr.fusion.pairwise_stats is None
