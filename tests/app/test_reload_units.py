"""Fast unit tests of the index holder, the hot reloader and the writer lock (no model, no server).

A segmented index of seeded synthetic vectors is written with the core writer; a tiny fake encoder
stands in for the model (the reloader only needs its fingerprint and pooling). The real model and a
real server exercise the same code in ``test_app_server.py``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.errors import ApiError
from app.metrics import Metrics
from app.reload import Reloader
from app.services import IndexHolder, Services
from semsearch.errors import InvalidInputError, ModelMismatchError
from semsearch.index.layout import IndexRoot
from semsearch.index.store import Record
from semsearch.index.writer import BaseVersion, IndexWriter
from semsearch.search import load_index
from semsearch.search.reader import SegmentPool

DIM = 8
META = {
    "model": "fake",
    "fingerprint": "f0",
    "pooling": "mean",
    "backend": "torch",
    "max_seq_length": 0,
    "dimension": DIM,
}


class FakeEncoder:
    name = "fake"
    fingerprint = "f0"
    pooling = "mean"

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        out = np.ones((len(texts), DIM), dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _publish(root: Path, first: int, n: int) -> None:
    rng = np.random.default_rng(first)
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    records = [Record(text=f"row {first + i}", ext_id=f"r{first + i}") for i in range(n)]
    index_root = IndexRoot(root)
    with index_root.lock():
        writer = IndexWriter(
            index_root, f"add-{first}", META, {"type": "flat", "params": {}}, base=BaseVersion.read(index_root)
        )
        writer.add_chunk(records, vecs, [], n, "keep-last")
        writer.commit({"kind": "add"})


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "idx"
    _publish(path, 0, 20)
    return path


def test_holder_closes_a_replaced_version_only_after_its_last_user(root: Path) -> None:
    pool = SegmentPool()
    holder = IndexHolder(load_index(root, FakeEncoder(), pool))  # type: ignore[arg-type]
    with holder.use() as old:
        _publish(root, 20, 5)
        new = load_index(root, FakeEncoder(), pool)  # type: ignore[arg-type]
        holder.swap(new)
        assert old.views, "still borrowed: not closed yet"
        assert len(old.dense(np.ones((1, DIM), np.float32), 3)[1][0]) == 3
    assert old.views == []  # closed when the last user returned it
    assert holder.current is new and len(pool.loaded()) == 2  # the shared segment stayed open
    holder.close()
    assert pool.loaded() == []


def test_reloader_follows_current_reuses_segments_and_refuses_edited_versions(root: Path) -> None:
    pool = SegmentPool()
    services = Services(FakeEncoder(), IndexHolder(load_index(root, FakeEncoder(), pool)), None, pool)  # type: ignore[arg-type]
    reloader = Reloader(root, services, Metrics())
    first_segment = services.indexes.current.segments[0]

    async def scenario() -> None:
        assert (await reloader.reload()).outcome == "unchanged"
        _publish(root, 20, 5)
        outcome = await reloader.reload(forced=False)
        assert (outcome.outcome, outcome.version, outcome.count) == ("reloaded", "v000002", 25)
        assert services.indexes.current.segments[0] is first_segment  # reused, not read again
        # a published version whose manifest was edited by hand is refused; the old one keeps serving
        index_root = IndexRoot(root)
        edited = index_root.versions_dir / index_root.next_version()
        shutil.copytree(index_root.versions_dir / "v000002", edited)
        data = json.loads((edited / "manifest.json").read_text())
        data["count"] = 99
        (edited / "manifest.json").write_text(json.dumps(data))
        index_root.point_current(edited.name)
        with pytest.raises(ApiError) as refused:
            await reloader.reload(forced=False)
        assert refused.value.status == 409 and "checksum" in refused.value.message
        assert services.indexes.current.version == "v000002"
        assert (await reloader.reload(forced=False)).outcome == "unchanged"  # not retried until current moves
        assert reloader.last_error is not None and reloader.last_error["version"] == edited.name

    asyncio.run(scenario())
    services.close()


def test_load_index_refuses_another_encoder(root: Path) -> None:
    other = FakeEncoder()
    other.fingerprint = "f1"
    with pytest.raises(ModelMismatchError, match="fingerprint f0"):
        load_index(root, other, SegmentPool())  # type: ignore[arg-type]


def test_writer_lock_refuses_a_second_writer(root: Path) -> None:
    index_root = IndexRoot(root)
    with index_root.lock(), pytest.raises(InvalidInputError, match="another indexer process"), IndexRoot(root).lock():
        pass
    with index_root.lock():  # released: the next writer gets it
        pass
