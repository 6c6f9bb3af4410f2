"""The ingress deployment: the plain service's app whose index is a ``ShardedIndex`` over the shard deployments."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.ray.fanout import PartialLog, PartialMiddleware, ServeFanout
from app.services import IndexHolder, Services, encoder_for, index_path, set_threads, start_reranker
from app.settings import Settings
from semsearch.errors import CorruptIndexError
from semsearch.index import Manifest, resolve_version_dir, shard_count
from semsearch.search import SegmentPool, ShardedIndex

log = logging.getLogger(__name__)


@dataclass
class ShardedServices(Services):
    """The ingress's services: encoder and reranker here, the index a :class:`ShardedIndex` over the
    shard deployments (``handles``), which each reload opens again. Made whole by :func:`load_services`."""

    handles: list[Any]
    settings: Settings
    partial_log: PartialLog

    def load_version(self, path: Path) -> Any:
        return open_version(path, self.encoder, self.handles, self.settings, self.partial_log)


def open_version(
    path: Path, encoder: Any, handles: list[Any], settings: Settings, partial_log: PartialLog
) -> ShardedIndex:
    """A version of the index over the running shard deployments, checked for ``encoder``."""
    directory = resolve_version_dir(path)
    manifest = Manifest.read(directory)
    if shard_count(manifest.shards) != len(handles):
        raise CorruptIndexError(
            f"index version {directory.name} has {shard_count(manifest.shards)} shard(s) but {len(handles)} shard "
            "deployments are running; restart the service to serve it"
        )
    fanout = ServeFanout(handles, directory.name, settings.shard_timeout_s, settings.shard_partial, partial_log)
    index = ShardedIndex(directory, manifest, fanout)  # gathers every shard's statistics (loads the version there)
    index.check_encoder(encoder.fingerprint, encoder.name, encoder.pooling)
    return index


def load_services(settings: Settings, handles: list[Any], partial_log: PartialLog) -> ShardedServices:
    """The plain service's startup (encoder, reranker, checks) with a sharded index."""
    set_threads(settings.threads)
    encoder = encoder_for(settings)
    index = open_version(index_path(settings), encoder, handles, settings, partial_log)
    reranker = start_reranker(settings, encoder, index)
    holder = IndexHolder(index)  # type: ignore[arg-type]
    services = ShardedServices(encoder, holder, reranker, SegmentPool(), handles, settings, partial_log)
    log.info(
        "ingress: serving %s (%s, %d sentences in %d shards)", index.directory, index.version, index.count, len(handles)
    )
    return services


class Ingress:
    """The Serve ingress deployment: the plain service's app with a sharded index."""

    def __init__(self, settings: Settings, *handles: Any) -> None:
        self.settings = settings
        self.handles = list(handles)

    def __serve_build_asgi_app__(self) -> Any:
        from app.main import create_app

        partial_log = PartialLog()
        settings, handles = self.settings, self.handles
        app = create_app(settings, load=lambda: load_services(settings, handles, partial_log))
        app.add_middleware(PartialMiddleware, partial_log=partial_log, shards=len(handles))
        return app
