"""What a training run is given: ``TrainConfig`` (data, hyper-parameters, fusion, output) and its inputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semsearch.errors import InvalidInputError
from semsearch.ingest.readers import ScoredPair

DEFAULT_FUSION_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(21))

MineNegatives = Callable[[list[str], int], list[list[str]]]
ScoredInput = Sequence[ScoredPair] | str | Path


@dataclass(frozen=True)
class RelevanceExample:
    """A query with its known positive texts and optional hard negatives."""

    query: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run of :func:`semsearch.training.train_cross_encoder`.

    ``scored``/``dev``/``test`` are TSV paths (see ``read_scored_pairs``) or lists of ``ScoredPair``;
    ``relevance`` are (query, positives, negatives) examples, extended with ``mine_negatives(queries, k)``
    when given. ``symmetric`` marks scored pairs as order-free (order randomised in training, both orders
    averaged in evaluation). The dev metric (Spearman on ``dev``, else MRR on ``dev_relevance``) drives early
    stopping and the kept checkpoint; the fusion weight is tuned on ``dev`` only; ``test`` is only reported.
    ``retrieval_weight`` (tuned by the caller on a retrieval dev set) is stored as the weight that
    ``Reranker.score`` uses for query-candidate lists; without it that weight is the STS dev weight.
    ``num_layers`` keeps only the first N transformer layers of the base model (a faster reranker).
    """

    output_dir: str | Path
    # data
    scored: ScoredInput | None = None
    relevance: Sequence[RelevanceExample] | None = None
    dev: ScoredInput | None = None
    dev_relevance: Sequence[RelevanceExample] | None = None
    test: ScoredInput | None = None
    relevance_source: str | None = None
    score_max: float = 5.0
    symmetric: bool = True
    # models and negatives
    base_model: str | Path | None = None
    bi_encoder: str | Path | None = None
    mine_negatives: MineNegatives | None = None
    mine_top_k: int = 20
    num_negatives: int | None = 4
    num_layers: int | None = None
    max_length: int | None = 256
    # optimisation
    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    eval_every_steps: int | None = None
    patience: int = 2
    seed: int = 42
    num_threads: int | None = None
    eval_batch_size: int = 64
    # fusion
    fusion: bool = True
    fusion_grid: Sequence[float] = DEFAULT_FUSION_GRID
    retrieval_weight: float | None = None
    # run
    show_progress: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0 or self.score_max <= 0:
            raise InvalidInputError("epochs, batch_size, learning_rate and score_max must be positive")
        if self.retrieval_weight is not None and not 0.0 <= self.retrieval_weight <= 1.0:
            raise InvalidInputError("retrieval_weight must be in [0, 1]")
        if self.eval_every_steps is not None and self.eval_every_steps < 1:
            raise InvalidInputError("eval_every_steps must be >= 1")

    def hyperparameters(self, threads: int, warmup_steps: int, base_layers: int | None) -> dict[str, Any]:
        """The ``hyperparameters`` block of the metadata (with what the run derived from the config)."""
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "weight_decay": self.weight_decay,
            "warmup_ratio": self.warmup_ratio,
            "warmup_steps": warmup_steps,
            "max_grad_norm": self.max_grad_norm,
            "max_length": self.max_length,
            "num_layers": self.num_layers,
            "base_num_layers": base_layers,
            "loss": "BCEWithLogits(score / score_max)",
            "score_max": self.score_max,
            "symmetric": self.symmetric,
            "randomize_pair_order": self.symmetric,
            "eval_every_steps": self.eval_every_steps,
            "patience": self.patience,
            "num_negatives": self.num_negatives,
            "mine_top_k": self.mine_top_k if self.mine_negatives is not None else None,
            "optimizer": "AdamW, linear warm-up and decay",
            "num_threads": threads,
        }
