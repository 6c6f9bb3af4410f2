"""Training data: scored pairs and relevance examples read, fingerprinted and expanded into labelled pairs."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from semsearch.errors import InvalidInputError
from semsearch.index.format import file_sha256
from semsearch.ingest.readers import ScoredPair, read_scored_pairs
from semsearch.training.config import MineNegatives, RelevanceExample, ScoredInput, TrainConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One labelled training pair; ``symmetric`` pairs are shown in a random order each epoch."""

    text_a: str
    text_b: str
    label: float
    symmetric: bool


@dataclass
class DataInfo:
    """Where a scored split came from: its source, row count and content hash (for the metadata)."""

    source: str
    rows: int
    sha256: str


@dataclass
class TrainingData:
    """Everything a run trains and evaluates on, as prepared by :func:`prepare_data`."""

    examples: list[Example]
    train_info: DataInfo | None
    dev_scored: list[ScoredPair]
    dev_info: DataInfo | None
    test_scored: list[ScoredPair]
    test_info: DataInfo | None
    relevance_queries: int  # relevance examples given for training
    relevance_stats: dict[str, int]
    dev_relevance: list[RelevanceExample]

    @property
    def dev_metric_name(self) -> str | None:
        """The early-stopping metric: Spearman on scored dev pairs, else MRR on dev relevance, else none."""
        if self.dev_scored:
            return "spearman"
        return "mrr" if self.dev_relevance else None

    def describe(self, relevance_source: str | None) -> dict[str, Any]:
        """The ``data`` block of the metadata."""
        return {
            "train_scored": asdict(self.train_info) if self.train_info else None,
            "train_relevance": (
                {"source": relevance_source or "in-memory", **self.relevance_stats} if self.relevance_queries else None
            ),
            "dev": asdict(self.dev_info) if self.dev_info else None,
            "dev_relevance": {"queries": len(self.dev_relevance)} if self.dev_relevance else None,
            "test": asdict(self.test_info) if self.test_info else None,
            "train_examples": len(self.examples),
        }


def prepare_data(config: TrainConfig) -> TrainingData:
    """Read the scored splits, expand relevance examples (mining negatives when a miner is given)."""
    train_scored, train_info = load_scored(config.scored)
    dev_scored, dev_info = load_scored(config.dev)
    test_scored, test_info = load_scored(config.test)
    relevance = list(config.relevance or ())
    dev_relevance = list(config.dev_relevance or ())
    examples = [
        Example(p.sentence1, p.sentence2, min(1.0, max(0.0, p.score / config.score_max)), config.symmetric)
        for p in train_scored
    ]
    relevance_pairs, relevance_stats = relevance_examples(
        relevance, config.mine_negatives, config.mine_top_k, config.num_negatives
    )
    if config.mine_negatives is not None and dev_relevance and not dev_scored:
        dev_relevance = mine_dev_negatives(dev_relevance, config.mine_negatives, config.mine_top_k)
    examples.extend(relevance_pairs)
    if not examples:
        raise InvalidInputError("no training data: give scored pairs and/or relevance examples")
    return TrainingData(
        examples=examples,
        train_info=train_info,
        dev_scored=dev_scored,
        dev_info=dev_info,
        test_scored=test_scored,
        test_info=test_info,
        relevance_queries=len(relevance),
        relevance_stats=relevance_stats,
        dev_relevance=dev_relevance,
    )


def _sha256_pairs(pairs: Sequence[ScoredPair]) -> str:
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(f"{pair.sentence1}\t{pair.sentence2}\t{pair.score!r}\n".encode())
    return digest.hexdigest()


def load_scored(data: ScoredInput | None) -> tuple[list[ScoredPair], DataInfo | None]:
    """Scored pairs from a TSV path or a list, with their :class:`DataInfo` (None when no data)."""
    if data is None:
        return [], None
    if isinstance(data, str | Path):
        pairs = read_scored_pairs(data)
        return pairs, DataInfo(str(data), len(pairs), file_sha256(Path(data)))
    pairs = list(data)
    return pairs, DataInfo("in-memory", len(pairs), _sha256_pairs(pairs))


def _mined_lists(miner: MineNegatives, queries: list[str], k: int) -> list[list[str]]:
    mined = miner(queries, k)
    if len(mined) != len(queries):
        raise InvalidInputError(f"mine_negatives returned {len(mined)} lists for {len(queries)} queries")
    return mined


def relevance_examples(
    relevance: Sequence[RelevanceExample],
    mine_negatives: MineNegatives | None,
    mine_top_k: int,
    num_negatives: int | None,
) -> tuple[list[Example], dict[str, int]]:
    """Expand relevance examples into labelled pairs; mined texts that are known positives are dropped."""
    mined: list[list[str]] = [[] for _ in relevance]
    if mine_negatives is not None and relevance:
        mined = _mined_lists(mine_negatives, [ex.query for ex in relevance], mine_top_k)
    out: list[Example] = []
    stats = dict.fromkeys(
        (
            "queries",
            "positives",
            "given_negatives",
            "mined_negatives",
            "dropped_positives",
            "queries_without_negatives",
        ),
        0,
    )
    for example, candidates in zip(relevance, mined, strict=True):
        positives = [p for p in dict.fromkeys(example.positives) if p]
        if not positives:
            continue
        known = {p.strip() for p in positives}
        negatives: dict[str, str] = {}  # text -> "given" | "mined", insertion-ordered
        for text in example.negatives:
            if text and text.strip() not in known:
                negatives.setdefault(text, "given")
        for text in candidates:
            if text.strip() in known:
                stats["dropped_positives"] += 1
            elif text:
                negatives.setdefault(text, "mined")
        kept = list(negatives.items())[: num_negatives if num_negatives is not None else None]
        stats["queries"] += 1
        stats["positives"] += len(positives)
        stats["given_negatives"] += sum(1 for _, origin in kept if origin == "given")
        stats["mined_negatives"] += sum(1 for _, origin in kept if origin == "mined")
        out.extend(Example(example.query, p, 1.0, False) for p in positives)
        out.extend(Example(example.query, n, 0.0, False) for n, _ in kept)
        if not kept:
            stats["queries_without_negatives"] += 1
    if stats["queries_without_negatives"]:
        logger.warning(
            "%d of %d relevance queries have no negatives (give negatives or mine_negatives): "
            "their pairs only teach 'relevant'",
            stats["queries_without_negatives"],
            stats["queries"],
        )
    return out, stats


def mine_dev_negatives(
    dev: Sequence[RelevanceExample], mine_negatives: MineNegatives, mine_top_k: int
) -> list[RelevanceExample]:
    """Dev examples without negatives get the retriever's top non-positives: dev MRR then measures
    reranking of the retriever's own candidate list."""
    todo = [i for i, ex in enumerate(dev) if not ex.negatives]
    out = list(dev)
    if not todo:
        return out
    mined = _mined_lists(mine_negatives, [dev[i].query for i in todo], mine_top_k)
    for i, candidates in zip(todo, mined, strict=True):
        known = {p.strip() for p in dev[i].positives}
        negatives = tuple(dict.fromkeys(t for t in candidates if t and t.strip() not in known))
        out[i] = RelevanceExample(dev[i].query, dev[i].positives, negatives)
    return out
