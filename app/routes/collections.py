"""``/collections``: what is served, and snapshots of a collection (admin).

Until the service serves several indexes, it serves one collection: the index directory, named by its
directory name (``--index /data/catalogue`` is collection ``catalogue``). A key sees only the collections
its ``collections`` list names (``GET /collections`` lists no other; the others answer 403 before these
routes run, see :func:`app.security.required_access`).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from app.audit import note
from app.catalog import Catalog, Collection
from app.deps import CollectionName, RuntimeDep
from app.errors import ApiError
from app.keys import ANONYMOUS, Principal
from app.runtime import Runtime
from app.schemas import ErrorResponse
from app.security import PRINCIPAL_KEY
from app.services import index_path
from app.settings import Settings
from semsearch.index import MANIFEST, SNAPSHOT_SUFFIXES, write_snapshot

router = APIRouter(tags=["collections"])

SNAPSHOT_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.(tar|tar\.gz|tgz)$")
SnapshotName = Annotated[str, PathParam(max_length=220, description="A file name `GET .../snapshots` listed.")]
RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong API key."},
    403: {"model": ErrorResponse, "description": "The key lacks the scope or the collection."},
    404: {"model": ErrorResponse, "description": "No such collection (or snapshot)."},
    429: {"model": ErrorResponse, "description": "The key is over its rate limit."},
}


def index_root(settings: Settings) -> Path:
    """The served index root (a version directory given as ``--index`` belongs to ``../..``)."""
    path = index_path(settings)
    return path.parent.parent if (path / MANIFEST).is_file() else path


def collection_name(settings: Settings) -> str:
    """The ``--index`` collection's name: its index directory's name."""
    return index_path(settings).name


def snapshots_dir(settings: Settings, root: Path) -> Path:
    """Where a collection's snapshots go: ``--snapshots-dir``, else ``ROOT/snapshots`` (``--data``: never inside
    the data directory itself, where a ``snapshots`` directory would just be skipped, as not an index)."""
    return settings.snapshots_dir or root / "snapshots"


def _principal(request: Request) -> Principal:
    principal = request.scope.get(PRINCIPAL_KEY)
    return principal if isinstance(principal, Principal) else ANONYMOUS


def _catalog(rt: Runtime) -> Catalog:
    assert rt.catalog is not None
    return rt.catalog


def _served(rt: Runtime, name: str) -> Collection:
    return _catalog(rt).find(name)


class CollectionList(BaseModel):
    collections: list[dict[str, Any]]


class SnapshotRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    compress: bool = Field(False, description="gzip the archive (`.tar.gz`); vectors compress little.")


class SnapshotFile(BaseModel):
    name: str
    size_bytes: int
    created_at: str


class SnapshotCreated(SnapshotFile):
    collection: str
    version: str
    count: int
    segments: int
    sha256: str


class SnapshotList(BaseModel):
    collection: str
    snapshots: list[SnapshotFile]


@router.get("/collections", response_model=CollectionList, responses=RESPONSES)
async def list_collections(rt: RuntimeDep, request: Request) -> CollectionList:
    """The collections served here that the key may use (none it may not)."""
    catalog = _catalog(rt)
    principal = _principal(request)
    visible = [catalog.summary(c) for name, c in catalog.collections.items() if principal.sees(name)]
    return CollectionList(collections=visible)


@router.get("/collections/{name}", responses=RESPONSES)
async def get_collection(rt: RuntimeDep, name: CollectionName) -> dict[str, Any]:
    """One collection: count, model, pooling, index type, segments, version, loaded (never loads it)."""
    return _catalog(rt).summary(_served(rt, name))


def _listing(directory: Path, collection: str) -> list[SnapshotFile]:
    if not directory.is_dir():
        return []
    out = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(f"{collection}-") and SNAPSHOT_FILE.match(path.name) and not path.is_symlink():
            st = path.stat()
            created = datetime.fromtimestamp(st.st_mtime, UTC).isoformat(timespec="seconds")
            out.append(SnapshotFile(name=path.name, size_bytes=st.st_size, created_at=created))
    return out


@router.post(
    "/collections/{name}/snapshots",
    response_model=SnapshotCreated,
    status_code=status.HTTP_201_CREATED,
    responses=RESPONSES,
)
async def create_snapshot(
    rt: RuntimeDep,
    request: Request,
    name: CollectionName,
    body: Annotated[SnapshotRequest | None, Body()] = None,
) -> SnapshotCreated:
    """Archive the collection's current version (manifest, segments, tombstones) into one file under the
    snapshots directory; consistent while writes continue. Restore with `indexer restore`."""
    coll = _served(rt, name)
    options = body or SnapshotRequest(compress=False)
    directory = snapshots_dir(rt.settings, coll.path)
    lock: asyncio.Lock = request.app.state.__dict__.setdefault("snapshot_lock", asyncio.Lock())
    async with lock:
        directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        suffix = SNAPSHOT_SUFFIXES[1] if options.compress else SNAPSHOT_SUFFIXES[0]
        target = directory / f"{name}-{stamp}-{secrets.token_hex(3)}{suffix}"
        info = await asyncio.to_thread(write_snapshot, coll.path, target)
    note(request.scope, snapshot=target.name, rows=info.count)
    st = target.stat()
    return SnapshotCreated(
        name=target.name,
        size_bytes=st.st_size,
        created_at=datetime.fromtimestamp(st.st_mtime, UTC).isoformat(timespec="seconds"),
        collection=name,
        version=info.version,
        count=info.count,
        segments=info.segments,
        sha256=info.sha256,
    )


@router.get("/collections/{name}/snapshots", response_model=SnapshotList, responses=RESPONSES)
async def list_snapshots(rt: RuntimeDep, name: CollectionName) -> SnapshotList:
    """The collection's snapshot files, oldest first."""
    coll = _served(rt, name)
    return SnapshotList(collection=name, snapshots=_listing(snapshots_dir(rt.settings, coll.path), name))


@router.get(
    "/collections/{name}/snapshots/{file}",
    response_class=FileResponse,
    responses={**RESPONSES, 200: {"content": {"application/x-tar": {}}, "description": "The archive."}},
)
async def download_snapshot(rt: RuntimeDep, name: CollectionName, file: SnapshotName) -> FileResponse:
    """Download one snapshot file (a name `GET /collections/{name}/snapshots` listed)."""
    coll = _served(rt, name)
    if not SNAPSHOT_FILE.match(file) or ".." in file or not file.startswith(f"{name}-"):
        raise ApiError(
            422,
            "invalid_input",
            "path.file: not a snapshot file name (letters, digits, `.`, `_`, `-`, ending .tar or .tar.gz)",
            [{"loc": ["path", "file"], "msg": "not a snapshot file name", "type": "value_error"}],
        )
    directory = snapshots_dir(rt.settings, coll.path)
    path = directory / file
    if path.is_symlink() or not path.is_file() or path.parent.resolve() != directory.resolve():
        raise ApiError(404, "snapshot_not_found", f"no snapshot {file!r} of collection {name!r}", {"file": file})
    media = "application/gzip" if file.endswith(("gz", "tgz")) else "application/x-tar"
    return FileResponse(path, media_type=media, filename=file)
