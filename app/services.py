"""What the service serves: the encoder, the current index version (swappable) and the optional reranker.

Loop-agnostic and HTTP-free; :meth:`Services.load` is the whole startup check: the index loads and
passes its quick integrity checks, the encoder is the one recorded in the manifest (same fingerprint
and pooling, ``check_encoder``), and the reranker, when configured, loads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.settings import Settings
from semsearch.errors import SemsearchError
from semsearch.index import Manifest, resolve_version_dir
from semsearch.models import Encoder, QueryCache, Reranker, prompts_of
from semsearch.search import SearchIndex, SegmentPool, load_index

if TYPE_CHECKING:
    from app.writes import LiveIndex

log = logging.getLogger(__name__)


class _Served:
    """One loaded version and how many batches are using it."""

    __slots__ = ("index", "retired", "users")

    def __init__(self, index: SearchIndex) -> None:
        self.index = index
        self.users = 0
        self.retired = False


class IndexHolder:
    """The current :class:`SearchIndex`, swapped atomically on reload.

    Users borrow the version that is current when they start (:meth:`use`) and finish on it even
    if a reload swaps in another; a replaced version is closed when its last user returns it.
    """

    def __init__(self, index: SearchIndex) -> None:
        self._lock = threading.Lock()
        self._served = _Served(index)

    @property
    def current(self) -> SearchIndex:
        """The current version, for metadata only (searches go through :meth:`use`)."""
        return self._served.index

    @contextmanager
    def use(self) -> Iterator[SearchIndex]:
        with self._lock:
            served = self._served
            served.users += 1
        try:
            yield served.index
        finally:
            with self._lock:
                served.users -= 1
                close = served.retired and served.users == 0
            if close:
                _close(served.index)

    def swap(self, index: SearchIndex) -> SearchIndex:
        """Make ``index`` current; returns the previous version (closed once unused)."""
        with self._lock:
            old = self._served
            self._served = _Served(index)
            old.retired = True
            close = old.users == 0
        if close:
            _close(old.index)
        return old.index

    def close(self) -> None:
        with self._lock:
            self._served.retired = True
            close = self._served.users == 0
        if close:
            _close(self._served.index)


def _close(index: SearchIndex) -> None:
    log.debug("closing index version %s", index.directory)
    index.close()


def version_name(index: SearchIndex) -> str:
    """The version directory's name (what ``current`` points at), e.g. ``v000002``."""
    return index.directory.name


def set_threads(n: int) -> None:
    """Intra-op threads of FAISS (OpenMP) and, once a torch model is loaded, torch for this process
    (torch is not imported for it: the ONNX backends do not need it, and importing it costs seconds)."""
    import sys

    import faiss

    faiss.omp_set_num_threads(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


ARENA_KEEP_TOKENS = 1024  # ~32 queries of 30 tokens keep onnxruntime's arena; larger batches free theirs
RERANK_ARENA_KEEP_TOKENS = 4096  # reranker runs of 32 pairs of up to 128 tokens keep it; longer ones free theirs


def index_path(settings: Settings) -> Path:
    """The served index (``--index``; a collection's settings under ``--data`` carry their own)."""
    if settings.index is None:
        raise SemsearchError("no index: this settings object serves --data collections")
    return settings.index


def encoder_key(settings: Settings, m: Manifest) -> tuple[str, str, str]:
    """What identifies the encoder a collection needs: (model fingerprint, pooling, backend). Collections with
    the same key share one :class:`Encoder` and one micro-batcher."""
    return (m.model_fingerprint or m.model, m.pooling, settings.backend or m.backend)


def encoder_for(settings: Settings) -> Encoder:
    """The encoder the index at ``settings.index`` records (model/backend overridable by the settings)."""
    m = Manifest.read(resolve_version_dir(index_path(settings)))
    encoder = Encoder(
        model=settings.model or m.model,
        pooling=m.pooling,  # type: ignore[arg-type]
        backend=settings.backend or m.backend,  # type: ignore[arg-type]
        max_seq_length=m.max_seq_length,
        num_threads=settings.threads,
        spinning=settings.onnx_spinning,
        arena_keep_tokens=ARENA_KEEP_TOKENS,
        **prompts_of(m),
    )
    encoder.cache = QueryCache(settings.query_cache) if settings.query_cache else None
    return encoder


def reranker_for(settings: Settings) -> Reranker | None:
    """The configured cross-encoder (``None`` without ``--reranker``), on the service's threads."""
    if not settings.reranker:
        return None
    return Reranker(
        settings.reranker,
        backend=settings.reranker_backend,
        retrieval_weight=settings.retrieval_weight,
        backend_options={
            "num_threads": settings.threads,
            "spinning": settings.onnx_spinning,
            "arena_keep_tokens": RERANK_ARENA_KEEP_TOKENS,
        },
    )


def warm_up(settings: Settings, encoder: Encoder, reranker: Reranker | None) -> None:
    """Thread settings again (a torch model may have been loaded now), then the slow first forward passes."""
    set_threads(settings.threads)
    encoder.encode(["warm-up"])
    if reranker is not None:
        reranker.score("warm-up", ["warm-up"])


def start_reranker(settings: Settings, encoder: Encoder, index: Any) -> Reranker | None:
    """The configured reranker, warmed up with the encoder; ``index`` is closed when either fails
    (startup leaves nothing half-started)."""
    try:
        reranker = reranker_for(settings)
        warm_up(settings, encoder, reranker)
    except Exception:
        index.close()
        raise
    return reranker


@dataclass
class Services:
    """The loaded encoder, index and reranker of one service instance."""

    encoder: Encoder
    indexes: IndexHolder
    reranker: Reranker | None
    pool: SegmentPool
    writes: LiveIndex | None = field(default=None, init=False)  # --writable: the service's writer (app.writes)

    @classmethod
    def load(cls, settings: Settings, *, shared: tuple[Encoder, Reranker | None] | None = None) -> Services:
        """Load everything or raise the core error that says why not (nothing half-started).

        A collection of ``--data`` passes ``shared``: the (warm) encoder it shares with the collections of
        the same model, pooling and backend, and the service's reranker; by default both are loaded here."""
        set_threads(settings.threads)
        encoder = shared[0] if shared is not None else encoder_for(settings)
        pool = SegmentPool()
        index = load_index(index_path(settings), encoder, pool)
        m = index.manifest
        reranker = shared[1] if shared is not None else start_reranker(settings, encoder, index)
        holder = IndexHolder(index)
        writes = None
        if settings.writable:
            from app.writes import LiveIndex

            try:  # the writer lock, then the write-ahead log replayed into memory: before the port is bound
                writes = LiveIndex.open(settings, encoder, holder, pool, None)
            except BaseException:
                holder.close()
                raise
        log.info(
            "serving index %s (%s, %d sentences in %d segment(s)) with %s (pooling %s, backend %s), "
            "%d threads, reranker %s",
            index.directory,
            m.version,
            m.count,
            len(index.segments),
            encoder.name,
            encoder.pooling,
            encoder.backend,
            settings.threads,
            settings.reranker or "none",
        )
        services = cls(encoder, holder, reranker, pool)
        services.writes = writes
        return services

    def load_version(self, path: Path) -> SearchIndex:
        """Load and check another version of the served index (hot reload; sharded services override)."""
        return load_index(path, self.encoder, self.pool)

    def close(self) -> None:
        if self.writes is not None:  # flushes what is pending, then releases the writer lock
            self.writes.close()
            self.writes = None
        self.indexes.close()
