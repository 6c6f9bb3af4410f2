"""Query/passage prompts: read from a model folder that declares them, recorded in the manifest,
applied by the indexer to passages and by the encoder to queries; MiniLM (none declared) unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_jsonl

from indexer.pipeline import BuildOptions, run_build
from semsearch.index.manifest import Manifest
from semsearch.models import Encoder, resolve_model
from semsearch.models.encoder import PROMPTS_FILE, read_prompts
from semsearch.search import SearchIndex

pytestmark = pytest.mark.slow  # real model, real builds

PROMPTS = {"query": "query: ", "passage": "passage: "}


@pytest.fixture(scope="module")
def prompted_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "minilm-prompts"
    shutil.copytree(resolve_model(None).path, folder)
    config_path = folder / PROMPTS_FILE
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    config["prompts"] = {"query": PROMPTS["query"], "document": PROMPTS["passage"]}
    config_path.write_text(json.dumps(config))
    return folder


def test_packaged_model_declares_no_prompts_and_its_vectors_do_not_change(encoder):
    assert read_prompts(resolve_model(None).path) == {}
    assert encoder.query_prompt == "" and encoder.passage_prompt == ""
    texts = ["a large wild cat", "bread"]
    assert encoder.encode(texts).tobytes() == encoder.encode(texts, prompt="").tobytes()


def test_prompts_from_the_model_folder_are_recorded_and_applied(prompted_model, tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "text": "a large wild cat"}, {"id": "b", "text": "bread"}])
    out = tmp_path / "idx"
    run_build(BuildOptions(inputs=[src], output=out, model=str(prompted_model), backend="torch", progress=False))
    manifest = Manifest.read(out / "current")
    assert manifest.prompts == PROMPTS
    enc = Encoder.from_manifest(manifest)
    assert (enc.query_prompt, enc.passage_prompt) == ("query: ", "passage: ")
    index = SearchIndex.load(out)
    try:
        iids, vecs = index.live_vectors()
        docs = index.docs_for(iids.tolist())
        stored = {docs[int(i)].id: v for i, v in zip(iids, vecs, strict=True)}
    finally:
        index.close()
    assert docs[int(iids[0])].text in ("a large wild cat", "bread")  # the raw text is stored
    np.testing.assert_allclose(stored["a"], enc.encode(["passage: a large wild cat"])[0], atol=1e-6)
    assert not np.allclose(stored["a"], enc.encode(["a large wild cat"])[0], atol=1e-4)
    # build-time flags override the folder; an add must not contradict them
    out2 = tmp_path / "idx2"
    run_build(
        BuildOptions(
            inputs=[src], output=out2, model=str(prompted_model), backend="torch", query_prompt="q: ", progress=False
        )
    )
    assert Manifest.read(out2 / "current").prompts == {"query": "q: ", "passage": "passage: "}
    from semsearch.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="query prompt"):
        run_build(BuildOptions(inputs=[src], output=out2, query_prompt="x: ", progress=False), incremental=True)
