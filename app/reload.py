"""Hot reload: follow the index root's ``current`` pointer without dropping a request.

A new version is loaded and checked (:func:`semsearch.search.load_index`: exactly the checks startup
applies) in a worker thread while the old one keeps serving; the segments it shares with the served
version are reused from the segment pool (memory-mapped, not read again), so a reload costs the new
segments only. Then one reference is swapped
(:meth:`IndexHolder.swap`). Batches already running finish on the version they borrowed; it is
closed when the last one returns it. A version that fails to load or verify is refused and logged,
the old version keeps serving, and ``last_reload_error`` records why (``GET /info``). The poller
does not retry a refused version until ``current`` moves again; ``POST /admin/reload`` always does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.errors import ApiError
from app.metrics import Metrics
from app.services import Services, version_name
from semsearch.errors import SemsearchError
from semsearch.index import MANIFEST, IndexRoot

log = logging.getLogger(__name__)


@dataclass
class ReloadOutcome:
    """What a reload did: ``reloaded`` (to ``version``) or ``unchanged``."""

    outcome: str
    version: str
    previous_version: str | None
    count: int
    took_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ReloadRefusedError(ApiError):
    """The new version could not be loaded or verified (HTTP 409); the old one keeps serving."""

    def __init__(self, message: str, detail: dict[str, Any]) -> None:
        super().__init__(409, "reload_refused", message, detail)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Reloader:
    """Checks ``current`` and swaps in new versions, one reload at a time."""

    def __init__(self, index_path: Path, services: Services, metrics: Metrics) -> None:
        self.services = services
        self.metrics = metrics
        # a version directory given directly is served as is: there is no pointer to follow
        self.root: IndexRoot | None = None if (index_path / MANIFEST).is_file() else IndexRoot(index_path)
        self.last_error: dict[str, Any] | None = None
        self.last_reload: dict[str, Any] | None = None
        self._refused: str | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start_polling(self, interval_s: float) -> None:
        if interval_s > 0 and self.root is not None:
            self._task = asyncio.get_running_loop().create_task(self._poll(interval_s), name="semsearch-reload")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _poll(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.reload(forced=False)
            except ReloadRefusedError:
                pass  # already logged and recorded
            except Exception:  # keep polling whatever happens
                log.exception("index reload check failed")

    async def reload(self, forced: bool = True) -> ReloadOutcome:
        """Load ``current`` if it moved (or retry a refused version when ``forced``)."""
        async with self._lock:
            started = time.perf_counter()
            serving = version_name(self.services.indexes.current)
            if self.root is None:
                return self._outcome("unchanged", serving, None, started)
            try:
                target = await asyncio.to_thread(self.root.current_version)
            except SemsearchError as e:
                raise self._refuse("current", e) from e
            if target is None:
                raise self._refuse("current", SemsearchError(f"{self.root.path} has no `current` version"))
            if target == serving or (target == self._refused and not forced):
                return self._outcome("unchanged", serving, None, started)
            try:
                index = await asyncio.to_thread(self.services.load_version, self.root.versions_dir / target)
            except SemsearchError as e:
                raise self._refuse(target, e) from e
            except Exception as e:  # anything else a broken version can raise while loading
                log.exception("loading index version %s failed", target)
                raise self._refuse(target, SemsearchError(f"{type(e).__name__}: {e}")) from e
            self.services.indexes.swap(index)
            self._refused = None
            self.last_error = None
            self.metrics.reloads.labels("reloaded").inc()
            self.metrics.index_size.set(index.count)
            outcome = self._outcome("reloaded", target, serving, started)
            self.last_reload = {**outcome.to_dict(), "at": _now()}
            log.info("hot reload: now serving %s (%d sentences; was %s)", target, index.count, serving)
            return outcome

    def _outcome(self, what: str, version: str, previous: str | None, started: float) -> ReloadOutcome:
        count = self.services.indexes.current.count
        return ReloadOutcome(what, version, previous, count, round((time.perf_counter() - started) * 1000, 2))

    def _refuse(self, target: str, error: SemsearchError) -> ReloadRefusedError:
        serving = version_name(self.services.indexes.current)
        first_time = target != self._refused
        self._refused = target
        self.last_error = {"version": target, "code": error.code, "message": error.message, "at": _now()}
        self.metrics.reloads.labels("failed").inc()
        if first_time:
            log.error("refused index version %s (still serving %s): %s", target, serving, error.message)
        return ReloadRefusedError(
            f"index version {target} was refused, still serving {serving}: {error.message}",
            {"version": target, "serving": serving, "reason": error.code},
        )
