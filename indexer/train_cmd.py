"""``python -m indexer train-reranker``: train a cross-encoder reranker from scored and/or relevance pairs."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer


def read_relevance_pairs(path: Path, query_field: str, positive_field: str) -> list[tuple[str, str]]:
    """(query, positive) pairs from a .jsonl[.gz] file; a missing field is an error naming the line.
    With ``positive_field == "text"`` a ``title`` is prepended as BEIR corpus texts are indexed."""
    from semsearch.eval import doc_text
    from semsearch.ingest import read_json_lines

    def pair(obj: dict[str, Any]) -> tuple[str, str]:
        positive = str(obj[positive_field])
        if positive_field == "text":
            positive = doc_text(obj.get("title"), positive)
        return str(obj[query_field]), positive

    return list(read_json_lines(path, pair, f"a JSON object with {query_field!r} and {positive_field!r}"))


def index_miner(index_dir: Path) -> Callable[[list[str], int], list[list[str]]]:
    """A ``mine_negatives(queries, k)`` callable: top-k texts from an index built with our bi-encoder."""
    from semsearch.models import Encoder
    from semsearch.search import SearchIndex

    index = SearchIndex.load(index_dir)
    encoder = Encoder.from_manifest(index.manifest)

    def mine(queries: list[str], k: int) -> list[list[str]]:
        vectors = encoder.encode(queries, progress=True, desc="mining negatives")
        return [[h.text for h in hits] for hits in index.search(vectors, k)]

    return mine


def train_reranker(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the trained CrossEncoder (+ model card).")],
    scored: Annotated[
        Path | None, typer.Option(help="Scored pairs TSV (sentence1, sentence2, score), e.g. STS-B train.")
    ] = None,
    dev: Annotated[Path | None, typer.Option(help="Scored dev pairs: early stopping + fusion tuning.")] = None,
    test: Annotated[Path | None, typer.Option(help="Scored test pairs: reported only, never tuned on.")] = None,
    relevance: Annotated[
        Path | None, typer.Option(help="Relevance pairs .jsonl[.gz] with query and positive fields.")
    ] = None,
    dev_relevance: Annotated[
        Path | None,
        typer.Option(help="Held-out relevance pairs (same format): dev MRR for early stopping when no --dev."),
    ] = None,
    query_field: Annotated[str, typer.Option(help="Query field of --relevance.")] = "query",
    positive_field: Annotated[
        str,
        typer.Option(
            help="Positive text field of --relevance (a 'title' is prepended when present and the field is 'text')."
        ),
    ] = "text",
    mine_index: Annotated[
        Path | None, typer.Option(help="Index to mine hard negatives from (top-ranked non-positives).")
    ] = None,
    mine_top_k: Annotated[int, typer.Option(min=1, help="Candidates retrieved per query when mining.")] = 20,
    num_negatives: Annotated[int, typer.Option(min=0, help="Hard negatives kept per query.")] = 4,
    base_model: Annotated[
        str | None,
        typer.Option(help="Initial weights (default: the packaged all-MiniLM-L6-v2 transformer + a fresh head)."),
    ] = None,
    num_layers: Annotated[
        int | None,
        typer.Option(min=1, help="Keep only the first N transformer layers of the base model (faster reranker)."),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 3,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    learning_rate: Annotated[float, typer.Option(min=0.0)] = 5e-5,
    patience: Annotated[
        int, typer.Option(min=1, help="Dev evaluations without improvement before stopping early.")
    ] = 2,
    seed: Annotated[int, typer.Option(help="Random seed (training is deterministic for a seed).")] = 42,
    score_max: Annotated[float, typer.Option(help="Scores are divided by this to get targets in [0, 1].")] = 5.0,
    fusion: Annotated[bool, typer.Option(help="Tune a fusion with the bi-encoder cosine on --dev.")] = True,
    retrieval_weight: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Weight of the retrieval score when reranking a query's candidates (tune it with "
            "`eval beir --retrieval-weight` on held-out queries). Default: the STS dev weight.",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")] = False,
) -> None:
    """Train a cross-encoder reranker (dev-split early stopping, deterministic seed, model card)."""
    from semsearch.training import RelevanceExample, TrainConfig, train_cross_encoder

    def grouped(path: Path | None) -> list[RelevanceExample]:
        if path is None:
            return []
        positives: dict[str, list[str]] = defaultdict(list)
        for query, positive in read_relevance_pairs(path, query_field, positive_field):
            positives[query].append(positive)
        return [RelevanceExample(q, tuple(p)) for q, p in positives.items()]

    examples, dev_examples = grouped(relevance), grouped(dev_relevance)
    if dev_examples and mine_index is None:
        raise typer.BadParameter(
            "--dev-relevance needs --mine-index (dev negatives are mined)", param_hint="--dev-relevance"
        )
    if not scored and not examples:
        raise typer.BadParameter("give --scored and/or --relevance training data", param_hint="--scored")
    config = TrainConfig(
        output_dir=output,
        scored=scored,
        relevance=examples or None,
        relevance_source=str(relevance) if relevance else None,
        dev=dev,
        dev_relevance=dev_examples or None,
        test=test,
        base_model=base_model,
        mine_negatives=index_miner(mine_index) if mine_index and (examples or dev_examples) else None,
        mine_top_k=mine_top_k,
        num_negatives=num_negatives,
        score_max=score_max,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        patience=patience,
        seed=seed,
        fusion=fusion,
        retrieval_weight=retrieval_weight,
        num_layers=num_layers,
        overwrite=overwrite,
    )
    result = train_cross_encoder(config)
    typer.echo(
        f"reranker written to {result.output_dir} in {result.total_seconds / 60:.1f} min "
        f"(training {result.train_seconds / 60:.1f} min)"
    )
    if result.best_dev_metric is not None:
        typer.echo(f"best dev {result.dev_metric_name}: {result.best_dev_metric:.4f} (epoch {result.best_epoch})")
    for split, metrics in (("dev", result.dev_metrics), ("test", result.test_metrics or {})):
        for name, value in metrics.items():
            typer.echo(f"{split:>5} {name}: {value:.4f}")


def register(app: typer.Typer) -> None:
    app.command("train-reranker")(train_reranker)
