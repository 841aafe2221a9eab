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
    all-reduced); only the chief (asked when it writes: elastic Horovod may
    make another process the chief) saves them, atomically, to `path` (None:
    nowhere), from where a resumed run reloads them.
    """

    def __init__(self, monitor: str, path: str | None, dist):
        super().__init__()
        self.monitor, self.path, self.dist = monitor, path, dist
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
            if self.dist.is_chief and self.path is not None:
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

    def on_train_batch_begin(self, batch, logs=None):
        # The steps taken, from the optimizers (the head's trains every step, whatever is frozen):
        # right after a resume mid-epoch or an elastic rollback, with no count of our own to restore.
        step = max(int(optimizer.iterations.numpy()) for optimizer in self.model.optimizer.optimizers)
        if step <= self.warmup_steps:
            fraction = step / max(self.warmup_steps, 1)
            self.model.optimizer.learning_rate = self.start + (self.target - self.start) * fraction

    def rescale(self, ratio: float) -> None:
        """The learning rate was rescaled by `ratio` (elastic Horovod lost or gained workers)."""
        self.start, self.target = self.start * ratio, self.target * ratio


def make_callbacks(
    cfg: DictConfig, base_rate: float, effective_rate: float, steps: int, dist,
    checkpoint_dir: str | None = None, best_weights_path: str | None = None, resume: bool = True,
) -> list[keras.callbacks.Callback]:
    """The callbacks `trainer.*` asks for; resume state goes to `checkpoint_dir` (`resume`: continue
    from what it holds, else start over) and the best epoch's weights to `best_weights_path`
    (None: not written)."""
    unresolved = [key for key, monitor in (("best_monitor", cfg.best_monitor), ("early_stopping.monitor", cfg.early_stopping.monitor),
                                           ("lr_on_plateau.monitor", cfg.lr_on_plateau.monitor)) if monitor == "auto"]
    if unresolved:  # the job resolves `auto` from its data (training.selection.resolve_monitors)
        raise RuntimeError(f"trainer.{unresolved[0]}=auto was not resolved to a metric before training")
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
    callbacks.append(Checkpointer(dist, checkpoint_dir, resume))
    callbacks.append(BestWeights(cfg.best_monitor, best_weights_path, dist))
    return callbacks
