"""The running service: loaded services plus the event-loop side (batcher, reranker worker, reloader)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from app.batcher import MicroBatcher
from app.metrics import Metrics
from app.reload import Reloader
from app.rerank_worker import RerankRunner
from app.services import Services
from app.settings import Settings


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
        reloader = Reloader(settings.index, services, metrics)
        if services.writes is not None:  # the service is the index's writer: its own versions are served
            reloader.root = None
            services.writes.bind_metrics(metrics)
        batcher.start()
        reloader.start_polling(settings.reload_poll_s)
        metrics.index_size.set(services.indexes.current.count)
        if services.encoder.cache is not None:
            from app.metrics import QueryCacheCollector

            metrics.registry.register(QueryCacheCollector(services.encoder.cache))
        return cls(settings, metrics, services, batcher, reranking, reloader, ready=True)

    async def stop(self) -> None:
        self.ready = False
        await self.reloader.stop()
        await self.batcher.stop()
        await self.reranking.stop()
        self.services.close()
