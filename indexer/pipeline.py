"""The batch indexing pipeline: stream rows -> encode in chunks (checkpointed) -> publish a version.

Crash safety: every chunk is committed as one unit (vector file renamed into place, then one SQLite
transaction with its rows, rejects and the resume state), so ``--resume`` continues from the last
committed chunk. Nothing becomes visible to readers until :meth:`IndexRoot.publish` renames the
finished staging directory and switches ``current``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from semsearch.encoder import Backend, Encoder, Pooling
from semsearch.errors import DuplicateIdError, InvalidInputError, ModelMismatchError, TooManyRejectsError
from semsearch.index import file_sha256
from semsearch.layout import IndexRoot
from semsearch.manifest import Manifest
from semsearch.readers import DEFAULT_MAX_CHARS, Reject, read_inputs
from semsearch.store import DOCS_DB, FTS_SCHEMA, Record, connect, corpus_checksum
from semsearch.vector_index import IDS_FILE, VECTORS_FILE, VectorIndex

log = logging.getLogger(__name__)

OnDuplicate = Literal["error", "keep-last"]
CHUNKS = "chunks"


@dataclass
class BuildOptions:
    """Everything a build/add run needs; the CLI fills it from its flags."""

    inputs: list[Path]
    output: Path
    model: str | None = None
    pooling: Pooling = "mean"
    backend: Backend = "torch"
    index_type: str = "flat"
    index_params: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    max_seq_length: int | None = None
    text_field: str = "text"
    id_field: str = "id"
    split_sentences: bool = False
    max_chars: int = DEFAULT_MAX_CHARS
    max_rejects: str = "1%"
    on_duplicate: OnDuplicate = "error"
    resume: bool = False
    keep: int | None = None
    chunk_size: int = 4096
    progress: bool = True


@dataclass
class BuildResult:
    """What a run published (or why it did not)."""

    version: str
    count: int
    added: int = 0
    deleted: int = 0
    rejects: int = 0
    rejects_file: Path | None = None
    truncated: int = 0
    seconds: float = 0.0
    resumed_rows: int = 0
    pruned: list[str] = field(default_factory=list)


def parse_max_rejects(value: str, total_rows: int) -> int:
    """``"1%"`` -> 1% of the rows read, rounded up (so a small file may skip one bad row); ``"25"`` -> 25."""
    v = value.strip()
    try:
        if v.endswith("%"):
            return math.ceil(float(v[:-1]) / 100.0 * total_rows - 1e-9)
        return int(v)
    except (ValueError, OverflowError) as e:
        raise InvalidInputError(f"--max-rejects must be a count like 25 or a share like 1%, got {value!r}") from e


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


class _Staging:
    """A staging directory: docs.sqlite with resume state, chunk vector files."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        (directory / CHUNKS).mkdir(parents=True, exist_ok=True)
        self.conn = connect(directory / DOCS_DB)

    def state(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM build_state")}

    def set_state(self, **values: Any) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO build_state(key, value) VALUES (?, ?)",
            [(k, json.dumps(v)) for k, v in values.items()],
        )

    def chunk_files(self) -> list[Path]:
        return sorted((self.dir / CHUNKS).glob("*.vec.npy"))


def _fingerprint(opts: BuildOptions, base: str | None, kind: str) -> str:
    inputs = []
    for p in opts.inputs:
        st = p.stat()
        inputs.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    key = {
        "kind": kind,
        "inputs": inputs,
        "model": opts.model,
        "pooling": opts.pooling,
        "backend": opts.backend,
        "max_seq_length": opts.max_seq_length,
        "text_field": opts.text_field,
        "id_field": opts.id_field,
        "split": opts.split_sentences,
        "max_chars": opts.max_chars,
        "on_duplicate": opts.on_duplicate,
        "base": base,
        "chunk_size": opts.chunk_size,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _estimate_rows(paths: list[Path]) -> int | None:
    """Line count of the inputs (fast, for the progress bar's ETA)."""
    import gzip

    total = 0
    for p in paths:
        try:
            with gzip.open(p, "rb") if p.suffix.lower() == ".gz" else p.open("rb") as fh:
                while block := fh.read(1 << 20):
                    total += block.count(b"\n")
        except OSError:
            return None
    return total


def _ingest(staging: _Staging, encoder: Encoder, opts: BuildOptions, on_duplicate: OnDuplicate) -> tuple[int, int, int]:
    """Read, encode and commit all rows chunk by chunk; returns (rows read, rejects, resumed rows)."""
    state = staging.state()
    consumed = int(state.get("consumed", 0))
    next_iid = int(state.get("next_iid", 0))
    chunk_no = int(state.get("chunks", 0))
    rejects = int(state.get("rejects", 0))
    resumed = consumed
    if resumed:
        log.info("resuming: %d rows already committed in %d chunks", consumed, chunk_no)
    total = None if opts.split_sentences or not opts.progress else _estimate_rows(opts.inputs)
    bar = None
    if opts.progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total, initial=consumed, desc="indexing", unit="row", unit_scale=True, smoothing=0.05, mininterval=1.0
        )
    rows = read_inputs(opts.inputs, opts.text_field, opts.id_field, opts.split_sentences, opts.max_chars)
    for _ in range(consumed):  # fast-forward past committed rows (reading is cheap, encoding is not)
        if next(rows, None) is None:
            break
    pending: list[Record] = []
    pending_rejects: list[Reject] = []
    n_items = 0

    def commit() -> None:
        nonlocal next_iid, chunk_no, consumed, rejects, n_items
        iids = np.arange(next_iid, next_iid + len(pending), dtype=np.int64)
        vectors = encoder.encode([r.text for r in pending], batch_size=opts.batch_size)
        _atomic_save(staging.dir / CHUNKS / f"{chunk_no:06d}.vec.npy", vectors)
        _atomic_save(staging.dir / CHUNKS / f"{chunk_no:06d}.ids.npy", iids)
        with staging.conn:  # one transaction: rows + rejects + resume state
            for iid, rec in zip(iids.tolist(), pending, strict=True):
                _insert(staging.conn, iid, rec, on_duplicate)
            staging.conn.executemany(
                "INSERT INTO rejects(source, line, reason, raw) VALUES (?, ?, ?, ?)",
                [(r.source, r.line, r.reason, r.raw) for r in pending_rejects],
            )
            next_iid += len(pending)
            chunk_no += 1
            consumed += n_items
            rejects += len(pending_rejects)
            staging.set_state(consumed=consumed, next_iid=next_iid, chunks=chunk_no, rejects=rejects)
        if bar is not None:
            bar.update(n_items)
            bar.set_postfix(rejects=rejects, truncated=encoder.stats.truncated, refresh=False)
        pending.clear()
        pending_rejects.clear()
        n_items = 0

    for item in rows:
        n_items += 1
        if isinstance(item, Reject):
            pending_rejects.append(item)
        else:
            pending.append(item)
        if len(pending) >= opts.chunk_size:
            commit()
    if n_items:
        commit()
    if bar is not None:
        bar.close()
    return consumed - rejects, rejects, resumed


def _insert(conn: sqlite3.Connection, iid: int, rec: Record, on_duplicate: OnDuplicate) -> None:
    ext_id = rec.ext_id if rec.ext_id is not None else iid
    values = (
        iid,
        str(ext_id),
        isinstance(ext_id, int),
        rec.text,
        rec.doc_id,
        rec.start,
        rec.end,
        rec.source,
        json.dumps(rec.metadata, ensure_ascii=False, sort_keys=True),
    )
    sql = (
        'INSERT INTO docs(iid, ext_id, id_is_int, text, doc_id, start, "end", source, metadata) '
        "VALUES (?,?,?,?,?,?,?,?,?)"
    )
    try:
        conn.execute(sql, values)
    except sqlite3.IntegrityError as e:
        prev = conn.execute("SELECT source FROM docs WHERE ext_id = ?", (str(ext_id),)).fetchone()
        if prev is None:
            raise
        if on_duplicate == "error":
            raise DuplicateIdError(
                f"duplicate id {ext_id!r} at {rec.source} (first seen at {prev[0]}); "
                "use --on-duplicate keep-last to let the later row replace the earlier one",
                {"id": ext_id, "source": rec.source, "previous": prev[0]},
            ) from e
        conn.execute("DELETE FROM docs WHERE ext_id = ?", (str(ext_id),))
        conn.execute(sql, values)


def _finalize(
    root: IndexRoot,
    staging: _Staging,
    encoder_meta: dict[str, Any],
    opts: BuildOptions,
    base: tuple[Path, Manifest] | None,
    build_info: dict[str, Any],
) -> Manifest:
    """Assemble vectors of the live rows, build FAISS + FTS, write the manifest (last)."""
    conn = staging.conn
    alive = np.fromiter((r[0] for r in conn.execute("SELECT iid FROM docs ORDER BY iid")), dtype=np.int64)
    dim = int(encoder_meta["dimension"])
    out_path = staging.dir / VECTORS_FILE
    vectors = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float32, shape=(len(alive), dim))
    sources: list[tuple[np.ndarray, np.ndarray]] = []
    if base is not None:
        sources.append((np.load(base[0] / IDS_FILE), np.load(base[0] / VECTORS_FILE, mmap_mode="r")))
    for vec_file in staging.chunk_files():
        ids_file = vec_file.with_name(vec_file.name.replace(".vec.npy", ".ids.npy"))
        sources.append((np.load(ids_file), np.load(vec_file, mmap_mode="r")))
    row = 0
    for ids, vecs in sources:
        keep = np.isin(ids, alive, assume_unique=True)
        n = int(keep.sum())
        if n:
            vectors[row : row + n] = vecs[keep]
            row += n
    if row != len(alive):
        raise InvalidInputError(f"internal: assembled {row} vectors for {len(alive)} rows")
    vectors.flush()
    ids_all = np.concatenate([ids[np.isin(ids, alive, assume_unique=True)] for ids, _ in sources]) if sources else alive
    if not np.array_equal(ids_all, alive):
        raise InvalidInputError("internal: vector ids out of order with the stored rows")
    np.save(staging.dir / IDS_FILE, alive)
    del vectors
    shutil.rmtree(staging.dir / CHUNKS)
    if len(alive) == 0:
        raise InvalidInputError("no sentences to index: every row was rejected, deleted or the input is empty")
    vecs = np.load(out_path, mmap_mode="r")
    t0 = time.perf_counter()
    vi = VectorIndex.build(vecs, alive, opts.index_type, opts.index_params)
    vi.save(staging.dir)
    build_info["faiss_seconds"] = round(time.perf_counter() - t0, 3)
    with conn:
        conn.execute("DELETE FROM build_state")
        conn.execute("DELETE FROM rejects")
        conn.executescript(FTS_SCHEMA)
        conn.execute("INSERT INTO docs_fts(docs_fts) VALUES ('rebuild')")
    checksum = corpus_checksum(conn)
    conn.execute("PRAGMA journal_mode=DELETE")  # a single self-contained file, readable read-only
    conn.execute("VACUUM")
    conn.close()
    files = {name: file_sha256(staging.dir / name) for name in ("index.faiss", VECTORS_FILE, IDS_FILE, DOCS_DB)}
    manifest = Manifest(
        model=encoder_meta["model"],
        model_fingerprint=encoder_meta["fingerprint"],
        pooling=encoder_meta["pooling"],
        backend=encoder_meta["backend"],
        max_seq_length=encoder_meta["max_seq_length"],
        dimension=dim,
        index_type=vi.index_type,
        index_params=vi.params,
        count=len(alive),
        corpus_checksum=checksum,
        files=files,
        version=root.next_version(),
        parent_version=base[1].version if base else None,
        build=build_info,
    )
    manifest.write(staging.dir)
    return manifest


def _encoder_meta(encoder: Encoder) -> dict[str, Any]:
    return {
        "model": encoder.name,
        "fingerprint": encoder.fingerprint,
        "pooling": encoder.pooling,
        "backend": encoder.backend,
        "max_seq_length": encoder.max_seq_length,
        "dimension": encoder.dim,
    }


def _write_rejects(staging: _Staging, root: IndexRoot, name: str) -> Path | None:
    rows = staging.conn.execute("SELECT source, line, reason, raw FROM rejects ORDER BY n").fetchall()
    if not rows:
        return None
    root.rejects_dir.mkdir(parents=True, exist_ok=True)
    path = root.rejects_dir / f"{name}.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for source, line, reason, raw in rows:
            fh.write(json.dumps({"source": source, "line": line, "reason": reason, "raw": raw}, ensure_ascii=False))
            fh.write("\n")
    return path


def _open_staging(root: IndexRoot, name: str, resume: bool) -> _Staging:
    directory = root.staging_dir / name
    if directory.exists() and not resume:
        log.info("discarding an unfinished build at %s (pass --resume to continue it)", directory)
        shutil.rmtree(directory)
    elif resume and not directory.exists():
        others = sorted(p.name for p in root.staging_dir.glob("*")) if root.staging_dir.exists() else []
        log.warning(
            "--resume: no checkpoint for these inputs and options%s; starting from the beginning",
            f" (unfinished builds with other inputs/options: {', '.join(others)})" if others else "",
        )
    return _Staging(directory)


def _make_encoder(opts: BuildOptions, base: Manifest | None) -> Encoder:
    if base is None:
        return Encoder(model=opts.model, pooling=opts.pooling, backend=opts.backend, max_seq_length=opts.max_seq_length)
    return Encoder.from_manifest(base)


def run_build(opts: BuildOptions, incremental: bool = False) -> BuildResult:
    """``build`` (fresh version from the inputs) or ``add`` (current version + upserted inputs)."""
    started = time.perf_counter()
    root = IndexRoot(opts.output)
    with root.lock():
        base: tuple[Path, Manifest] | None = None
        if incremental:
            base_dir = root.resolve()
            base = (base_dir, Manifest.read(base_dir))
            if opts.model and opts.model != base[1].model:
                raise ModelMismatchError(f"--model {opts.model!r} differs from the index's model {base[1].model!r}")
            opts.index_type = opts.index_type if opts.index_type != "flat" else base[1].index_type
            opts.index_params = {**base[1].index_params, **opts.index_params}
        name = ("add-" if incremental else "build-") + _fingerprint(
            opts, base[1].version if base else None, "add" if incremental else "build"
        )
        encoder = _make_encoder(opts, base[1] if base else None)
        staging = _open_staging(root, name, opts.resume)
        if base is not None and not staging.state():
            with staging.conn:
                staging.conn.execute("ATTACH DATABASE ? AS base", (str(base[0] / DOCS_DB),))
                staging.conn.execute("INSERT INTO docs SELECT * FROM base.docs")
                start = staging.conn.execute("SELECT COALESCE(MAX(iid) + 1, 0) FROM docs").fetchone()[0]
                staging.set_state(next_iid=start, consumed=0, chunks=0, rejects=0)
            staging.conn.execute("DETACH DATABASE base")
        base_count = base[1].count if base else 0
        rows, n_rejects, resumed = _ingest(staging, encoder, opts, opts.on_duplicate)
        allowed = parse_max_rejects(opts.max_rejects, rows + n_rejects)
        if n_rejects > allowed:
            path = _write_rejects(staging, root, name)
            first = staging.conn.execute("SELECT source, line, reason FROM rejects ORDER BY n LIMIT 5").fetchall()
            staging.conn.close()
            shutil.rmtree(staging.dir)
            raise TooManyRejectsError(
                f"{n_rejects} of {rows + n_rejects} rows rejected (limit {allowed}, --max-rejects {opts.max_rejects}); "
                f"nothing was published (pass --max-rejects {n_rejects} to publish without them). First: "
                + "; ".join(f"{s}:{ln}: {r}" for s, ln, r in first)
                + f". All rejects: {path}",
                {"rejects": n_rejects, "rows": rows + n_rejects, "rejects_file": str(path)},
            )
        rejects_file = _write_rejects(staging, root, name)
        final_count = staging.conn.execute("SELECT COUNT(*) FROM docs").fetchone()[0]
        build_info = {
            "kind": "add" if incremental else "build",
            "inputs": [str(p) for p in opts.inputs],
            "rows_read": rows + n_rejects,
            "rejects": n_rejects,
            "truncated": encoder.stats.truncated,
            "split_sentences": opts.split_sentences,
            "encode_seconds": round(encoder.stats.seconds, 3),
            "encode_per_second": round(encoder.stats.per_second, 1),
        }
        manifest = _finalize(root, staging, _encoder_meta(encoder), opts, base, build_info)
        version = root.publish(staging.dir)
        pruned = root.prune(opts.keep) if opts.keep else []
        with contextlib.suppress(OSError):
            root.staging_dir.rmdir()
    return BuildResult(
        version=version,
        count=manifest.count,
        added=rows,
        rejects=n_rejects,
        rejects_file=rejects_file,
        truncated=encoder.stats.truncated,
        seconds=time.perf_counter() - started,
        resumed_rows=resumed,
        pruned=pruned,
        deleted=max(0, base_count + rows - final_count) if base else 0,
    )


def run_delete(index: Path, ids: list[str], keep: int | None = None, missing_ok: bool = False) -> BuildResult:
    """Publish a new version without the given user ids (ints and strings both match by text)."""
    started = time.perf_counter()
    root = IndexRoot(index)
    with root.lock():
        base_dir = root.resolve()
        manifest = Manifest.read(base_dir)
        staging = _open_staging(root, f"delete-{os.getpid()}", resume=False)
        with staging.conn:
            staging.conn.execute("ATTACH DATABASE ? AS base", (str(base_dir / DOCS_DB),))
            staging.conn.execute("INSERT INTO docs SELECT * FROM base.docs")
        staging.conn.execute("DETACH DATABASE base")
        found = {r[0] for r in _select_ext_ids(staging.conn, ids)}
        missing = [i for i in ids if i not in found]
        if missing and not missing_ok:
            staging.conn.close()
            shutil.rmtree(staging.dir)
            raise InvalidInputError(
                f"{len(missing)} id(s) not in the index: {', '.join(missing[:10])}; nothing was changed "
                "(pass --missing-ok to delete the others anyway)",
                {"missing": missing},
            )
        with staging.conn:
            for i in found:
                staging.conn.execute("DELETE FROM docs WHERE ext_id = ?", (i,))
        opts = BuildOptions(
            inputs=[], output=index, index_type=manifest.index_type, index_params=manifest.index_params, progress=False
        )
        meta = {
            "model": manifest.model,
            "fingerprint": manifest.model_fingerprint,
            "pooling": manifest.pooling,
            "backend": manifest.backend,
            "max_seq_length": manifest.max_seq_length,
            "dimension": manifest.dimension,
        }
        new = _finalize(root, staging, meta, opts, (base_dir, manifest), {"kind": "delete", "deleted": len(found)})
        version = root.publish(staging.dir)
        pruned = root.prune(keep) if keep else []
    return BuildResult(
        version=version, count=new.count, deleted=len(found), seconds=time.perf_counter() - started, pruned=pruned
    )


def _select_ext_ids(conn: sqlite3.Connection, ids: list[str]) -> Iterator[tuple[str]]:
    for start in range(0, len(ids), 900):
        part = ids[start : start + 900]
        yield from conn.execute(f"SELECT ext_id FROM docs WHERE ext_id IN ({','.join('?' * len(part))})", part)
