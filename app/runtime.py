"""The running service: loaded services plus the event-loop side (batcher, reranker worker, reloader)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from app.batcher import MicroBatcher
from app.metrics import Metrics
from app.reload import Reloader
from app.rerank_worker import RerankRunner
from app.services import Services, index_path
from app.settings import Settings

if TYPE_CHECKING:
    from app.catalog import Catalog


@dataclass
class Runtime:
    """Everything a request handler needs, on ``app.state.runtime`` while the app is up."""

    settings: Settings
    metrics: Metrics
    services: Services
    batcher: MicroBatcher
    reranking: RerankRunner
    reloader: Reloader
    started_at: float = field(default_factory=time.time)
    ready: bool = False
    catalog: Catalog | None = None  # every collection served (app.catalog); set once started
    collection: str | None = None  # the collection this runtime serves (None: the --data process itself)

    @classmethod
    def start(cls, settings: Settings, services: Services, metrics: Metrics) -> Runtime:
        """Wire the loaded services to the running event loop and start the background tasks."""
        batcher = MicroBatcher(
            services.encoder,
            services.indexes,
            metrics,
            window_s=settings.batch_window_ms / 1000.0,
            max_batch=settings.max_batch,
            max_queue=settings.max_queue,
            retry_after_s=settings.retry_after_s,
            max_batch_tokens=settings.max_batch_tokens,
            write_batch_tokens=settings.write_batch_tokens,
        )
        reranking = RerankRunner(
            services.reranker,
            metrics,
            max_queue=settings.max_queue,
            retry_after_s=settings.retry_after_s,
            max_batch_tokens=settings.max_batch_tokens,
        )
        reloader = Reloader(index_path(settings), services, metrics)
        if services.writes is not None:  # the service is the index's writer: its own versions are served
            reloader.root = None
            services.writes.bind_metrics(metrics)
        batcher.start()
        reloader.start_polling(settings.reload_poll_s)
        metrics.index_size.set(services.indexes.current.count)
        if services.encoder.cache is not None:
            from app.metrics import QueryCacheCollector

            metrics.registry.register(QueryCacheCollector(services.encoder.cache))
        runtime = cls(settings, metrics, services, batcher, reranking, reloader, ready=True)
        from app.catalog import Catalog

        Catalog.single(runtime)
        return runtime

    @classmethod
    def start_data(cls, settings: Settings, metrics: Metrics, reranker: Any) -> Runtime:
        """``--data``: the process runtime over the catalog of collections (none loaded yet). It has no index
        of its own: every route that reads ``services``, ``batcher`` or ``reloader`` resolves a collection
        first (:func:`app.deps.use_collection`), whose runtime has them."""
        from app.catalog import Catalog

        reranking = RerankRunner(
            reranker,
            metrics,
            max_queue=settings.max_queue,
            retry_after_s=settings.retry_after_s,
            max_batch_tokens=settings.max_batch_tokens,
        )
        catalog = Catalog.of_data(settings, metrics, reranking)
        none = cast(Any, None)
        return cls(settings, metrics, none, none, reranking, none, ready=True, catalog=catalog)

    async def stop(self) -> None:
        self.ready = False
        if self.collection is None and self.catalog is not None:  # --data
            await self.catalog.stop()
            return
        await self.reloader.stop()
        await self.batcher.stop()
        await self.reranking.stop()
        self.services.close()
