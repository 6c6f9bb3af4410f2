"""``python -m indexer``: build, update, inspect and verify semsearch indexes.

Exit codes: 0 success (also with rejects under the threshold), 1 data or runtime error,
2 usage error (bad flags).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from enum import Enum, StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from indexer.options import parse_filter, parse_ids_option, parse_params, read_ids_file
from semsearch.choices import IndexType, Mode
from semsearch.errors import InvalidInputError, SemsearchError
from semsearch.models import Backend, Pooling

if TYPE_CHECKING:
    from indexer.pipeline import BuildOptions

log = logging.getLogger("indexer")

app = typer.Typer(
    name="indexer",
    help="Build, update, inspect and verify semsearch indexes (FAISS + SQLite + manifest.json).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class EngineOpt(StrEnum):
    local = "local"
    ray = "ray"


class OnDuplicateOpt(StrEnum):
    error = "error"
    keep_last = "keep-last"


IndexArg = Annotated[Path, typer.Option("--index", "-i", help="Index root directory (or a version directory).")]
BatchSizeOpt = Annotated[int, typer.Option(min=1, max=4096, help="Encoding batch size.")]
TextFieldOpt = Annotated[str, typer.Option(help="Text column/field for .jsonl/.csv/.tsv.")]
IdFieldOpt = Annotated[str, typer.Option(help="Id column/field (optional in the data; auto ids otherwise).")]
SplitOpt = Annotated[
    bool, typer.Option("--split-sentences", help="Split documents into sentences (keeps doc id and offsets).")
]
MaxCharsOpt = Annotated[int, typer.Option(min=1, help="Reject rows whose text is longer than this.")]
ChunkTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--chunk-tokens",
        min=8,
        help="Cut documents into passages of whole sentences up to N model tokens (a longer sentence is cut "
        "at token boundaries, never truncated); ids DOCID#n, doc_id, offsets; the document text is stored "
        "once. Recorded in the manifest: every later add applies it.",
    ),
]
ChunkOverlapOpt = Annotated[
    int | None,
    typer.Option(
        "--chunk-overlap", min=0, help="With --chunk-tokens: sentences shared by consecutive passages (default 0)."
    ),
]
MaxRejectsOpt = Annotated[
    str,
    typer.Option(
        help="Fail without publishing above this many rejects: a count, or a share like 1% (rounded up, so "
        "a small file may still skip one bad row)."
    ),
]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue an interrupted run of the same inputs and options.")
]
KeepOpt = Annotated[int | None, typer.Option(min=1, help="After publishing, keep only the newest N versions.")]
ProgressOpt = Annotated[bool, typer.Option(help="Show a progress bar.")]
MergeOpt = Annotated[
    bool,
    typer.Option(
        "--merge/--no-merge",
        help="Afterwards, merge segments as the merge policy asks (size tiers of 8; segments over 20% deleted).",
    ),
]


# one-off lookups print only their answer: no INFO lines, no model-loading progress bars
QUIET_COMMANDS = frozenset({"search", "info", "verify"})


def _setup_logging(verbose: bool, quiet: bool = False) -> None:
    from semsearch.runtime import setup_logging

    setup_logging(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    if quiet and not verbose:
        _disable_weight_progress_bars()


def _disable_weight_progress_bars() -> None:
    """transformers' "Loading weights" bar (and the hub's download bars) go to stderr otherwise."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    _setup_logging(verbose, quiet=ctx.invoked_subcommand in QUIET_COMMANDS)


def _check_inputs(paths: list[Path]) -> None:
    """A missing or unreadable input is one clear error before any work (not a traceback)."""
    for p in paths:
        if not p.is_file():
            raise InvalidInputError(f"--input {p}: {'not a file' if p.exists() else 'no such file'}")


def _emit(obj: dict[str, Any]) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


@app.command()
def build(
    input: Annotated[list[Path], typer.Option("--input", help="Input file(s): .txt .jsonl .csv .tsv, optionally .gz.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Index root directory (created if missing).")],
    model: Annotated[
        str | None, typer.Option(help="Model: hub name or local folder. Default: packaged all-MiniLM-L6-v2.")
    ] = None,
    pooling: Annotated[Pooling, typer.Option(help="Pooling of token outputs into a sentence vector.")] = "mean",
    backend: Annotated[
        Backend,
        typer.Option(
            help="Inference backend for encoding, recorded in the manifest (the service encodes queries with it). "
            "onnx-int8: int8-quantised ONNX export, built once per model and cached, within the quality guard "
            "(docs/benchmarks.md); torch: the sentence-transformers reference."
        ),
    ] = "onnx-int8",
    index_type: Annotated[IndexType, typer.Option(help="FAISS index type; auto picks by corpus size.")] = "flat",
    index_param: Annotated[
        list[str] | None,
        typer.Option(help="Index parameter key=value (M, ef_construction, ef_search, nlist, nprobe, pq_m, rescore)."),
    ] = None,
    batch_size: BatchSizeOpt = 64,
    max_seq_length: Annotated[
        int | None, typer.Option(min=8, help="Token limit per sentence (longer is truncated and counted).")
    ] = None,
    text_field: TextFieldOpt = "text",
    id_field: IdFieldOpt = "id",
    split_sentences: SplitOpt = False,
    chunk_tokens: ChunkTokensOpt = None,
    chunk_overlap: ChunkOverlapOpt = None,
    query_prompt: Annotated[
        str | None,
        typer.Option(
            help="Prompt prepended to queries (e.g. 'query: '); default: the model folder's own "
            "(config_sentence_transformers.json prompts), else none. Recorded in the manifest."
        ),
    ] = None,
    passage_prompt: Annotated[
        str | None,
        typer.Option(help="Prompt prepended to indexed texts (e.g. 'passage: '); default as for --query-prompt."),
    ] = None,
    max_chars: MaxCharsOpt = 20_000,
    max_rejects: MaxRejectsOpt = "1%",
    on_duplicate: Annotated[
        OnDuplicateOpt, typer.Option(help="Duplicate ids: fail, or let the later row win.")
    ] = OnDuplicateOpt.error,
    resume: ResumeOpt = False,
    keep: KeepOpt = None,
    chunk_size: Annotated[
        int, typer.Option(min=1, help="Rows per checkpoint (the unit --resume restarts from).")
    ] = 4096,
    segment_rows: Annotated[
        int, typer.Option(min=1, help="Rows per immutable segment (a big build writes several).")
    ] = 1_000_000,
    progress: ProgressOpt = True,
    shards: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=4096,
            help="Split the index into N shards by a stable hash of the row id (recorded in the manifest; "
            "add/delete keep it). Default: unsharded.",
        ),
    ] = None,
    engine: Annotated[
        EngineOpt,
        typer.Option(
            help="local: this process encodes; ray: Ray Data with a pool of encoder actors (pip install "
            "'semsearch[ray]').",
            case_sensitive=False,
        ),
    ] = EngineOpt.local,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="--engine ray: the cluster to join (host:port or ray://...). Default: RAY_ADDRESS, else "
            "a local Ray started for this build."
        ),
    ] = None,
    encoders: Annotated[int, typer.Option(min=1, max=4096, help="--engine ray: encoder actors (one model each).")] = 1,
    cpus_per_encoder: Annotated[
        float, typer.Option(min=0.0, help="--engine ray: CPUs each encoder actor takes.")
    ] = 1.0,
    gpus_per_encoder: Annotated[
        float, typer.Option(min=0.0, help="--engine ray: GPUs each encoder actor takes.")
    ] = 0.0,
) -> None:
    """Build a new index version from input files and publish it atomically."""
    flags = dict(locals())  # first: exactly the command's flags
    from indexer.pipeline import run_build

    _check_inputs(input)
    opts = _build_options(flags, inputs=input, index_params=parse_params(index_param or []))
    if engine == EngineOpt.ray:
        if chunk_tokens or query_prompt is not None or passage_prompt is not None:
            raise typer.BadParameter("--chunk-tokens and the prompts are not supported with --engine ray yet")
        from indexer.ray_build import RayOptions, run_ray_build

        ray_opts = RayOptions(address=ray_address, encoders=encoders, cpus=cpus_per_encoder, gpus=gpus_per_encoder)
        _report(run_ray_build(opts, ray_opts))
        return
    _report(run_build(opts))


@app.command()
def add(
    input: Annotated[list[Path], typer.Option("--input", help="Input file(s) with rows to append or upsert.")],
    index: IndexArg,
    batch_size: BatchSizeOpt = 64,
    text_field: TextFieldOpt = "text",
    id_field: IdFieldOpt = "id",
    split_sentences: SplitOpt = False,
    chunk_tokens: ChunkTokensOpt = None,
    chunk_overlap: ChunkOverlapOpt = None,
    max_chars: MaxCharsOpt = 20_000,
    max_rejects: MaxRejectsOpt = "1%",
    on_duplicate: Annotated[
        OnDuplicateOpt, typer.Option(help="An id already in the index: replace it (default) or fail.")
    ] = OnDuplicateOpt.keep_last,
    resume: ResumeOpt = False,
    keep: KeepOpt = None,
    merge: MergeOpt = True,
    progress: ProgressOpt = True,
) -> None:
    """Append/upsert rows by id: writes one new segment (only the new rows are encoded) and tombstones
    the rows it replaces; same model, pooling and index type as the index."""
    flags = dict(locals())  # first: exactly the command's flags
    from indexer.pipeline import run_build

    _check_inputs(input)
    _report(run_build(_build_options(flags, inputs=input, output=index), incremental=True))


def _build_options(flags: dict[str, Any], **renamed: Any) -> BuildOptions:
    """The :class:`~indexer.pipeline.BuildOptions` of a ``build``/``add`` run: each of the command's
    ``flags`` named like a field fills it (a choice by its value), ``renamed`` the fields whose flag
    has another name or form; the rest keep their defaults."""
    from indexer.pipeline import BuildOptions

    fields = {f.name for f in dataclasses.fields(BuildOptions)}
    named = {k: v.value if isinstance(v, Enum) else v for k, v in flags.items() if k in fields}
    return BuildOptions(**{**named, **renamed})


@app.command()
def delete(
    index: IndexArg,
    ids: Annotated[
        list[str] | None,
        typer.Option(
            "--ids",
            help='Ids to delete, exactly as written (never stripped; 1 and "1" are one id): repeat the option '
            "or separate by commas. An id with a comma goes in --ids-file.",
        ),
    ] = None,
    ids_file: Annotated[
        Path | None,
        typer.Option(
            "--ids-file",
            help="A UTF-8 file of ids to delete, one per line, exactly as written apart from the line ending "
            "(blank lines skipped); - reads standard input.",
        ),
    ] = None,
    missing_ok: Annotated[
        bool, typer.Option("--missing-ok", help="Delete the ids found even if some are absent.")
    ] = False,
    keep: KeepOpt = None,
    merge: MergeOpt = True,
) -> None:
    """Publish a new version without the given ids (it writes tombstones only)."""
    from indexer.pipeline import run_delete

    wanted = parse_ids_option(ids or [])
    if ids_file is not None:
        wanted += read_ids_file(ids_file)
    if not wanted:
        raise InvalidInputError("no ids to delete (give --ids ID[,ID...] or --ids-file FILE); nothing was changed")
    _report(run_delete(index, wanted, keep=keep, missing_ok=missing_ok, merge=merge))


@app.command()
def compact(
    index: IndexArg,
    keep: KeepOpt = None,
    max_segment_rows: Annotated[
        int,
        typer.Option(
            min=1,
            help="Largest merged segment (one ANN graph: recall falls with its size, docs/scale.md). "
            "Segments are packed up to it; one segment per shard below it.",
        ),
    ] = 2_000_000,
) -> None:
    """Drop deleted rows and merge segments into as few as --max-segment-rows allows (published
    atomically; ANN types are rebuilt)."""
    from indexer.pipeline import run_compact

    _report(run_compact(index, keep=keep, max_segment_rows=max_segment_rows))


@app.command()
def upgrade(index: IndexArg) -> None:
    """Convert a format-1 index to the segmented format 2 (hard links: no copy; old versions stay)."""
    from indexer.pipeline import run_upgrade

    _report(run_upgrade(index))


def _report(result: Any) -> None:
    if getattr(result, "unchanged", False):
        typer.echo(f"nothing to delete: none of the ids is in the index; {result.version} stays current")
        return
    parts = [f"published {result.version}: {result.count} sentences"]
    if result.added:
        parts.append(f"{result.added} rows indexed")
    if result.deleted:
        parts.append(f"{result.deleted} removed")
    if result.resumed_rows:
        parts.append(f"{result.resumed_rows} rows resumed from checkpoint")
    if result.truncated:
        parts.append(f"{result.truncated} truncated to the model's token limit")
    if result.rejects:
        parts.append(f"{result.rejects} rows rejected (see {result.rejects_file})")
    if result.merged:
        parts.append(f"merged segments into {', '.join(result.merged)}")
    if result.segments:
        parts.append(f"{result.segments} segment(s), {result.tombstones} tombstone(s)")
    if result.pruned:
        parts.append(f"pruned {', '.join(result.pruned)}")
    parts.append(f"{result.seconds:.1f}s")
    typer.echo("; ".join(parts))


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="The query text.")],
    index: IndexArg,
    k: Annotated[int, typer.Option("-k", "--k", min=1, max=1000, help="Number of results.")] = 10,
    mode: Annotated[
        Mode, typer.Option(help="dense (cosine), lexical (BM25) or hybrid (fused), as the service's mode.")
    ] = "dense",
    filter: Annotated[
        str | None,
        typer.Option("--filter", help='Metadata filter as JSON, e.g. \'{"pos": "noun"}\' (as for the service).'),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Quick look from the terminal: the k best sentences for QUERY (the service's search, same modes and filters)."""
    from semsearch.models import Encoder
    from semsearch.search import SearchIndex
    from semsearch.search import search as run_search
    from semsearch.text import text_problem

    problem = text_problem(query)  # the service refuses the same queries (422)
    if problem:
        raise typer.BadParameter(f"the query {problem}", param_hint="QUERY")
    spec = parse_filter(filter) if filter else None
    idx = SearchIndex.load(index)
    vectors = None if mode == "lexical" else Encoder.from_manifest(idx.manifest).encode([query])
    hits = run_search(idx, [query], vectors, k, mode, spec)[0]
    if as_json:
        _emit({"query": query, "index_version": idx.version, "mode": mode, "results": [h.to_dict() for h in hits]})
        return
    for rank, h in enumerate(hits, 1):
        typer.echo(f"{rank:>3}  {h.score:.4f}  [{h.id}]  {h.text}")


@app.command()
def info(
    index: IndexArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest summary as JSON.")] = False,
) -> None:
    """Show what an index holds: count, model, pooling, index type, version, files."""
    from semsearch.index import IndexRoot, Manifest, resolve_version_dir

    directory = resolve_version_dir(index)
    m = Manifest.read(directory)
    summary = {
        **m.summary(),
        "path": str(directory),
        "versions": IndexRoot(index).versions(),
        "shards": m.shards,
        "segment_list": m.segments,
        "build": m.build,
        "libraries": m.libraries,
    }
    if as_json:
        _emit(summary)
        return
    for key, value in summary.items():
        typer.echo(f"{key:>18}: {value}")


@app.command()
def verify(
    index: IndexArg,
    quick: Annotated[bool, typer.Option("--quick", help="Skip file checksums.")] = False,
) -> None:
    """Check an index version's integrity; exit 1 with a precise message per problem."""
    from semsearch.search import verify as run_verify

    problems = run_verify(index, full=not quick)
    if problems:
        for p in problems:
            typer.echo(f"FAIL: {p}", err=True)
        raise typer.Exit(1)
    typer.echo(f"OK: {index} verified")


def _register_extra_commands() -> None:
    """Commands that live in their own modules attach themselves here."""
    from indexer import eval_cmd, snapshot_cmd, train_cmd

    eval_cmd.register(app)
    train_cmd.register(app)
    snapshot_cmd.register(app)


_register_extra_commands()


def main() -> None:
    """Console-script entry point: semsearch errors become exit code 1 with one clear line.

    Usage errors (exit 2), ``typer.Exit`` codes and Ctrl-C are handled by typer's standalone mode.
    """
    try:
        app()
    except SemsearchError as e:
        _fail(e.message)
    except OSError as e:  # a file the command needed: one line, no traceback
        _fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
    except Exception as e:  # a bug or a library's error: still one line (the traceback with -v)
        log.debug("internal error", exc_info=True)
        _fail(f"internal error: {type(e).__name__}: {_short(str(e))} (run with -v for the traceback)")


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(message: str) -> None:
    """``error: ...`` on a line of its own (a progress bar may have left the cursor mid-line), exit 1."""
    _end_progress_line()
    typer.echo(f"error: {message}", err=True)
    sys.exit(1)


def _end_progress_line() -> None:
    """Close progress bars the error interrupted (closing ends their line)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
