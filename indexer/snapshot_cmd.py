"""``indexer snapshot`` and ``indexer restore``: one archive file of an index's current version, and back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def snapshot(
    index: Annotated[Path, typer.Option("--index", "-i", help="Index root directory (it holds `current`).")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Archive to write: .tar, or .tar.gz / .tgz (gzip); must not exist.")
    ],
) -> None:
    """Archive the current version (manifest, segments, tombstones) into one file; consistent while
    writers keep publishing."""
    from semsearch.index import write_snapshot

    info = write_snapshot(index, output)
    typer.echo(
        f"snapshot of {info.version}: {info.count} sentences, {info.segments} segment(s), {info.files} files "
        f"({info.bytes} bytes) -> {info.path} (sha256 {info.sha256})"
    )


def restore(
    snapshot: Annotated[Path, typer.Option("--snapshot", help="Archive written by `snapshot` (or the service).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Index root to create (new or empty directory).")],
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="If --output already holds an index, publish the snapshot as its next version (current "
            "switches atomically; a service serving it hot-reloads).",
        ),
    ] = False,
) -> None:
    """Restore an archive after checking every member and every checksum; refuses a tampered or truncated
    archive, and an existing index unless --overwrite."""
    from semsearch.index import restore_snapshot
    from semsearch.search import verify

    info = restore_snapshot(snapshot, output, overwrite=overwrite, check=verify)
    typer.echo(
        f"restored {info.source_version} ({info.count} sentences, {info.segments} segment(s)) into {info.path} "
        f"as {info.version}; verified"
    )


def register(app: typer.Typer) -> None:
    app.command()(snapshot)
    app.command()(restore)
