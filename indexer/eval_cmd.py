"""``python -m indexer eval``: retrieval quality on BEIR-format data, and STS correlations.

Examples::

    # build an index from a BEIR corpus (doc id = _id, text = title + " " + text) and evaluate it
    python -m indexer eval beir --data ../shared/data/scifact --split test --index /tmp/scifact --build
    python -m indexer eval beir --data ../shared/data/scifact --index /tmp/scifact --mode hybrid --json
    python -m indexer eval beir --data ... --index ... --reranker models/reranker --candidates 100
    python -m indexer eval sts --data ../shared/data/stsb/stsb_test.tsv [--reranker models/reranker]
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from indexer.options import parse_params
from semsearch.choices import FusionMethod, Mode
from semsearch.models import Backend, Pooling
from semsearch.runtime import warn_renamed

if TYPE_CHECKING:
    from semsearch.eval import BeirDataset, RetrievalReport
    from semsearch.search import HybridParams, SearchIndex

log = logging.getLogger(__name__)

eval_app = typer.Typer(
    help="Measure quality: retrieval metrics on BEIR-format data (beir), STS correlations (sts).",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Attach the ``eval`` command group to the indexer CLI."""
    app.add_typer(eval_app, name="eval")


def build_beir_index(
    dataset: BeirDataset,
    index: Path,
    model: str | None = None,
    pooling: Pooling = "mean",
    index_type: str = "flat",
    index_params: dict[str, Any] | None = None,
    batch_size: int = 64,
    progress: bool = True,
    backend: Backend = "torch",
) -> str:
    """Index a BEIR corpus (id = _id, text = title + " " + text, metadata = title); returns the version."""
    from indexer.pipeline import BuildOptions, run_build
    from semsearch.eval import iter_corpus

    with tempfile.TemporaryDirectory(prefix="semsearch-beir-") as tmp:
        rows = Path(tmp) / "corpus.jsonl"
        n = 0
        with rows.open("w", encoding="utf-8") as fh:
            for doc in iter_corpus(dataset.corpus_path):
                if doc["text"]:
                    fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
                    n += 1
        log.info("indexing %d documents of %s into %s", n, dataset.corpus_path, index)
        opts = BuildOptions(
            inputs=[rows],
            output=index,
            model=model,
            pooling=pooling,
            backend=backend,
            index_type=index_type,
            index_params=dict(index_params or {}),
            batch_size=batch_size,
            text_field="text",
            id_field="id",
            max_chars=1_000_000,
            max_rejects="0",
            progress=progress,
        )
        return run_build(opts).version


def _print_table(title: str, rows: dict[str, float], fmt: str = "{:.4f}") -> None:
    typer.echo(title)
    for name, value in rows.items():
        typer.echo(f"  {name:<12} {fmt.format(value)}")


@eval_app.command("beir")
def beir(
    data: Annotated[Path, typer.Option(help="BEIR folder: corpus.jsonl[.gz], queries.jsonl, qrels/<split>.tsv.")],
    index: Annotated[Path, typer.Option("--index", "-i", help="Index root (built from this corpus).")],
    split: Annotated[str, typer.Option(help="Qrels split: qrels/<split>.tsv.")] = "test",
    build: Annotated[
        bool, typer.Option("--build", help="Build the index from the BEIR corpus if it has none.")
    ] = False,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Build a new index version from the corpus.")] = False,
    model: Annotated[str | None, typer.Option(help="Model for --build (default: packaged all-MiniLM-L6-v2).")] = None,
    pooling: Annotated[Pooling, typer.Option(help="Pooling for --build.")] = "mean",
    backend: Annotated[Backend, typer.Option(help="Encoder backend for --build.")] = "torch",
    index_type: Annotated[str, typer.Option(help="FAISS index type for --build (flat, hnsw, ivf, sq8, ...).")] = "flat",
    index_param: Annotated[list[str] | None, typer.Option(help="Index parameter key=value for --build.")] = None,
    mode: Annotated[Mode, typer.Option(help="Search mode.")] = "dense",
    fusion: Annotated[FusionMethod | None, typer.Option(help="Hybrid fusion method (default: tuned).")] = None,
    rrf_k: Annotated[int | None, typer.Option(min=0, help="Hybrid RRF rank constant (default: tuned).")] = None,
    depth: Annotated[int | None, typer.Option(min=1, help="Hybrid candidates per retriever (default: tuned).")] = None,
    weight: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Hybrid dense weight (default: tuned).")
    ] = None,
    filter_json: Annotated[
        str | None, typer.Option("--filter", help='Metadata filter as JSON, e.g. {"year": 2020}.')
    ] = None,
    reranker: Annotated[Path | None, typer.Option(help="Cross-encoder folder: rerank the top --candidates.")] = None,
    reranker_backend: Annotated[Backend, typer.Option(help="Reranker inference backend.")] = "torch",
    retrieval_weight: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Retrieval-score weight in the rerank fusion (default: the model's)."),
    ] = None,
    rerank_weight: Annotated[
        float | None,
        typer.Option("--rerank-weight", min=0.0, max=1.0, hidden=True, help="Deprecated: --retrieval-weight."),
    ] = None,
    candidates: Annotated[int, typer.Option(min=1, max=10_000, help="Candidates reranked per query.")] = 100,
    k: Annotated[
        int, typer.Option("-k", "--k", min=1, max=10_000, help="Hits kept per query (>= metric cut-offs).")
    ] = 100,
    batch_size: Annotated[int, typer.Option(min=1, max=4096, help="Encoding batch size.")] = 64,
    per_query: Annotated[Path | None, typer.Option(help="Write each query's metrics (JSON lines) here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of a table.")] = False,
    progress: Annotated[bool, typer.Option(help="Progress bar while building.")] = True,
) -> None:
    """Retrieval metrics (nDCG@10, recall@10, recall@100, MRR@10) of an index on BEIR-format data."""
    from semsearch.eval import load_beir

    dataset = load_beir(data, split)  # fail fast on bad data, before the heavy imports
    filter_spec = _parse_filter(filter_json)

    from semsearch.eval import evaluate_retrieval
    from semsearch.index import MANIFEST, IndexRoot
    from semsearch.models import Encoder
    from semsearch.search import SearchIndex

    has_version = IndexRoot(index).current_version() is not None or (index / MANIFEST).is_file()
    if rebuild or (build and not has_version):
        version = build_beir_index(
            dataset,
            index,
            model,
            pooling,
            index_type,
            parse_params(index_param or []),
            batch_size,
            progress,
            backend,
        )
        log.info("built %s %s", index, version)
    elif build:
        log.info("--build: %s already has a version; evaluating it (pass --rebuild to build anew)", index)
    if rerank_weight is not None:
        warn_renamed("--rerank-weight", "--retrieval-weight")
        retrieval_weight = rerank_weight if retrieval_weight is None else retrieval_weight
    params = _hybrid_params(fusion, rrf_k, depth, weight)
    idx = SearchIndex.load(index)
    try:
        _check_coverage(idx, dataset)
        encoder = None if mode == "lexical" and reranker is None else Encoder.from_manifest(idx.manifest)
        rr = None
        if reranker is not None:
            from semsearch.models import Reranker

            rr = Reranker(reranker, backend=reranker_backend, retrieval_weight=retrieval_weight)
        report = evaluate_retrieval(
            idx,
            dataset,
            encoder,
            mode,
            k,
            params,
            rr,
            candidates,
            filter=filter_spec,
            batch_size=batch_size,
        )
    finally:
        idx.close()
    if per_query is not None:
        _write_per_query(per_query, report)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    s = report.settings
    extra = f" + rerank {s['reranker']} (top {s['candidates']})" if reranker is not None else ""
    _print_table(
        f"{data.name} {split}: {report.result.queries} queries, {s['documents']} docs, "
        f"mode {mode}{extra}, "
        f"index {s['index_type']} ({s['model']}, {s['pooling']} pooling)",
        report.result.metrics,
    )
    for name, value in report.timings.items():
        typer.echo(f"  {name:<12} {value:.2f}")


def _parse_filter(filter_json: str | None) -> dict[str, Any] | None:
    from semsearch.errors import InvalidInputError

    if not filter_json:
        return None
    try:
        parsed: dict[str, Any] = json.loads(filter_json)
    except json.JSONDecodeError as e:
        raise InvalidInputError(f"--filter is not valid JSON: {e}") from e
    return parsed


def _hybrid_params(
    fusion: FusionMethod | None, rrf_k: int | None, depth: int | None, weight: float | None
) -> HybridParams:
    """The tuned hybrid defaults with the given overrides."""
    from dataclasses import replace

    from semsearch.search import DEFAULT_HYBRID

    given: dict[str, Any] = {"method": fusion, "rrf_k": rrf_k, "depth": depth, "weight": weight}
    return replace(DEFAULT_HYBRID, **{name: value for name, value in given.items() if value is not None})


def _check_coverage(idx: SearchIndex, dataset: BeirDataset) -> None:
    judged = sorted({d for rels in dataset.qrels.values() for d, r in rels.items() if r > 0})
    found = idx.iids_for_ext_ids(judged)
    missing = len(judged) - len(found)
    if missing:
        log.warning(
            "%d of %d relevant documents of the qrels are not in the index %s (was it built from %s?)",
            missing,
            len(judged),
            idx.directory,
            dataset.corpus_path,
        )


def _write_per_query(path: Path, report: RetrievalReport) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for qid, values in report.result.per_query.items():
            top = [d for d, _ in report.run.get(qid, [])[:10]]
            fh.write(json.dumps({"query_id": qid, **values, "top10": top}) + "\n")
    log.info("per-query metrics written to %s", path)


@eval_app.command("sts")
def sts(
    data: Annotated[list[Path], typer.Option(help="STS TSV file(s) with header sentence1, sentence2, score.")],
    model: Annotated[str | None, typer.Option(help="Bi-encoder (default: packaged all-MiniLM-L6-v2).")] = None,
    pooling: Annotated[Pooling, typer.Option(help="Pooling of token outputs.")] = "mean",
    reranker: Annotated[Path | None, typer.Option(help="Cross-encoder folder: also correlate its scores.")] = None,
    reranker_backend: Annotated[Backend, typer.Option(help="Reranker inference backend.")] = "torch",
    batch_size: Annotated[int, typer.Option(min=1, max=4096)] = 64,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Spearman and Pearson ×100 of the cosine (and of a reranker) against gold similarity scores."""
    from semsearch.eval import evaluate_sts, read_sts
    from semsearch.models import Encoder, Reranker

    encoder = Encoder(model=model, pooling=pooling)
    rr = Reranker(reranker, backend=reranker_backend) if reranker is not None else None
    reports = {}
    for path in data:
        report = evaluate_sts(read_sts(path), encoder, rr, batch_size)
        reports[str(path)] = {"model": encoder.name, "pooling": encoder.pooling, **report}
    if as_json:
        typer.echo(json.dumps(reports, indent=2))
        return
    for path_name, report in reports.items():
        rows = {
            f"{scorer} {stat}": report[scorer][stat]
            for scorer in ("cosine", "reranker", "reranker_fused")
            if scorer in report
            for stat in ("spearman", "pearson")
        }
        _print_table(
            f"{path_name}: {report['pairs']} pairs ({report['model']}, {report['pooling']} pooling), ×100",
            rows,
            "{:.2f}",
        )
