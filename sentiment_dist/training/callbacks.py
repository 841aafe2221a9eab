"""Keras callbacks the training loop drives, built from `trainer.*` config.

They run on every rank with identical (all-reduced) logs, so every rank takes
the same decisions (stop, lower the rate, keep these weights); only the chief
writes files. Callbacks marked `decides` act on the raw weights before the
checkpoint is saved (see `Trainer.callbacks_around`).
"""

from __future__ import annotations

import logging
import math
import os

import keras
from omegaconf import DictConfig

from sentiment_dist.runtime.errors import UserError
from sentiment_dist.runtime.io import atomic_write
from sentiment_dist.training.checkpoint import Checkpointer

log = logging.getLogger(__name__)


def monitor_mode(monitor: str) -> str:
    """Whether a logged metric is better higher (accuracy, F1) or lower (loss, perplexity).
    Keras' own "auto" mode refuses `val_accuracy`, so every callback here is told."""
    return "max" if "acc" in monitor or "f1" in monitor else "min"


class BestWeights(keras.callbacks.Callback):
    """Keep the best epoch's weights (by `monitor`) and restore them at the end.

    Every rank keeps them (its decisions match the chief's: logs are
    all-reduced); only the chief (`write=True`) saves them, atomically, to
    `path` (None: nowhere), from where a resumed run reloads them.
    """

    def __init__(self, monitor: str, path: str | None, write: bool):
        super().__init__()
        self.monitor, self.path, self.write = monitor, path, write
        self.mode = monitor_mode(monitor)
        self.best = -math.inf if self.mode == "max" else math.inf
        self.best_weights = None

    def _better(self, value: float) -> bool:
        return value > self.best if self.mode == "max" else value < self.best

    def resume(self, epochs: list[dict]) -> None:
        """Pick up the best of the epochs an interrupted attempt finished."""
        values = [epoch[self.monitor] for epoch in epochs if self.monitor in epoch]
        if not values or self.path is None or not os.path.exists(self.path):
            return
        self.best = max(values) if self.mode == "max" else min(values)
        current = self.model.get_weights()
        self.model.load_weights(self.path)
        self.best_weights = self.model.get_weights()
        self.model.set_weights(current)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise UserError(f"trainer.best_monitor={self.monitor} is not a logged metric; use one of {sorted(logs or {})}.")
        if self._better(value):
            self.best, self.best_weights = value, self.model.get_weights()
            if self.write and self.path is not None:
                atomic_write(self.path, self.model.save_weights)

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class ResumedCounters:
    decides = True

    """Mixed into Keras' EarlyStopping and ReduceLROnPlateau: their counters
    (epochs without improvement, best value, cooldown) would restart at 0 on
    resume, so a run killed and resumed could train longer, or lower the rate
    later, than one never interrupted. `resume` replays the finished epochs'
    logs through the callback instead; the learning rates, already restored
    from the checkpoint, are put back afterwards so no reduction happens twice.
    """

    def resume(self, epochs: list[dict]) -> None:
        optimizers = self.model.optimizer.optimizers
        rates = [float(keras.ops.convert_to_numpy(optimizer.learning_rate)) for optimizer in optimizers]
        for record in epochs:
            self.on_epoch_end(int(record["epoch"]) - 1, dict(record))
        for optimizer, rate in zip(optimizers, rates, strict=True):
            optimizer.learning_rate = rate


class EarlyStopping(ResumedCounters, keras.callbacks.EarlyStopping):
    pass


class ReduceLROnPlateau(ResumedCounters, keras.callbacks.ReduceLROnPlateau):
    pass


class LearningRateWarmup(keras.callbacks.Callback):
    """Ramp the base rate linearly from `start` to `target` over the first
    epochs (Goyal et al. 2017), so a rate scaled by the number of replicas
    does not blow up the first steps."""

    decides = True

    def __init__(self, start: float, target: float, warmup_steps: int):
        super().__init__()
        self.start, self.target, self.warmup_steps = start, target, warmup_steps
        self.step = 0

    def on_train_begin(self, logs=None):
        self.step = int(self.model.optimizer.iterations.numpy())

    def on_train_batch_begin(self, batch, logs=None):
        if self.step <= self.warmup_steps:
            fraction = self.step / max(self.warmup_steps, 1)
            self.model.optimizer.learning_rate = self.start + (self.target - self.start) * fraction
        self.step += 1


def make_callbacks(
    cfg: DictConfig, base_rate: float, effective_rate: float, steps: int, dist,
    checkpoint_dir: str | None = None, best_weights_path: str | None = None,
) -> list[keras.callbacks.Callback]:
    """The callbacks `trainer.*` asks for; resume state goes to `checkpoint_dir` and the best
    epoch's weights to `best_weights_path` (None: not written)."""
    callbacks: list[keras.callbacks.Callback] = []
    if cfg.warmup_epochs and effective_rate != base_rate:
        callbacks.append(LearningRateWarmup(base_rate, effective_rate, int(cfg.warmup_epochs * steps)))
    if cfg.lr_on_plateau.patience is not None:
        callbacks.append(
            ReduceLROnPlateau(
                monitor=cfg.lr_on_plateau.monitor,
                mode=monitor_mode(cfg.lr_on_plateau.monitor),
                factor=cfg.lr_on_plateau.factor,
                patience=cfg.lr_on_plateau.patience,
                min_lr=cfg.lr_on_plateau.min_lr,
            )
        )
    if cfg.early_stopping.patience is not None:
        callbacks.append(
            EarlyStopping(
                monitor=cfg.early_stopping.monitor,
                mode=monitor_mode(cfg.early_stopping.monitor),
                patience=cfg.early_stopping.patience,
                min_delta=cfg.early_stopping.min_delta,
            )
        )
    callbacks.append(Checkpointer(dist, checkpoint_dir))
    callbacks.append(BestWeights(cfg.best_monitor, best_weights_path, write=dist.is_chief))
    return callbacks
