"""The training loop: AdamW with linear warm-up and decay, ``BCEWithLogits``, dev evaluation each epoch (or
every N steps), early stopping with the best checkpoint kept."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from semsearch.training.config import TrainConfig
from semsearch.training.data import TrainingData
from semsearch.training.evaluate import dev_metric

logger = logging.getLogger(__name__)

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight")


@dataclass
class EvalRecord:
    """One dev evaluation during training."""

    epoch: int
    step: int
    train_loss: float
    dev_metric: float | None
    seconds: float


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


@dataclass
class LoopResult:
    """What the loop did: its evaluations, the kept checkpoint, and where its time went."""

    history: list[EvalRecord] = field(default_factory=list)
    best_dev_metric: float | None = None
    best_epoch: int | None = None
    best_step: int | None = None
    stopped_early: bool = False
    steps: int = 0
    warmup_steps: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """The learning-rate factor: linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Trainer:
    """One run of the loop over ``data.examples``; :meth:`run` leaves the model with the best dev weights."""

    def __init__(self, model: Any, data: TrainingData, config: TrainConfig, t_start: float) -> None:
        self.model, self.data, self.config, self.t_start = model, data, config, t_start
        self.steps_per_epoch = math.ceil(len(data.examples) / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.result = LoopResult(warmup_steps=round(config.warmup_ratio * self.total_steps))
        decay = [p for n, p in model.named_parameters() if not any(k in n for k in NO_DECAY)]
        no_decay = [p for n, p in model.named_parameters() if any(k in n for k in NO_DECAY)]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.learning_rate,
        )
        schedule = linear_schedule(self.result.warmup_steps, self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.loss_fn = torch.nn.BCEWithLogitsLoss()
        self.stopper = EarlyStopping(config.patience)
        self.best_state: dict[str, torch.Tensor] | None = None
        self.losses: list[float] = []  # since the last evaluation

    def run(self) -> LoopResult:
        """Train up to ``epochs`` (stopping early on the dev metric) and restore the best checkpoint."""
        config, result = self.config, self.result
        self.model.train()
        rng = np.random.default_rng(config.seed)
        progress = tqdm(total=self.total_steps, desc="train reranker", unit="step", disable=not config.show_progress)
        try:
            for epoch in range(1, config.epochs + 1):
                if self._epoch(epoch, rng, progress):
                    result.stopped_early = epoch < config.epochs or result.steps < self.total_steps
                    if result.stopped_early:
                        best = result.best_epoch
                        logger.info("early stopping at epoch %d step %d (best epoch %s)", epoch, result.steps, best)
                    break
        finally:
            progress.close()
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        elif self.data.dev_metric_name is None:  # no dev data: keep the last state
            result.best_epoch = result.history[-1].epoch if result.history else config.epochs
            result.best_step = result.steps
        result.best_dev_metric = self.stopper.best
        self.model.eval()
        return result

    def _epoch(self, epoch: int, rng: np.random.Generator, progress: Any) -> bool:
        """One pass over the shuffled examples; True when training should stop."""
        examples, every = self.data.examples, self.config.eval_every_steps
        order = [int(i) for i in rng.permutation(len(examples))]
        swaps = rng.random(len(examples)) < 0.5
        evaluated_at_step = -1
        for batch in _batches(order, self.config.batch_size):
            pairs = []
            for i in batch:
                ex = examples[i]
                swap = ex.symmetric and bool(swaps[i])
                pairs.append((ex.text_b, ex.text_a) if swap else (ex.text_a, ex.text_b))
            self._step(pairs, [examples[i].label for i in batch])
            progress.update(1)
            progress.set_postfix(loss=f"{self.losses[-1]:.4f}", epoch=epoch)
            if every is not None and self.result.steps % every == 0:
                evaluated_at_step = self.result.steps
                if self._checkpoint(epoch):
                    return True
        if evaluated_at_step != self.result.steps and (every is None or epoch == self.config.epochs):
            return self._checkpoint(epoch)
        return False

    def _step(self, pairs: list[tuple[str, str]], labels: list[float]) -> None:
        t_step = time.perf_counter()
        features = self.model.preprocess(pairs)
        logits = self.model(features)["scores"].reshape(-1)
        loss = self.loss_fn(logits, torch.tensor(labels, dtype=logits.dtype))
        loss.backward()
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.result.steps += 1
        self.losses.append(float(loss.item()))
        self.result.train_seconds += time.perf_counter() - t_step

    def _checkpoint(self, epoch: int) -> bool:
        """Evaluate, record, snapshot a new best; True when training should stop."""
        result = self.result
        t_eval = time.perf_counter()
        value = dev_metric(self.model, self.data, self.config.eval_batch_size)
        result.eval_seconds += time.perf_counter() - t_eval
        mean_loss = float(np.mean(self.losses)) if self.losses else float("nan")
        self.losses.clear()
        seconds = round(time.perf_counter() - self.t_start, 2)
        result.history.append(EvalRecord(epoch, result.steps, mean_loss, value, seconds))
        logger.info(
            "epoch %d step %d: train loss %.4f, dev %s %s",
            epoch,
            result.steps,
            mean_loss,
            self.data.dev_metric_name,
            value,
        )
        if value is None:
            return False
        if self.stopper.update(value):
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            result.best_epoch, result.best_step = epoch, result.steps
        return self.stopper.should_stop
