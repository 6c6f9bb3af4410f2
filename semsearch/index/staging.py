"""The staging state of one write operation: ``staging/<operation>/`` and its database.

``build.sqlite`` holds, committed together chunk by chunk, the open segment's rows (``docs``), the
rows' vector positions (``open_vectors``), the rejects, this operation's tombstones and the resume
state (``build_state``: rows consumed, next internal id, sealed segments, ...). A run that finds the
directory of an interrupted run continues it with ``--resume`` (same base version) or throws it away.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semsearch.index.format import NEW_SEGMENTS, OPEN_VECTORS, STAGING_DB, TRANSIENT
from semsearch.index.layout import IndexRoot
from semsearch.index.store import STAGING_SCHEMA, connect
from semsearch.types import Reject

log = logging.getLogger(__name__)

# the staging layout this code writes; a staging directory of another layout is never resumed
LAYOUT = 2


class StagingState:
    """``staging/<operation>/``: its database and resume state (the caller holds the index lock)."""

    def __init__(
        self,
        root: IndexRoot,
        op: str,
        base_version: str | None,
        next_iid: int,
        resume: bool,
        resumable: bool = True,
    ) -> None:
        self.root = root
        self.dir = root.staging_dir / op
        _remove_transient(root.staging_dir)
        fresh: dict[str, Any] = {
            "layout": LAYOUT,
            "base_version": base_version,
            "consumed": 0,
            "chunks": 0,  # chunks committed with rows (progress, for tools and tests)
            "next_iid": next_iid,
            "rejects": 0,
            "sealed": [],
            "tomb_sum": "0",
            "merged_away": [],
        }
        if self.dir.exists() and resume:
            self.db = connect(self.dir / STAGING_DB, schema=STAGING_SCHEMA)
            state = self._read()
            if state.get("base_version", base_version) != base_version or state.get("layout") != LAYOUT:
                log.warning("--resume: the index changed since the interrupted run; starting from the beginning")
                self.db.close()
                shutil.rmtree(self.dir)
        elif self.dir.exists():
            log.info("discarding an unfinished run at %s (pass --resume to continue it)", self.dir)
            shutil.rmtree(self.dir)
        elif resume:
            log.warning("--resume: no checkpoint for these inputs and options; starting from the beginning")
        if not self.dir.exists():
            # made complete under another name, then renamed: a kill never leaves an unmarked transient one
            tmp = self.dir.with_name(f".{self.dir.name}.new")
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / NEW_SEGMENTS).mkdir(parents=True)
            if not resumable:
                (tmp / TRANSIENT).touch()
            tmp.rename(self.dir)
            self.db = connect(self.dir / STAGING_DB, schema=STAGING_SCHEMA)
            with self.db:
                self._write(fresh)
        self._state = {**fresh, **self._read()}
        (self.dir / OPEN_VECTORS).mkdir(exist_ok=True)

    @property
    def segments_dir(self) -> Path:
        return self.dir / NEW_SEGMENTS

    def _read(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM build_state")}

    def _write(self, values: dict[str, Any]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO build_state(key, value) VALUES (?, ?)",
            [(k, json.dumps(v)) for k, v in values.items()],
        )

    def __getitem__(self, key: str) -> Any:
        return self._state[key]

    def record(self, **values: Any) -> None:
        """Record state values (inside the caller's transaction: ``with staging.db``)."""
        self._write(values)
        self._state.update(values)

    def rolled_back(self) -> None:
        """The caller's transaction did not commit: the state is what the database holds."""
        self._state.update(self._read())

    def append(self, key: str, items: Sequence[Any]) -> None:
        """Extend a list-valued state entry (``sealed``, ``merged_away``)."""
        self.record(**{key: [*self._state[key], *items]})

    @property
    def consumed(self) -> int:
        """Input items (rows and rejects) committed so far: what ``--resume`` skips."""
        return int(self._state["consumed"])

    @property
    def rejects(self) -> int:
        return int(self._state["rejects"])

    @property
    def sealed(self) -> list[str]:
        return list(self._state["sealed"])

    @property
    def merged_away(self) -> set[str]:
        return set(self._state["merged_away"])

    def add_rejects(self, rejects: Sequence[Reject]) -> None:
        self.db.executemany(
            "INSERT INTO rejects(source, line, reason, raw) VALUES (?, ?, ?, ?)",
            [(r.source, r.line, r.reason, r.raw) for r in rejects],
        )

    def reject_rows(self, limit: int | None = None) -> list[tuple[str, int, str, str | None]]:
        sql = "SELECT source, line, reason, raw FROM rejects ORDER BY n" + (f" LIMIT {int(limit)}" if limit else "")
        return list(self.db.execute(sql))

    def tombstones(self) -> np.ndarray:
        """This operation's tombstones (internal ids), ascending."""
        return np.fromiter((r[0] for r in self.db.execute("SELECT iid FROM tombstones ORDER BY iid")), dtype=np.int64)

    def clean_uncommitted(self) -> None:
        """After a crash: drop segments (complete or partial) that no commit recorded."""
        sealed = set(self._state["sealed"])
        for seg in self.segments_dir.iterdir():
            if seg.name not in sealed:
                shutil.rmtree(seg) if seg.is_dir() else seg.unlink()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.db.close()

    def remove(self) -> None:
        """Close and delete the operation's directory (and ``staging/`` when it is left empty)."""
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.root.staging_dir.rmdir()


def _remove_transient(staging_dir: Path) -> None:
    """The staging of operations that are never resumed (a killed delete or merge): nobody else writes
    while the caller holds the index lock, so they are garbage."""
    if staging_dir.is_dir():
        for old in staging_dir.iterdir():
            if (old / TRANSIENT).exists() or (old.name.startswith(".") and old.name.endswith(".new")):
                log.info("removing the staging of an interrupted operation: %s", old)
                shutil.rmtree(old, ignore_errors=True)
