"""The service's writer (``--writable``): WAL group commit, the in-memory segment, refresh, flush and merge.

One :class:`LiveIndex` per writable service. It holds the index root's writer lock for its lifetime
(``indexer add/delete/compact`` then fail at once, naming this process), and:

1. **Acknowledges only what is durable.** Route handlers validate, encode (the batcher's low-priority
   lane: queries first) and hand a request to :meth:`submit`. One writer thread drains the queue: it
   checks id types against the current state, appends every waiting request to the WAL
   (:mod:`semsearch.index.wal`) with ONE fsync (group commit), applies them to memory, and only then
   resolves the requests (``wait: false``) or parks them until a refresh makes them visible
   (``wait: true``).
2. **Near-real-time reads.** Pending rows live in :class:`~semsearch.index.memory.MemoryRows`; disk rows
   they replace or delete are extra tombstones (looked up by id when the request is applied). The
   refresher thread publishes a new :class:`SearchIndex` (the disk version's segments through the extra
   tombstones, plus a snapshot of the memory rows) into the service's ``IndexHolder`` every
   ``refresh_interval_s`` when something changed, and at once when a ``wait: true`` request waits.
3. **Flush and merge in the background.** At ``flush_rows`` pending rows, ``flush_age_s`` and on graceful
   shutdown the flusher thread writes the pending rows and deletes through :class:`IndexWriter` as one
   published version (``build.wal_seq`` records the last sequence number in it), swaps the reader, marks
   the WAL flushed (``wal/flushed.json``) and drops the WAL files it no longer needs, then runs the merge
   policy (each merge a version, the reader swapped again). Searches never wait for any of this.

A request is atomic: its one WAL record is applied whole at acknowledgement and at replay, or not at all.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from app.errors import ApiError, OverloadedError, invalid
from app.metrics import Metrics
from app.services import IndexHolder, index_path
from app.settings import Settings
from semsearch.errors import InvalidInputError
from semsearch.ids import id_key
from semsearch.index import (
    MANIFEST,
    WAL_DIR,
    BaseVersion,
    EncoderMeta,
    IndexRoot,
    IndexWriter,
    MemoryRows,
    Record,
    SegmentView,
    WalRecord,
    WalUnavailableError,
    WriteAheadLog,
    aborting,
    disk_errors,
    maybe_merge,
)
from semsearch.models import Encoder
from semsearch.search import SearchIndex, SegmentPool, load_index
from semsearch.types import UserId

log = logging.getLogger(__name__)

SERVICE_HOLDER = "the semsearch service (--writable)"
MIN_REFRESH_GAP_S = 0.02  # a waiting `wait: true` request refreshes at once, but not more often than this
GROUP_MAX = 512  # requests committed with one fsync at most
PendingRow = tuple[int, UserId, str, dict[str, Any], np.ndarray]  # (memory iid, id, text, metadata, vector)


@dataclass
class WriteRequest:
    """One upsert or delete, validated and (for an upsert) encoded."""

    op: Literal["upsert", "delete"]
    ids: list[UserId]
    texts: list[str] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)
    vectors: np.ndarray | None = None
    wait: bool = True
    future: concurrent.futures.Future[dict[str, Any]] = field(default_factory=concurrent.futures.Future)
    seq: int = 0
    result: dict[str, Any] = field(default_factory=dict)


def wal_error(e: WalUnavailableError) -> ApiError:
    """507 when the disk is full, else 503; either way nothing of the request was acknowledged."""
    detail = e.detail if isinstance(e.detail, dict) else {}
    if detail.get("disk_full"):
        return ApiError(
            507, "insufficient_storage", f"{e.message}; the write was not applied (reads keep working)", detail
        )
    return ApiError(503, "wal_unavailable", f"{e.message}; the write was not applied (reads keep working)", detail)


class LiveIndex:
    """The writable side of one service; see the module doc."""

    def __init__(
        self,
        settings: Settings,
        encoder: Encoder,
        indexes: IndexHolder,
        pool: SegmentPool,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.encoder = encoder
        self.indexes = indexes
        self.pool = pool
        self.metrics = metrics
        self.root = IndexRoot(index_path(settings))
        self._lock_stack = contextlib.ExitStack()
        self._state = threading.RLock()
        self._publish_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._queue: queue.Queue[WriteRequest | None] = queue.Queue()
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._waiters: list[WriteRequest] = []
        self._refresh_wanted = threading.Event()
        self._flush_wanted = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.base: SearchIndex | None = None
        self.memory: MemoryRows | None = None
        self.deleted: dict[str, int] = {}  # id key -> seq of the delete, for ids deleted since the last flush
        self.extra_dead: dict[str, int] = {}  # id key -> iid of its disk row that pending writes replace
        self.applied_seq = 0
        self.visible_seq = 0
        self.flushed_seq = 0
        self.first_pending_at: float | None = None
        self.last_refresh = 0.0
        self.last_refresh_at: float | None = None  # wall clock of the last refresh (for /info and /metrics)
        self.last_flush: dict[str, Any] | None = None
        self.last_merge: dict[str, Any] | None = None
        # since start-up: requests and documents acknowledged, refreshes, flushes and merges (and failures)
        self.stats = dict.fromkeys(
            (
                "upsert_requests",
                "delete_requests",
                "upserted",
                "deleted",
                "refreshes",
                "flushes",
                "flush_failures",
                "merges",
                "merge_failures",
            ),
            0,
        )
        self.last_error: str | None = None
        self.wal = WriteAheadLog(self.root.path / WAL_DIR)

    # ------------------------------------------------------------------ start and stop

    @classmethod
    def open(
        cls, settings: Settings, encoder: Encoder, indexes: IndexHolder, pool: SegmentPool, metrics: Metrics | None
    ) -> LiveIndex:
        """Take the writer lock, replay the WAL into memory, serve the result, start the threads."""
        if (index_path(settings) / MANIFEST).is_file():
            raise InvalidInputError(
                f"--writable needs an index root (with `current`), not the version directory {settings.index}"
            )
        live = cls(settings, encoder, indexes, pool, metrics)
        try:
            live._lock_stack.enter_context(live.root.lock(holder=SERVICE_HOLDER))
            live._recover()
        except BaseException:
            live._release()
            raise
        live._start_threads()
        return live

    def _recover(self) -> None:
        if BaseVersion.read(self.root) is None:
            raise InvalidInputError(f"{self.root.path} has no published version to write to")
        current = self.root.resolve()
        self.base = load_index(current, self.encoder, self.pool)
        m = self.base.manifest
        if m.legacy:
            raise InvalidInputError(
                f"{self.root.path} is a format-1 index; run `python -m indexer upgrade --index {self.root.path}` "
                "before serving it --writable"
            )
        self.memory = MemoryRows(m.dimension, m.model_fingerprint)
        flushed = int(m.build.get("wal_seq", 0)) if isinstance(m.build, dict) else 0
        records = self.wal.recover(flushed)
        self.flushed_seq = max(flushed, self.wal.flushed_seq())
        self.applied_seq = self.visible_seq = self.flushed_seq
        for record in records:
            self._apply(record)
        if records:
            log.info(
                "write-ahead log: replayed %d record(s) (seq %d..%d) into memory",
                len(records),
                records[0].seq,
                records[-1].seq,
            )
        self.applied_seq = max(self.applied_seq, self.wal.next_seq - 1)
        self._publish()

    def _start_threads(self) -> None:
        for name, target in (
            ("semsearch-wal", self._writer_loop),
            ("semsearch-refresh", self._refresh_loop),
            ("semsearch-flush", self._flush_loop),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def close(self, flush: bool = True) -> None:
        """Graceful stop: finish what is queued, flush pending rows into a version, release the lock."""
        self._stopping.set()
        self._queue.put(None)
        self._refresh_wanted.set()
        self._flush_wanted.set()
        for t in self._threads:
            t.join()
        self._threads.clear()
        while True:  # anything still queued never reached the WAL: not acknowledged
            try:
                req = self._queue.get_nowait()
            except queue.Empty:
                break
            if req is not None and not req.future.done():
                req.future.set_exception(ApiError(503, "shutting_down", "the service is shutting down"))
        if flush:
            try:
                self.flush(merge=False)
            except Exception:  # the WAL still holds everything: the next start replays it
                log.exception("flush at shutdown failed; the write-ahead log keeps the pending writes")
        self._publish()
        for req in self._waiters:
            if not req.future.done():
                req.future.set_result(req.result)
        self._release()

    def _release(self) -> None:
        self.wal.close()
        if self.base is not None:
            self.base.close()
            self.base = None
        if self.memory is not None:
            self.memory.close()
        self._lock_stack.close()

    # ------------------------------------------------------------------ API (any thread)

    def admit(self) -> None:
        """Count a request against the write queue, or 429 when it is full (before any work)."""
        with self._in_flight_lock:
            if self._in_flight >= self.settings.max_write_queue:
                raise OverloadedError("write", self.settings.max_write_queue, self.settings.retry_after_s)
            self._in_flight += 1

    def done(self) -> None:
        with self._in_flight_lock:
            self._in_flight -= 1

    def submit(self, req: WriteRequest) -> concurrent.futures.Future[dict[str, Any]]:
        if self._stopping.is_set():
            raise ApiError(503, "shutting_down", "the service is shutting down")
        self._queue.put(req)
        return req.future

    def get(self, ext_id: UserId) -> tuple[UserId, str, dict[str, Any]] | None:
        """The acknowledged document of this id (real time: pending writes included), or None."""
        key = id_key(ext_id)
        with self._state:
            assert self.memory is not None and self.base is not None
            row = self.memory.get(key)
            if row is not None:
                return row
            if key in self.deleted:
                return None
            return document(self.base, key)

    @property
    def pending(self) -> int:
        return len(self.memory or ()) + len(self.deleted)

    def wal_bytes(self) -> int:
        """Bytes of the write-ahead log files on disk (what a restart would read)."""
        total = 0
        for path in self.wal.files():
            with contextlib.suppress(OSError):  # a file dropped by a concurrent flush
                total += path.stat().st_size
        return total

    def info(self) -> dict[str, Any]:
        """The ``writes`` section of ``/info``."""
        s = self.settings
        with self._state:
            state = {
                "pending_rows": len(self.memory or ()),
                "pending_deletes": len(self.deleted),
                "applied_seq": self.applied_seq,
                "visible_seq": self.visible_seq,
                "flushed_seq": self.flushed_seq,
            }
        return {
            "writable": True,
            **state,
            "wal_bytes": self.wal_bytes(),
            "wal_files": len(self.wal.files()),
            "queue": {"in_flight": self._in_flight, "max": s.max_write_queue},
            **self.stats,
            "last_refresh": _iso(self.last_refresh_at),
            "last_flush": self.last_flush,
            "last_merge": self.last_merge,
            "last_error": self.last_error,
            "refresh_interval_s": s.refresh_interval_s,
            "flush_rows": s.flush_rows,
            "flush_age_s": s.flush_age_s,
        }

    def bind_metrics(self, metrics: Metrics) -> None:
        """Report into ``metrics``: counters as things happen, the state gauges read at scrape time."""
        self.metrics = metrics
        metrics.pending_rows.set_function(lambda: float(self.pending))
        metrics.wal_bytes.set_function(lambda: float(self.wal_bytes()))
        metrics.last_refresh.set_function(lambda: self.last_refresh_at or 0.0)
        metrics.last_flush.set_function(lambda: float((self.last_flush or {}).get("at_s", 0.0)))

    # ------------------------------------------------------------------ writer thread

    def _writer_loop(self) -> None:
        while True:
            req = self._queue.get()
            if req is None:
                return
            group = [req]
            stop = False
            while len(group) < GROUP_MAX:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                group.append(more)
            try:
                self._commit_group(group)
            except Exception as e:  # never lose the thread; the group's requests get the error
                log.exception("write group failed")
                for r in group:
                    if not r.future.done():
                        r.future.set_exception(e)
            if stop:
                return

    def _commit_group(self, group: list[WriteRequest]) -> None:
        accepted: list[WriteRequest] = []
        with self._state:
            types: dict[str, bool] = {}  # id key -> is int, as this group leaves it
            next_seq = self.wal.next_seq
            for req in group:
                problem = self._type_problem(req, types) if req.op == "upsert" else None
                if problem is not None:
                    req.future.set_exception(problem)
                    continue
                req.seq = next_seq
                next_seq += 1
                accepted.append(req)
        if not accepted:
            return
        records = [WalRecord(r.seq, r.op, r.ids, r.texts, r.metadata, r.vectors) for r in accepted]
        started = time.perf_counter()
        try:
            self.wal.append(records)
        except WalUnavailableError as e:
            self.last_error = e.message
            error = wal_error(e)
            for r in accepted:
                r.future.set_exception(error)
            return
        if self.metrics is not None:
            self.metrics.wal_fsync_seconds.observe(time.perf_counter() - started)
        with self._state:
            for req, record in zip(accepted, records, strict=True):
                req.result = self._apply(record)
            if self.first_pending_at is None:
                self.first_pending_at = time.monotonic()
            pending = self.pending
        for req in accepted:
            if req.op == "upsert":
                self.stats["upsert_requests"] += 1
                self.stats["upserted"] += len(req.ids)
            else:
                self.stats["delete_requests"] += 1
                self.stats["deleted"] += int(req.result.get("deleted", 0))
            if self.metrics is not None:
                self.metrics.writes.labels(req.op).inc(len(req.ids))
        for req in accepted:
            if req.wait:
                with self._state:
                    self._waiters.append(req)
            else:
                req.future.set_result({**req.result, "visible": False})
        self._refresh_wanted.set()
        if pending >= self.settings.flush_rows:
            self._flush_wanted.set()

    def _type_problem(self, req: WriteRequest, types: dict[str, bool]) -> Exception | None:
        """A 422 when an upsert would change an existing id's type (``"3"`` replacing ``3``)."""
        for i, ext_id in enumerate(req.ids):
            key = id_key(ext_id)
            is_int = isinstance(ext_id, int)
            before = types.get(key)
            if before is None:
                before = self._live_type(key)
            if before is not None and before != is_int:
                was = "an integer" if before else "a string"
                now = "an integer" if is_int else "a string"
                return invalid(
                    ["body", "documents", str(i), "id"],
                    f"id {ext_id!r} is {now} here but {was} in the document it would replace; an id keeps its "
                    "type (nothing of this request was written)",
                )
        for ext_id in req.ids:
            types[id_key(ext_id)] = isinstance(ext_id, int)
        return None

    def _live_type(self, key: str) -> bool | None:
        assert self.memory is not None and self.base is not None
        kind = self.memory.id_type(key)
        if kind is not None:
            return kind == 1
        if key in self.deleted:
            return None
        doc = document(self.base, key)
        return None if doc is None else isinstance(doc[0], int)

    def _apply(self, record: WalRecord) -> dict[str, Any]:
        """Apply one logged request to memory (under the state lock); what it did."""
        assert self.memory is not None and self.base is not None
        keys = [id_key(i) for i in record.ids]
        fresh = [k for k in dict.fromkeys(keys) if k not in self.extra_dead and self.memory.iid(k) is None]
        fresh = [k for k in fresh if k not in self.deleted]
        on_disk = self.base.iids_for_ext_ids(fresh) if fresh else {}
        self.extra_dead.update(on_disk)
        self.applied_seq = max(self.applied_seq, record.seq)
        if record.op == "upsert":
            assert record.vectors is not None
            for ext_id, text, meta, vec in zip(record.ids, record.texts, record.metadata, record.vectors, strict=True):
                self.memory.upsert(ext_id, text, meta, vec)
                self.deleted.pop(id_key(ext_id), None)
            return {"upserted": len(record.ids), "seq": record.seq}
        missing: list[UserId] = []
        deleted = 0
        seen: set[str] = set()
        for ext_id, key in zip(record.ids, keys, strict=True):
            if key in seen:
                continue
            seen.add(key)
            existed = self.memory.remove(key) or (key not in self.deleted and key in self.extra_dead)
            self.deleted[key] = record.seq
            if existed:
                deleted += 1
            else:
                missing.append(ext_id)
        return {"deleted": deleted, "missing": missing, "seq": record.seq}

    # ------------------------------------------------------------------ refresh

    def _refresh_loop(self) -> None:
        interval = self.settings.refresh_interval_s
        while not self._stopping.is_set():
            self._refresh_wanted.wait(timeout=interval)
            self._refresh_wanted.clear()
            if self._stopping.is_set():
                return
            with self._state:
                dirty = self.applied_seq > self.visible_seq
                waiting = bool(self._waiters)
            if not dirty:
                continue
            since = time.monotonic() - self.last_refresh
            gap = MIN_REFRESH_GAP_S if waiting else interval
            if since < gap:
                time.sleep(gap - since)
            try:
                self._publish()
            except Exception as e:  # keep serving the last reader
                self.last_error = f"refresh failed: {e}"
                log.exception("refresh failed")

    def _publish(self) -> None:
        """Serve the disk version + a snapshot of the memory rows; release the requests it makes visible."""
        with self._publish_lock:
            with self._state:
                assert self.base is not None and self.memory is not None
                base = self.base
                snapshot = self.memory.snapshot()
                dead = np.unique(np.fromiter(self.extra_dead.values(), np.int64, len(self.extra_dead)))
                seq = self.applied_seq
            reader = nrt_reader(base, snapshot, dead, self.pool)
            self.indexes.swap(reader)
            self.last_refresh = time.monotonic()
            self.last_refresh_at = time.time()
            self.stats["refreshes"] += 1
            with self._state:
                self.visible_seq = max(self.visible_seq, seq)
                ready = [r for r in self._waiters if r.seq <= seq]
                self._waiters = [r for r in self._waiters if r.seq > seq]
            if self.metrics is not None:
                self.metrics.index_size.set(reader.count)
        for req in ready:
            if not req.future.done():
                req.future.set_result({**req.result, "visible": True})

    # ------------------------------------------------------------------ flush and merge

    def _flush_loop(self) -> None:
        age = self.settings.flush_age_s
        while not self._stopping.is_set():
            self._flush_wanted.wait(timeout=min(age, 1.0))
            self._flush_wanted.clear()
            if self._stopping.is_set():
                return
            with self._state:
                pending, since = self.pending, self.first_pending_at
            due = pending >= self.settings.flush_rows or (since is not None and time.monotonic() - since >= age)
            if not due:
                continue
            try:
                self.flush(merge=True)
            except Exception as e:
                self.last_error = f"flush failed: {e}"
                self.stats["flush_failures"] += 1
                if self.metrics is not None:
                    self.metrics.flushes.labels("failed").inc()
                log.exception("flush failed; pending writes stay in memory and in the write-ahead log")
                with self._state:  # the age trigger fires again (the rows trigger does anyway)
                    if self.pending and self.first_pending_at is None:
                        self.first_pending_at = time.monotonic()
                self._stopping.wait(1.0)

    def flush(self, merge: bool = True) -> str | None:
        """Write the pending rows and deletes as one published version; returns it (None: nothing pending)."""
        with self._flush_lock:
            with self._state:
                assert self.memory is not None
                if not self.pending and self.applied_seq <= self.flushed_seq:
                    return None
                seq = self.applied_seq
                rows = self.memory.rows()
                deletes = dict(self.deleted)
                self.first_pending_at = None
                self.wal.rotate()
            started = time.perf_counter()
            version = self._write_version(seq, rows, deletes)
            self._swap_base(rows, deletes, seq)
            self.wal.mark_flushed(seq)
            took = round(time.perf_counter() - started, 3)
            now = time.time()
            self.last_flush = {"version": version, "wal_seq": seq, "rows": len(rows), "deletes": len(deletes)}
            self.last_flush |= {"took_s": took, "at": _iso(now), "at_s": now}
            self.stats["flushes"] += 1
            if self.metrics is not None:
                self.metrics.flushes.labels("flushed").inc()
            log.info(
                "flushed %d row(s) and %d delete(s) (wal seq %d) as %s in %.2f s",
                len(rows),
                len(deletes),
                seq,
                version,
                took,
            )
            if merge:
                self._merge()
            return version

    def _merge(self) -> None:
        """Run the merge policy after a flush; a failed merge leaves the flushed version serving (and the
        flush acknowledged): it is logged and counted, and the next flush tries again."""
        started = time.perf_counter()
        try:
            versions = maybe_merge(self.root)
        except Exception as e:
            self.last_error = f"merge failed: {e}"
            self.stats["merge_failures"] += 1
            if self.metrics is not None:
                self.metrics.merges.labels("failed").inc()
            log.exception("merge after a flush failed; the flushed version keeps serving")
            return
        for merged in versions:
            log.info("merge policy published %s", merged)
        if versions:
            self._swap_base([], {}, None)
            self.stats["merges"] += len(versions)
            took = round(time.perf_counter() - started, 3)
            self.last_merge = {"versions": versions, "took_s": took, "at": _iso(time.time())}
            if self.metrics is not None:
                self.metrics.merges.labels("merged").inc(len(versions))

    def _write_version(
        self, seq: int, rows: Sequence[tuple[int, UserId, str, dict[str, Any], np.ndarray]], deletes: dict[str, int]
    ) -> str:
        base = BaseVersion.read(self.root)
        if base is None:
            raise InvalidInputError(f"{self.root.path} lost its current version")
        writer = IndexWriter(
            self.root,
            f"flush-{time.time_ns()}",
            EncoderMeta.recorded(base.manifest),
            base.index_request,
            base=base,
            kind="flush",  # never resumed (the WAL holds its rows): a killed flush's staging is removed
        )
        with disk_errors(self.root, writer), aborting(writer):
            if rows:
                records = [
                    Record(text, ext_id=ext_id, metadata=meta, source=f"wal:{seq}") for _, ext_id, text, meta, _ in rows
                ]
                vectors = np.stack([r[4] for r in rows]).astype(np.float32)
                writer.add_chunk(records, vectors, [], len(records), "keep-last")
                if writer.rejects:
                    raise InvalidInputError(
                        f"internal: the flush rejected {writer.rejects} row(s): {writer.reject_rows(3)}"
                    )
            upserted = {id_key(r[1]) for r in rows}
            doomed = [k for k in deletes if k not in upserted]
            if doomed:
                writer.delete(doomed)
            # deleting every document is a valid state of a writable index: publish it (zero live rows)
            build = {"kind": "flush", "wal_seq": seq, "rows": len(rows), "deletes": len(doomed)}
            manifest = writer.commit(build, allow_empty=True)
        return manifest.version

    def _swap_base(
        self,
        rows: Sequence[tuple[int, UserId, str, dict[str, Any], np.ndarray]],
        deletes: dict[str, int],
        seq: int | None,
    ) -> None:
        """Serve the newly published disk version; drop the memory rows it now holds (unless rewritten since)."""
        new_base = load_index(self.root.resolve(), self.encoder, self.pool)
        with self._publish_lock, self._state:
            assert self.memory is not None
            for iid, ext_id, *_ in rows:
                self.memory.remove_if(id_key(ext_id), iid)
            for key, at in deletes.items():
                if self.deleted.get(key) == at:
                    del self.deleted[key]
            old, self.base = self.base, new_base
            remaining = self.memory.keys() + list(self.deleted)
            self.extra_dead = new_base.iids_for_ext_ids(remaining) if remaining else {}
            if seq is not None:
                self.flushed_seq = seq
            if self.pending and self.first_pending_at is None:
                self.first_pending_at = time.monotonic()
        self._publish()
        if old is not None:
            old.close()


def _iso(at: float | None) -> str | None:
    return None if at is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def document(index: SearchIndex, key: str) -> tuple[UserId, str, dict[str, Any]] | None:
    """The live document of an id key in a loaded version, or None."""
    found = index.iids_for_ext_ids([key])
    if key not in found:
        return None
    doc = index.docs_for([found[key]]).get(found[key])
    return None if doc is None else (doc.id, doc.text, doc.metadata)


def nrt_reader(base: SearchIndex, memory: Any, extra_dead: np.ndarray, pool: SegmentPool) -> SearchIndex:
    """A reader over ``base``'s segments (each also through ``extra_dead``) plus the ``memory`` snapshot.

    It takes its own pool reference to every disk segment, so it outlives ``base``; closing it releases
    them and closes the memory snapshot."""
    sha = {e["name"]: e["sha256"] for e in base.manifest.segments}
    views: list[SegmentView] = []
    try:
        for v in base.views:
            seg = pool.acquire(v.segment.directory, sha[v.segment.name])
            mine = extra_dead[v.segment.contains(extra_dead)] if len(extra_dead) else extra_dead
            views.append(SegmentView(seg, np.union1d(v.dead, mine).astype(np.int64) if len(mine) else v.dead))
    except BaseException:
        for view in views:
            pool.release(view.segment)
        raise
    if memory is not None:
        views.append(SegmentView(memory, np.zeros(0, np.int64)))
    live = sum(v.live for v in views)
    manifest = dataclasses.replace(base.manifest, count=live)
    return SearchIndex(base.directory, manifest, views, pool)


__all__ = ["SERVICE_HOLDER", "LiveIndex", "WriteRequest", "document", "nrt_reader", "wal_error"]
