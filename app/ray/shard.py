"""The shard deployments' replicas: one shard's segments of the versions they are asked about."""

from __future__ import annotations

import collections
import logging
import os
import threading
from pathlib import Path
from typing import Any

from app.services import set_threads
from semsearch.index import MANIFEST, resolve_version_dir
from semsearch.search import SearchIndex, SegmentPool, shard_call

log = logging.getLogger(__name__)

KEEP_VERSIONS = 3  # versions a shard replica keeps loaded (the current one and in-flight predecessors)


class ShardReplica:
    """A Serve replica of one shard: the shard's segments of the versions it is asked about."""

    def __init__(self, index: str, shard: int, threads: int) -> None:
        set_threads(threads)
        self.path = Path(index)
        self.shard = shard
        self.pool = SegmentPool()
        self._lock = threading.Lock()
        self._versions: collections.OrderedDict[str, SearchIndex] = collections.OrderedDict()
        self._index(resolve_version_dir(self.path).name)  # fail the replica now if the shard does not load

    def _version_dir(self, version: str) -> Path:
        if (self.path / MANIFEST).is_file():  # a version directory served as is
            return self.path
        return self.path / "versions" / version

    def _index(self, version: str) -> SearchIndex:
        with self._lock:
            index = self._versions.get(version)
            if index is not None:
                self._versions.move_to_end(version)
                return index
        index = SearchIndex.load(self._version_dir(version), mmap=True, pool=self.pool, shard=self.shard)
        with self._lock:
            if version in self._versions:  # loaded meanwhile by another request
                index.close()
                return self._versions[version]
            self._versions[version] = index
            while len(self._versions) > KEEP_VERSIONS:
                _, old = self._versions.popitem(last=False)
                old.close()
        log.info("shard %d: loaded version %s (%d segments)", self.shard, version, len(index.views))
        return index

    def call(self, version: str, method: str, *args: Any) -> Any:
        return shard_call(self._index(version), method, *args)

    def pid(self) -> int:
        return os.getpid()

    def check_health(self) -> None:
        if not self._versions:
            raise RuntimeError(f"shard {self.shard} has no version loaded")
