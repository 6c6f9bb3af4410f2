"""Prometheus metrics: one ``CollectorRegistry`` per app (tests run several apps in one process)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The service's metrics, registered in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "semsearch_http_requests_total",
            "HTTP requests by route template, method and status.",
            ("method", "route", "status"),
            registry=r,
        )
        self.latency = Histogram(
            "semsearch_http_request_duration_seconds",
            "HTTP request latency by route template, method and status.",
            ("method", "route", "status"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.encode_batch_size = Histogram(
            "semsearch_encode_batch_size",
            "Texts per Encoder.encode call (micro-batch size).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.encode_seconds = Histogram(
            "semsearch_encode_batch_seconds",
            "Time of one micro-batch: encode plus search.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "semsearch_queue_depth",
            "Requests waiting for the encoder worker.",
            registry=r,
        )
        self.rerank_in_flight = Gauge(
            "semsearch_rerank_in_flight",
            "Rerank requests queued or running.",
            registry=r,
        )
        self.rerank_seconds = Histogram(
            "semsearch_rerank_seconds",
            "Cross-encoder scoring time per request.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.index_size = Gauge("semsearch_index_size", "Sentences in the served index version.", registry=r)
        self.writes = Counter(
            "semsearch_writes_total", "Documents upserted or ids deleted (acknowledged), by op.", ("op",), registry=r
        )
        self.wal_fsync_seconds = Histogram(
            "semsearch_wal_commit_seconds",
            "Write-ahead log group commit: append + one fsync.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pending_rows = Gauge(
            "semsearch_pending_writes", "Upserted rows and deletes in memory, not yet flushed.", registry=r
        )
        self.flushes = Counter(
            "semsearch_flushes_total", "Flushes of pending writes to a segment, by outcome.", ("outcome",), registry=r
        )
        self.merges = Counter(
            "semsearch_merges_total",
            "Merge-policy versions published after flushes (merged), or merge runs that failed (failed).",
            ("outcome",),
            registry=r,
        )
        self.wal_bytes = Gauge("semsearch_wal_bytes", "Bytes of write-ahead log files on disk.", registry=r)
        self.last_refresh = Gauge(
            "semsearch_last_refresh_timestamp_seconds",
            "Unix time of the last refresh that made acknowledged writes searchable (0: none yet).",
            registry=r,
        )
        self.last_flush = Gauge(
            "semsearch_last_flush_timestamp_seconds",
            "Unix time of the last flush of pending writes to a published version (0: none yet).",
            registry=r,
        )
        self.collection_requests = Counter(
            "semsearch_collection_requests_total",
            "Requests on a collection's routes (prefixed, or unprefixed on the default collection).",
            ("collection",),
            registry=r,
        )
        self.collection_loaded = Gauge(
            "semsearch_collection_loaded",
            "1 while the collection is loaded, 0 once unloaded.",
            ("collection",),
            registry=r,
        )
        self.collection_size = Gauge(
            "semsearch_collection_size", "Sentences in the collection's loaded version.", ("collection",), registry=r
        )
        self.reloads = Counter(
            "semsearch_reloads_total",
            "Index reload attempts by outcome (reloaded, failed).",
            ("outcome",),
            registry=r,
        )


class QueryCacheCollector:
    """The query-embedding cache's hits, misses and size, read at scrape time."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        c = self.cache
        yield CounterMetricFamily("semsearch_query_cache_hits", "Query vectors served from the cache.", c.stats.hits)
        yield CounterMetricFamily(
            "semsearch_query_cache_misses", "Query vectors the cache did not hold.", c.stats.misses
        )
        yield GaugeMetricFamily("semsearch_query_cache_entries", "Query vectors in the cache.", len(c))
        yield GaugeMetricFamily("semsearch_query_cache_bytes", "Bytes the cached query vectors hold.", c.bytes)


class MetricsMiddleware:
    """Counts and times every HTTP request under its route *template* (``/search``, never raw paths)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = (
                getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"
            )  # {id}, not {id:path}
            labels = (scope["method"], template, str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
