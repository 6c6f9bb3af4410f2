"""The bi-encoder: pooling really differs, CLS is the first token, vectors are unit length."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semsearch.errors import InvalidInputError
from semsearch.models.encoder import Encoder, pool_and_normalize

TEXTS = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "cats",
    "Stock markets fell sharply on Monday after the announcement.",
]


@pytest.fixture(scope="module")
def cls_encoder():
    return Encoder(pooling="cls")


def _token_outputs(enc: Encoder, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    feats = enc.tokenizer(texts, padding=True, truncation=True, max_length=enc.max_seq_length, return_tensors="pt")
    with torch.inference_mode():
        hidden = enc._st[0].auto_model(**feats).last_hidden_state
    return hidden.numpy(), feats["attention_mask"].numpy()


def test_vectors_are_unit_length_and_ordered(encoder):
    vecs = encoder.encode(TEXTS)
    assert vecs.shape == (len(TEXTS), 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # Length-sorted batching must not permute the output: encoding one by one gives the same rows.
    singles = np.vstack([encoder.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(vecs, singles, atol=1e-5)


def test_mean_pooling_is_masked_token_average(encoder):
    hidden, mask = _token_outputs(encoder, TEXTS)
    expected = pool_and_normalize(hidden, mask, "mean")
    np.testing.assert_allclose(encoder.encode(TEXTS), expected, atol=1e-5)


def test_cls_pooling_uses_the_first_token(cls_encoder, encoder):
    hidden, _ = _token_outputs(cls_encoder, TEXTS)
    first = hidden[:, 0, :] / np.linalg.norm(hidden[:, 0, :], axis=1, keepdims=True)
    cls_vecs = cls_encoder.encode(TEXTS)
    np.testing.assert_allclose(cls_vecs, first, atol=1e-5)
    # ... and it is not the model's own (mean) pooling in disguise.
    cosines = (cls_vecs * encoder.encode(TEXTS)).sum(axis=1)
    assert (cosines < 0.95).all(), cosines
    assert cls_encoder.model_pooling == "mean"  # the shipped model pools by mean; we overrode it


def test_truncation_is_counted():
    enc = Encoder(max_seq_length=16)
    before = enc.stats.truncated
    enc.encode(["short one", "word " * 40, "another " * 30])
    assert enc.stats.truncated - before == 2
    assert enc.max_seq_length == 16


def test_semantics_sanity(encoder):
    a, b, c = encoder.encode(["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell."])
    assert float(a @ b) > float(a @ c) + 0.2


def test_bad_choices_list_the_valid_ones():
    with pytest.raises(InvalidInputError, match="mean, cls"):
        Encoder(pooling="max")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="torch, onnx, onnx-int8"):
        Encoder(backend="tensorrt")  # type: ignore[arg-type]


def test_tokenizers_path_matches_the_transformers_tokenizer(encoder):
    """The ONNX backends tokenise with the ``tokenizers`` library straight from tokenizer.json (no torch,
    no transformers): same ids, token types and truncation as the tokenizer sentence-transformers uses."""
    from semsearch.models.encoder import _read_layout, _Tokens

    layout = _read_layout(encoder.resolved.path)
    assert layout is not None
    assert (layout.dim, layout.pooling, layout.max_seq_length) == (384, "mean", encoder.max_seq_length)
    texts = [*TEXTS, "", "  padded   spaces  ", "¿Dónde está la biblioteca? 图书馆在哪里? naïve café", "word " * 300]
    fast = _Tokens.build(None, 256, layout).encode(texts)
    ref = encoder.tokenizer(texts, truncation=True, max_length=256, return_token_type_ids=True)
    assert fast.ids == [list(x) for x in ref["input_ids"]]
    assert fast.type_ids == [list(x) for x in ref["token_type_ids"]]
    assert fast.truncated == 1
    assert fast.pad_id == encoder.tokenizer.pad_token_id
    np.testing.assert_array_equal(_Tokens.build(None, 256, layout).lengths(texts), encoder.token_lengths(texts))


class _Fed(Exception):
    """Raised by a forward pre-hook instead of running the model: the devices of its inputs and weights."""

    def __init__(self, inputs: set[str], weights: str) -> None:
        super().__init__(f"inputs on {inputs}, weights on {weights}")
        self.inputs, self.weights = inputs, weights


def test_the_torch_model_gets_its_inputs_on_its_own_device() -> None:
    """``indexer build --engine ray --gpus-per-encoder`` moves the torch model to CUDA: its inputs must follow
    it (the tokenizer makes them on the CPU). Checked without a GPU: the model moved to the ``meta`` device,
    a forward pre-hook sees what ``encode`` feeds it (a CPU tensor there is the mismatch that failed on CUDA)."""
    from semsearch.models.runner import TorchRunner

    enc = Encoder(device="cpu")
    runner = enc._runner
    assert isinstance(runner, TorchRunner) and runner.device.type == "cpu"

    def hook(module, args, kwargs):
        raise _Fed({v.device.type for v in [*args, *kwargs.values()]}, next(module.parameters()).device.type)

    handle = runner.module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with pytest.raises(_Fed) as on_cpu:
            enc.encode(TEXTS)
        assert (on_cpu.value.inputs, on_cpu.value.weights) == ({"cpu"}, "cpu")
        enc.to_device("meta")  # any device but the CPU: what .to("cuda") does to the weights
        assert enc.device == "meta" and runner.device.type == "meta"
        with pytest.raises(_Fed) as moved:
            enc.encode(TEXTS)
        assert (moved.value.inputs, moved.value.weights) == ({"meta"}, "meta")
    finally:
        handle.remove()


def test_a_device_needs_the_torch_backend() -> None:
    with pytest.raises(InvalidInputError, match="needs the torch backend"):
        Encoder(backend="onnx-int8", device="cuda")
