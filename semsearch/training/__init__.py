"""Train a cross-encoder reranker here: a small, deterministic torch loop around a ``CrossEncoder``.

The model is a sentence-transformers ``CrossEncoder`` with one output (``num_labels=1``), initialised from
a base model folder (default: the packaged all-MiniLM-L6-v2; its BERT weights load into
``BertForSequenceClassification`` with a fresh head). Training data are

* scored pairs (``sentence1``, ``sentence2``, ``score``), the target being ``score / score_max`` in [0, 1];
  for symmetric tasks (STS) the pair order is randomised per example and epoch, and
* relevance examples (query, positives, hard negatives) with targets 1 / 0; negatives may be mined by a
  caller-supplied ``mine_negatives(queries, k)`` callable (known positives are dropped).

The loss is ``BCEWithLogits``; the optimiser AdamW with linear warm-up and decay. The dev set is evaluated
each epoch (or every N steps), training stops early after ``patience`` evaluations without improvement and
the best checkpoint is kept. The output folder is a standard ``CrossEncoder.save`` folder plus
``model_card.md`` and ``semsearch_reranker.json`` (see ``docs/reranker.md``).

Fusion: the shipped score may combine the cross-encoder logit with the bi-encoder cosine, each
z-normalised, ``(1 - w) * z(ce) + w * z(cos)``; ``w`` is grid-searched on the dev set only.

Modules: ``config`` (``TrainConfig``), ``data`` (reading and expanding the data), ``model`` (loading the
cross-encoder, logits), ``loop`` (the training loop, early stopping), ``evaluate`` (dev metric, final
dev/test metrics, fusion tuning), ``card`` (metadata and model card), ``output`` (the output folder),
``run`` (``train_cross_encoder``, which ties them together).
"""

from __future__ import annotations

from semsearch.training.config import MineNegatives, RelevanceExample, TrainConfig
from semsearch.training.evaluate import tune_fusion_weight
from semsearch.training.loop import EarlyStopping, EvalRecord
from semsearch.training.model import predict_logits
from semsearch.training.run import TrainResult, train_cross_encoder

__all__ = [
    "EarlyStopping",
    "EvalRecord",
    "MineNegatives",
    "RelevanceExample",
    "TrainConfig",
    "TrainResult",
    "predict_logits",
    "train_cross_encoder",
    "tune_fusion_weight",
]
