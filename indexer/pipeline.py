"""The batch indexing pipeline: stream rows -> encode in chunks (checkpointed) -> publish a version.

This module orchestrates: reading inputs, chunking, the reject policy, progress and ``--resume``.
The index format itself (staging, segments, tombstones, manifests, publishing) is written by the
core's :class:`semsearch.index.writer.IndexWriter`; every chunk is committed there as one unit, so
``--resume`` continues from the last committed chunk, and nothing becomes visible to readers until
the operation commits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from semsearch.errors import InvalidInputError, ModelMismatchError, SemsearchError, TooManyRejectsError
from semsearch.ids import UserId, id_key
from semsearch.index import (
    DEFAULT_SEGMENT_ROWS,
    BaseVersion,
    EncoderMeta,
    IndexRequest,
    IndexRoot,
    IndexWriter,
    Manifest,
    MergePolicy,
    OnDuplicate,
    WriteKind,
    aborting,
    disk_errors,
    force_merge,
    legacy_base_dir,
    upgrade,
)
from semsearch.ingest import (
    DEFAULT_MAX_CHARS,
    Chunker,
    Chunking,
    Reject,
    explode,
    passages,
    read_inputs,
    split_sentences,
)
from semsearch.models import Backend, Encoder, Pooling
from semsearch.types import Record

log = logging.getLogger(__name__)


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
    chunk_tokens: int | None = None  # passages (--chunk-tokens); add: the index's, checked against this
    chunk_overlap: int | None = None
    query_prompt: str | None = None  # None: the model folder's (build) or the index's (add)
    passage_prompt: str | None = None
    max_chars: int = DEFAULT_MAX_CHARS
    max_rejects: str = "1%"
    on_duplicate: OnDuplicate = "error"
    resume: bool = False
    keep: int | None = None
    chunk_size: int = 4096
    segment_rows: int = DEFAULT_SEGMENT_ROWS
    merge: bool = True
    progress: bool = True
    shards: int | None = None  # a fresh build's shard count (None: unsharded); add keeps the index's


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
    merged: list[str] = field(default_factory=list)  # versions published by the merge policy afterwards
    segments: int = 0
    tombstones: int = 0
    unchanged: bool = False  # nothing was published (delete --missing-ok found none of its ids)


def parse_max_rejects(value: str, total_rows: int) -> int:
    """``"1%"`` -> 1% of the rows read, rounded up (so a small file may skip one bad row); ``"25"`` -> 25."""
    v = value.strip()
    try:
        if v.endswith("%"):
            return math.ceil(float(v[:-1]) / 100.0 * total_rows - 1e-9)
        return int(v)
    except (ValueError, OverflowError) as e:
        raise InvalidInputError(f"--max-rejects must be a count like 25 or a share like 1%, got {value!r}") from e


def _fingerprint(opts: BuildOptions, base: str | None, kind: str) -> str:
    inputs = []
    for p in opts.inputs:
        try:
            st = p.stat()
        except FileNotFoundError as e:
            raise InvalidInputError(f"input file {p} does not exist") from e
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
        **({"chunk": [opts.chunk_tokens, opts.chunk_overlap]} if opts.chunk_tokens else {}),
        **({"prompts": [opts.query_prompt, opts.passage_prompt]} if opts.query_prompt or opts.passage_prompt else {}),
        "max_chars": opts.max_chars,
        "on_duplicate": opts.on_duplicate,
        "base": base,
        "chunk_size": opts.chunk_size,
        "segment_rows": opts.segment_rows,
        **({"shards": opts.shards} if opts.shards is not None else {}),
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


def _progress_bar(opts: BuildOptions, initial: int) -> Any:
    if not opts.progress:
        return None
    from tqdm.auto import tqdm

    total = None if opts.split_sentences or opts.chunk_tokens else _estimate_rows(opts.inputs)
    return tqdm(
        total=total, initial=initial, desc="indexing", unit="row", unit_scale=True, smoothing=0.05, mininterval=1.0
    )


def read_rows(opts: BuildOptions, first_iid: int, chunker: Chunker | None = None) -> Iterator[Record | Reject]:
    """Every input item in order, as the writer takes them (``first_iid``: :attr:`IndexWriter.first_iid`).

    A reader that fails (an :class:`InvalidInputError`, or anything else: a truncated ``.gz`` ends in
    ``EOFError``, which click would print as a bare "Aborted!") ends the run with one error naming the
    file and the last line read. With ``--split-sentences`` a document with an id gives sentences
    ``ID#n``; a document without one gives sentences with automatic ids (never colliding with a user's,
    see :class:`~semsearch.index.writer.IndexWriter`) and a ``doc_id`` that is a number unique in the index:
    ``first_iid`` plus the number of rows before its first sentence. Each operation's numbers lie in
    ``[first_iid, first_iid + rows)`` and the next operation starts after them, so no two documents ever
    share one, and ``--resume`` (reading the inputs again) gives the same. (It equals the first
    sentence's automatic id unless that had to skip an id a user's row holds.) With a ``chunker``
    (``--chunk-tokens``) documents become passages, with the same ids and doc ids as sentences."""
    next_iid = first_iid
    for path in opts.inputs:
        last = 0
        items = read_inputs([path], opts.text_field, opts.id_field, False, opts.max_chars)
        while True:
            try:
                item = next(items)
            except StopIteration:
                break
            except InvalidInputError:
                raise
            except (SemsearchError, MemoryError):
                raise
            except Exception as e:
                where = f"after line {last}" if last else "before its first row"
                raise InvalidInputError(
                    f"{path}: reading stopped {where}: {type(e).__name__}: {e} (is the file truncated or corrupt?)",
                    {"path": str(path), "line": last},
                ) from e
            last = _line_of(item) or last
            if isinstance(item, Reject):
                yield item
            elif chunker is not None:
                doc_id = str(item.ext_id) if item.ext_id is not None else str(next_iid)
                for passage in passages(item, doc_id, chunker.spans(item.text), item.ext_id is not None):
                    next_iid += 1
                    yield passage
            elif not opts.split_sentences:
                next_iid += 1
                yield item
            else:
                for sentence in _sentences(item, next_iid):
                    next_iid += 1
                    yield sentence


def _line_of(item: Record | Reject) -> int:
    if isinstance(item, Reject):
        return item.line
    line = (item.source or "").rpartition(":")[2]
    return int(line) if line.isdigit() else 0


def _sentences(doc: Record, doc_iid: int) -> Iterator[Record]:
    if doc.ext_id is not None:
        yield from explode(doc, 0)  # ids ID#n (the number is only used for documents without an id)
        return
    doc_id = str(doc_iid)
    for start, end in split_sentences(doc.text):
        yield Record(
            text=doc.text[start:end],
            ext_id=None,
            metadata=doc.metadata,
            doc_id=doc_id,
            start=start,
            end=end,
            source=doc.source,
        )


def _ingest(writer: IndexWriter, encoder: Encoder, opts: BuildOptions) -> tuple[int, int, int]:
    """Read, encode and commit all rows chunk by chunk; returns (rows read, rejects, resumed rows)."""
    resumed = writer.consumed
    if resumed:
        log.info("resuming: %d input rows already committed", resumed)
    bar = _progress_bar(opts, resumed)
    chunking = chunking_of(writer.encoder)
    chunker = Chunker(chunking, encoder.token_lengths, encoder.token_offsets) if chunking else None
    rows = read_rows(opts, writer.first_iid, chunker)
    # an add of passages replaces each document's passages as a whole: remember the ids written per document
    replaced: dict[str, set[str]] | None = {} if chunker is not None and writer.base is not None else None

    def note(item: Record | Reject) -> None:
        if replaced is not None and isinstance(item, Record) and item.ext_id is not None and item.doc_id:
            replaced.setdefault(item.doc_id, set()).add(str(item.ext_id))

    for _ in range(resumed):  # fast-forward past committed rows (reading is cheap, encoding is not)
        skipped = next(rows, None)
        if skipped is None:
            break
        note(skipped)
    pending: list[Record] = []
    pending_rejects: list[Reject] = []
    n_items = 0

    def commit() -> None:
        nonlocal n_items
        vectors = encoder.encode([r.text for r in pending], batch_size=opts.batch_size, prompt=encoder.passage_prompt)
        writer.add_chunk(pending, vectors, pending_rejects, n_items, opts.on_duplicate)
        if bar is not None:
            bar.update(n_items)
            bar.set_postfix(rejects=writer.rejects, truncated=encoder.stats.truncated, refresh=False)
        pending.clear()
        pending_rejects.clear()
        n_items = 0

    try:
        for item in rows:
            note(item)
            n_items += 1
            if isinstance(item, Reject):
                pending_rejects.append(item)
            else:
                pending.append(item)
            if len(pending) >= opts.chunk_size:
                commit()
        if n_items:
            commit()
    finally:
        if bar is not None:
            bar.close()
    if replaced:
        _drop_stale_passages(writer, replaced)
    return writer.consumed - writer.rejects, writer.rejects, resumed


def _drop_stale_passages(writer: IndexWriter, replaced: dict[str, set[str]]) -> None:
    """Tombstone the passages of re-added documents that this add did not write again (a document that
    now has fewer passages than before must not keep its old tail): upserting a document replaces all
    of its passages."""
    base = writer.base
    assert base is not None
    doc_ids = sorted(replaced)
    stale: list[str] = []
    for ref in base.segments:
        conn = base.conn(ref)
        for start in range(0, len(doc_ids), 900):
            part = doc_ids[start : start + 900]
            marks = ",".join("?" * len(part))
            sql = f"SELECT ext_id, doc_id FROM docs WHERE doc_id IN ({marks}) AND id_is_int = 0"
            stale += [e for e, d in conn.execute(sql, part) if e not in replaced[d]]
    if stale:
        writer.delete(stale)  # ids already deleted are simply not found
        log.info("%d passages of re-added documents are gone from them: deleted", len(stale))


def _write_rejects(writer: IndexWriter, root: IndexRoot, name: str) -> Path | None:
    rows = writer.reject_rows()
    if not rows:
        return None
    root.rejects_dir.mkdir(parents=True, exist_ok=True)
    path = root.rejects_dir / f"{name}.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for source, line, reason, raw in rows:
            fh.write(json.dumps({"source": source, "line": line, "reason": reason, "raw": raw}, ensure_ascii=False))
            fh.write("\n")
    return path


def _check_rejects(writer: IndexWriter, root: IndexRoot, opts: BuildOptions, rows: int, n_rejects: int) -> None:
    allowed = parse_max_rejects(opts.max_rejects, rows + n_rejects)
    if n_rejects <= allowed:
        return
    path = _write_rejects(writer, root, writer.op)
    first = writer.reject_rows(limit=5)
    writer.abort()
    raise TooManyRejectsError(
        f"{n_rejects} of {rows + n_rejects} rows rejected (limit {allowed}, --max-rejects {opts.max_rejects}); "
        f"nothing was published (pass --max-rejects {n_rejects} to publish without them). First: "
        + "; ".join(f"{s}:{ln}: {r}" for s, ln, r, _ in first)
        + f". All rejects: {path}",
        {"rejects": n_rejects, "rows": rows + n_rejects, "rejects_file": str(path)},
    )


def _publish(
    writer: IndexWriter,
    root: IndexRoot,
    opts: BuildOptions,
    kind: str,
    rows: int,
    n_rejects: int,
    truncated: int,
    engine: dict[str, Any] | None = None,
    encoding: dict[str, Any] | None = None,
) -> BuildResult:
    """After the rows are in: refuse too many rejects, keep the rejects file, commit the version with
    its build record (``engine`` and ``encoding``: what the engine adds to it)."""
    _check_rejects(writer, root, opts, rows, n_rejects)
    rejects_file = _write_rejects(writer, root, writer.op)
    build_info = {
        "kind": kind,
        **(engine or {}),
        "inputs": [str(p) for p in opts.inputs],
        "rows_read": rows + n_rejects,
        "rejects": n_rejects,
        "truncated": truncated,
        "split_sentences": opts.split_sentences,
        **({"chunk_tokens": opts.chunk_tokens, "chunk_overlap": opts.chunk_overlap or 0} if opts.chunk_tokens else {}),
        **(encoding or {}),
    }
    manifest = writer.commit(build_info)
    return BuildResult(
        version=manifest.version,
        count=manifest.count,
        added=rows,
        rejects=n_rejects,
        rejects_file=rejects_file,
        truncated=truncated,
    )


def _base_for_write(root: IndexRoot) -> BaseVersion | None:
    """The current version to write on top of (a format-1 version is upgraded first, by hard links)."""
    if legacy_base_dir(root) is not None:
        log.info("upgrading %s to index format 2 (one segment, no copy)", root.path)
        upgrade(root)
    return BaseVersion.read(root)


def _existing_base(root: IndexRoot) -> BaseVersion:
    """The current version for an operation that needs one (no index: the "no published index" error)."""
    base = _base_for_write(root)
    if base is None:
        root.resolve()  # raises IndexNotFoundError with the command to build one
        raise AssertionError("unreachable: resolve() raises without a current version")
    return base


def _finish(root: IndexRoot, opts_keep: int | None, writer: IndexWriter | None, result: BuildResult) -> BuildResult:
    """After a publish: the writer's merge policy when given (each merge is its own published version),
    then pruning."""
    if writer is not None:
        result.merged = writer.maybe_merge()
    result.pruned = root.prune(opts_keep) if opts_keep else []
    final = Manifest.read(root.resolve())
    result.version = final.version
    result.segments = len(final.segments)
    result.tombstones = final.tombstones
    return result


def run_build(opts: BuildOptions, incremental: bool = False) -> BuildResult:
    """``build`` (fresh version from the inputs) or ``add`` (current version + upserted inputs)."""
    started = time.perf_counter()
    root = IndexRoot(opts.output)
    root.check_writable("--index" if incremental else "--output")
    with root.lock(), disk_errors(root):
        base = _base_for_write(root) if incremental else None
        if incremental and base is None:
            root.resolve()  # raises the "no published index" error
        if base is not None:
            bm = base.manifest
            if opts.model and opts.model != bm.model:
                raise ModelMismatchError(f"--model {opts.model!r} differs from the index's model {bm.model!r}")
            request = base.index_request
            opts.index_type = request.type
            opts.index_params = {**request.params, **opts.index_params}
        kind: WriteKind = "add" if incremental else "build"
        name = f"{kind}-" + _fingerprint(opts, base.manifest.version if base else None, kind)
        encoder = _make_encoder(opts, base.manifest if base else None)
        meta = replace(encoder_meta(encoder), **_text_settings(opts, encoder, base.manifest if base else None))
        writer = IndexWriter(
            root,
            name,
            meta,
            IndexRequest(opts.index_type, opts.index_params),
            resume=opts.resume,
            segment_rows=opts.segment_rows,
            base=base,
            shards=None if incremental else opts.shards,
            kind=kind,
        )
        with disk_errors(root, writer), aborting(writer, resumable=True):
            rows, n_rejects, resumed = _ingest(writer, encoder, opts)
            encoding = {
                "encode_seconds": round(encoder.stats.seconds, 3),
                "encode_per_second": round(encoder.stats.per_second, 1),
            }
            base_count = base.manifest.count if base else 0
            result = _publish(writer, root, opts, kind, rows, n_rejects, encoder.stats.truncated, encoding=encoding)
        result.resumed_rows = resumed
        result.deleted = max(0, base_count + rows - result.count) if base else 0
        _finish(root, opts.keep, writer if opts.merge and incremental else None, result)
    result.seconds = time.perf_counter() - started
    return result


def encoder_meta(encoder: Encoder) -> EncoderMeta:
    """What an index records of its encoder (:class:`~semsearch.index.EncoderMeta`, as every manifest carries it)."""
    assert encoder.max_seq_length is not None  # set once the model is loaded
    return EncoderMeta(
        model=encoder.name,
        fingerprint=encoder.fingerprint,
        pooling=encoder.pooling,
        backend=encoder.backend,
        max_seq_length=encoder.max_seq_length,
        dimension=encoder.dim,
    )


def _make_encoder(opts: BuildOptions, base: Manifest | None) -> Encoder:
    if base is None:
        return Encoder(
            model=opts.model,
            pooling=opts.pooling,
            backend=opts.backend,
            max_seq_length=opts.max_seq_length,
            query_prompt=opts.query_prompt,
            passage_prompt=opts.passage_prompt,
        )
    return Encoder.from_manifest(base)


def chunking_of(meta: EncoderMeta) -> Chunking | None:
    """The chunking an index (its manifest's encoder record) applies, if any."""
    return Chunking.from_dict(meta.chunking) if meta.chunking else None


def _text_settings(opts: BuildOptions, encoder: Encoder, base: Manifest | None) -> dict[str, Any]:
    """The manifest's ``chunking`` and ``prompts``: from the flags for a build; for an add the index's,
    and flags that contradict them are an error (an index holds one kind of passage)."""
    if opts.chunk_overlap is not None and not opts.chunk_tokens and not (base and base.chunking):
        raise InvalidInputError("--chunk-overlap needs --chunk-tokens")
    if opts.chunk_tokens and opts.split_sentences:
        raise InvalidInputError("--chunk-tokens and --split-sentences exclude each other: passages are whole sentences")
    out: dict[str, Any] = {}
    if base is None:
        if opts.chunk_tokens:
            chunking = Chunking(opts.chunk_tokens, opts.chunk_overlap or 0)
            limit = int(encoder.max_seq_length or 512)
            if chunking.tokens > limit:
                raise InvalidInputError(
                    f"--chunk-tokens {chunking.tokens} is more than the model reads ({limit} tokens, "
                    "--max-seq-length): passages would be truncated"
                )
            out["chunking"] = chunking.as_dict()
        prompts = {"query": encoder.query_prompt or "", "passage": encoder.passage_prompt or ""}
        if any(prompts.values()):
            out["prompts"] = prompts
        return out
    if opts.query_prompt is not None or opts.passage_prompt is not None:
        have = base.prompts or {}
        for name, given in (("query", opts.query_prompt), ("passage", opts.passage_prompt)):
            if given is not None and given != have.get(name, ""):
                raise InvalidInputError(
                    f"--{name}-prompt {given!r} differs from the index's {name} prompt {have.get(name, '')!r}; "
                    "an index has one prompt (rebuild to change it)"
                )
    if base.chunking:
        chunking = Chunking.from_dict(base.chunking)
        if opts.split_sentences:
            raise InvalidInputError(
                f"the index cuts documents into passages (--chunk-tokens {chunking.tokens}); --split-sentences "
                "does not apply to it"
            )
        if (opts.chunk_tokens and opts.chunk_tokens != chunking.tokens) or (
            opts.chunk_overlap is not None and opts.chunk_overlap != chunking.overlap
        ):
            raise InvalidInputError(
                f"--chunk-tokens {opts.chunk_tokens} --chunk-overlap {opts.chunk_overlap} differ from the index's "
                f"chunking ({chunking.tokens} tokens, {chunking.overlap} sentences of overlap); "
                "add applies the index's own (leave the flags out)"
            )
    elif opts.chunk_tokens:
        raise InvalidInputError(
            "the index was built without --chunk-tokens; add cannot cut passages into it (rebuild with --chunk-tokens)"
        )
    return {key: value for key in ("chunking", "prompts") if (value := getattr(base, key))}


def run_delete(
    index: Path, ids: Sequence[UserId], keep: int | None = None, missing_ok: bool = False, merge: bool = True
) -> BuildResult:
    """Publish a new version without the given ids, matched exactly (:func:`semsearch.ids.id_key`: ``1``
    and ``"1"`` are one id, ``" 1"`` another): it writes tombstones only. No ids, or none found (with
    ``missing_ok``), publishes nothing and raises :class:`InvalidInputError`."""
    if not ids:
        raise InvalidInputError("no ids to delete; nothing was changed")
    started = time.perf_counter()
    root = IndexRoot(index)
    with root.lock(), disk_errors(root):
        base = _existing_base(root)
        writer = IndexWriter(
            root, f"delete-{time.time_ns()}", base.encoder, base.index_request, base=base, kind="delete"
        )
        with disk_errors(root, writer), aborting(writer):
            missing = writer.delete(ids)
            if missing and not missing_ok:
                raise InvalidInputError(
                    f"{len(missing)} id(s) not in the index: {', '.join(repr(i) for i in missing[:10])}"
                    f"{', ...' if len(missing) > 10 else ''}; nothing was changed "
                    "(pass --missing-ok to delete the others anyway)",
                    {"missing": missing},
                )
            found = len({id_key(i) for i in ids}) - len({id_key(i) for i in missing})
            if not found:  # --missing-ok and none found: nothing to publish (no empty new version)
                writer.abort()
                result = BuildResult(version=base.manifest.version, count=base.manifest.count, unchanged=True)
            else:
                manifest = writer.commit({"kind": "delete", "deleted": found})
                result = BuildResult(version=manifest.version, count=manifest.count, deleted=found)
        if not result.unchanged:
            _finish(root, keep, writer if merge else None, result)
    result.seconds = time.perf_counter() - started
    return result


def run_compact(
    index: Path, keep: int | None = None, max_segment_rows: int = MergePolicy.max_segment_rows
) -> BuildResult:
    """Drop all tombstoned rows and merge the segments of each shard into as few as the cap allows
    (``MergePolicy.max_segment_rows``: one segment below it), published as one version."""
    started = time.perf_counter()
    policy = MergePolicy(max_segment_rows=max_segment_rows)
    root = IndexRoot(index)
    with root.lock(), disk_errors(root):
        base = _existing_base(root)
        before = base.manifest
        base.close()
        manifest = force_merge(root, policy)
        if manifest is None:
            result = BuildResult(version=before.version, count=before.count)
        else:
            result = BuildResult(version=manifest.version, count=manifest.count, deleted=before.tombstones)
        _finish(root, keep, None, result)
    result.seconds = time.perf_counter() - started
    return result


def run_upgrade(index: Path) -> BuildResult:
    """Convert a format-1 index in place (its current version becomes one segment; no copy)."""
    started = time.perf_counter()
    root = IndexRoot(index)
    with root.lock(), disk_errors(root):
        manifest = upgrade(root) or Manifest.read(root.resolve())
    return BuildResult(version=manifest.version, count=manifest.count, seconds=time.perf_counter() - started)
