"""``train_cross_encoder``: prepare the data, run the loop, evaluate and tune the fusion, write the folder."""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semsearch.models.reranker import RERANKER_META_FILE
from semsearch.runtime import available_cores
from semsearch.training.card import MODEL_CARD_FILE, build_metadata, render_model_card
from semsearch.training.config import TrainConfig
from semsearch.training.data import prepare_data
from semsearch.training.evaluate import final_evaluation
from semsearch.training.loop import EvalRecord, Trainer
from semsearch.training.model import default_base_model, load_cross_encoder, truncate_layers
from semsearch.training.output import check_output, staged_output

logger = logging.getLogger(__name__)


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


def seed_everything(seed: int) -> None:
    """Seed ``random``, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_cross_encoder(config: TrainConfig) -> TrainResult:
    """Train a one-output ``CrossEncoder``; write it with ``model_card.md`` and ``semsearch_reranker.json``.

    See :class:`TrainConfig` for the data, the dev metric, the fusion and the output folder.
    """
    t_start = time.perf_counter()
    output_dir = Path(config.output_dir)
    base = str(config.base_model) if config.base_model is not None else default_base_model()
    threads = config.num_threads or available_cores()
    with _torch_threads(threads):
        seed_everything(config.seed)
        data = prepare_data(config)
        check_output(output_dir, config.overwrite)
        model = load_cross_encoder(base, config.max_length)
        base_layers = truncate_layers(model, config.num_layers) if config.num_layers is not None else None
        trainer = Trainer(model, data, config, t_start)
        logger.info(
            "training cross-encoder from %s: %d examples, %d steps/epoch, %d epochs max, %d threads",
            base,
            len(data.examples),
            trainer.steps_per_epoch,
            config.epochs,
            threads,
        )
        loop = trainer.run()
        t_final = time.perf_counter()
        final = final_evaluation(model, config, data, loop.best_dev_metric)
        final_eval_seconds = time.perf_counter() - t_final
        with staged_output(output_dir, config.overwrite) as staging:
            model.save(str(staging))
            total_seconds = time.perf_counter() - t_start
            timings = {
                "train_seconds": round(loop.train_seconds, 2),
                "dev_eval_seconds": round(loop.eval_seconds, 2),
                "final_eval_seconds": round(final_eval_seconds, 2),
                "total_seconds": round(total_seconds, 2),
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                "cores": available_cores(),
            }
            hyper = config.hyperparameters(threads, loop.warmup_steps, base_layers)
            metadata = build_metadata(
                config, data, loop, final, base_model=base, hyperparameters=hyper, timings=timings
            )
            with open(staging / RERANKER_META_FILE, "w", encoding="utf-8") as handle:
                json.dump(metadata, handle, indent=2, ensure_ascii=False)
                handle.write("\n")
            (staging / MODEL_CARD_FILE).write_text(render_model_card(metadata), encoding="utf-8")
    logger.info("reranker written to %s in %.1f s", output_dir, total_seconds)
    return TrainResult(
        output_dir=output_dir,
        dev_metric_name=data.dev_metric_name,
        best_dev_metric=loop.best_dev_metric,
        best_epoch=loop.best_epoch,
        best_step=loop.best_step,
        stopped_early=loop.stopped_early,
        history=loop.history,
        dev_metrics=final.dev,
        test_metrics=final.test,
        fusion=copy.deepcopy(final.fusion),
        train_seconds=loop.train_seconds,
        total_seconds=total_seconds,
        metadata=metadata,
    )
