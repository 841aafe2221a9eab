"""One training loop for every strategy.

Keras 3 `fit` cannot run MultiWorkerMirroredStrategy (and Horovod's Keras
wrapper cannot drive Keras 3), so the loop is ours: a replica step computes
the loss on its slice of the global batch, gradients are summed over all
replicas by the `Distribution`, clipped by their global norm, and applied by
one optimizer per parameter group (discriminative learning rates). Keras
callbacks (progress bar, early stopping, LR on plateau, NaN guard) are driven
through a `CallbackList`; resume state lives in `tf.train.CheckpointManager`.
With `trainer.ema_momentum`, what is validated, selected and saved is the
optimizer's moving average of the weights (Polyak averaging).

What is optimised is a `Task`: `ClassificationTask` (per-example
cross-entropy) for classifiers, `LanguageModelTask`
(`sentiment_dist.language_model`) for pretraining. A task supplies the
replica loss, the held-out evaluation and the epoch's logs; distribution,
clipping, optimizers, callbacks and checkpoints stay here, written once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from sentiment_dist.data.pipeline import TokenizedSplit, evaluation_batches, training_batches
from sentiment_dist.distribute import Distribution
from sentiment_dist.errors import UserError
from sentiment_dist.io import atomic_write_json, read_json
from sentiment_dist.models import per_example_loss, predicted_class

log = logging.getLogger(__name__)

# `ema` is Keras' own moving average of the weights (use_ema, ema_momentum), or nothing.
OPTIMIZERS = {
    "adam": lambda lr, cfg, **ema: keras.optimizers.Adam(lr, **ema),
    "adamw": lambda lr, cfg, **ema: keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay, **ema),
    "sgd": lambda lr, cfg, **ema: keras.optimizers.SGD(lr, momentum=cfg.momentum, **ema),
    "rmsprop": lambda lr, cfg, **ema: keras.optimizers.RMSprop(lr, **ema),
}


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass
class ParamGroup:
    """Variables trained together at `multiplier` times the base learning rate."""

    name: str
    variables: list
    multiplier: float = 1.0
    optimizer: keras.optimizers.Optimizer | None = None
    trainable: bool = True


def param_groups(variables: dict[str, list], multipliers, setting: str) -> list[ParamGroup]:
    """One group per entry of `variables` (layer group -> variables) at
    `multipliers[group]` times the base rate (discriminative learning rates);
    `setting` names the config key in the one-sentence errors."""
    multipliers = dict(multipliers)
    if sorted(multipliers) != sorted(variables):
        raise UserError(f"{setting} has groups {sorted(multipliers)}; give exactly {list(variables)}.")
    for name, value in multipliers.items():
        if not isinstance(value, int | float) or not value > 0:
            raise UserError(f"{setting}.{name}={value!r} must be a positive number (freeze a group another way).")
    return [ParamGroup(name, group, float(multipliers[name])) for name, group in variables.items()]


class OptimizerGroup:
    """What Keras callbacks see as `model.optimizer`.

    With several groups, `ReduceLROnPlateau` reduces each of `optimizers` in
    turn, which keeps the ratios between groups, and logs each group's rate as
    `learning_rate_<group>`; with one, it sees a plain optimizer. `learning_rate`
    is the base rate (multiplier 1).
    """

    def __init__(self, groups: list[ParamGroup]):
        self.groups = groups
        self.all = [group.optimizer for group in groups]
        if len(groups) > 1:
            self.optimizers = self.all

    @property
    def learning_rate(self) -> float:
        group = self.groups[0]
        return float(keras.ops.convert_to_numpy(group.optimizer.learning_rate)) / group.multiplier

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        for group in self.groups:
            group.optimizer.learning_rate = value * group.multiplier

    @property
    def iterations(self):
        return self.all[0].iterations

    @property
    def variables(self) -> list:
        return [v for optimizer in self.all for v in optimizer.variables]


@dataclass
class EvaluationResult:
    loss: float
    confusion: np.ndarray  # [true, predicted], counts of real examples

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(self.count, 1))


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)

    def as_columns(self) -> dict[str, list]:
        keys = sorted({key for epoch in self.epochs for key in epoch})
        return {key: [epoch.get(key) for epoch in self.epochs] for key in keys}


class Evaluator:
    """Loss and confusion matrix over a split, sharded over every replica."""

    def __init__(self, dist: Distribution, model: keras.Model, num_classes: int, global_batch: int,
                 by_length: bool = False):
        self.dist, self.model, self.num_classes, self.global_batch = dist, model, num_classes, global_batch
        self.by_length = by_length  # batches sorted by length and cut to their longest row

        @tf.function(reduce_retracing=True)  # by_length: one trace for every batch length
        def step(batch):
            return dist.reduce_sum(dist.run(self._replica_step, args=batch))

        self._step = step

    def _replica_step(self, tokens, labels, weights):
        probabilities = self.model(tokens, training=False)
        losses = per_example_loss(labels, probabilities, self.num_classes)
        predicted = predicted_class(probabilities, self.num_classes)
        confusion = tf.math.confusion_matrix(labels, predicted, self.num_classes, weights=weights, dtype=tf.float32)
        # Padding rows are all-zero tokens: mean pooling over an empty mask gives NaN, and NaN * 0 is NaN.
        return tf.reduce_sum(tf.where(weights > 0, losses * weights, 0.0)), confusion

    def evaluate(self, split: TokenizedSplit) -> EvaluationResult:
        """Every example of `split` counted exactly once (padding has weight 0)."""
        loss_sum, confusion = 0.0, np.zeros((self.num_classes, self.num_classes))
        batches = self.dist.distribute_dataset(
            lambda shard: evaluation_batches(split, self.global_batch, shard, self.by_length)
        )
        for batch in batches:
            batch_loss, batch_confusion = self._step(batch)
            loss_sum += float(batch_loss)
            confusion += batch_confusion.numpy()
        confusion = np.rint(confusion).astype(np.int64)
        return EvaluationResult(loss_sum / max(int(confusion.sum()), 1), confusion)


class Task(Protocol):
    """What the trainer optimises and how an epoch is scored."""

    def replica_loss(self, model: keras.Model, batch: tuple, global_batch: int, dist: Distribution) -> tuple[Any, Any]:
        """This replica's share of the global mean loss (summed over replicas
        it is the loss of the whole global batch), and its statistics
        `[loss sum, correct, count]` to be summed over replicas."""

    def progress(self, totals: np.ndarray) -> dict[str, float]:
        """Running logs from the summed statistics; `loss` first."""

    def evaluator(self, dist: Distribution, model: keras.Model, global_batch: int, by_length: bool) -> Any:
        """An object whose `evaluate(split)` scores held-out data (`by_length`: see `evaluation_batches`)."""

    def epoch_logs(self, totals: np.ndarray, result: Any, seconds: float) -> dict[str, float]:
        """Training and validation metrics of one epoch (`val_loss` among them)."""


class ClassificationTask:
    """Per-example cross-entropy of a classifier, summed over the global batch."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def replica_loss(self, model, batch, global_batch, dist):
        tokens, labels, weights = batch
        probabilities = model(tokens, training=True)
        losses = per_example_loss(labels, probabilities, self.num_classes)
        correct = tf.cast(tf.equal(predicted_class(probabilities, self.num_classes), labels), tf.float32)
        real = tf.cast(weights > 0, tf.float32)
        stats = tf.stack([tf.reduce_sum(losses * weights), tf.reduce_sum(correct * real), tf.reduce_sum(real)])
        return tf.reduce_sum(losses * weights) / global_batch, stats

    def progress(self, totals):
        return {"loss": totals[0] / totals[2], "accuracy": totals[1] / max(totals[2], 1)}

    def evaluator(self, dist, model, global_batch, by_length=False):
        return Evaluator(dist, model, self.num_classes, global_batch, by_length)

    def epoch_logs(self, totals, result, seconds):
        return {
            "loss": totals[0] / totals[2],
            "accuracy": totals[1] / totals[2],
            "val_loss": result.loss,
            "val_accuracy": result.accuracy,
            "val_macro_f1": macro_f1(result.confusion),
        }


class Trainer:
    """Trains a model on a `Task` under a `Distribution`; identical on every rank.

    `task` is a `Task`, or a number of classes for the classification task."""

    def __init__(
        self,
        dist: Distribution,
        model: keras.Model,
        task: Task | int,
        cfg: DictConfig,
        seed: int,
        groups: list[ParamGroup] | None = None,
    ):
        self.dist = dist
        self.model = model
        self.task = ClassificationTask(task) if isinstance(task, int) else task
        self.cfg = cfg
        self.seed = seed
        self.global_batch = cfg.batch_size * dist.num_replicas
        self.base_learning_rate = self._effective_learning_rate()
        if cfg.gradient_clip_norm is not None and cfg.gradient_clip_norm <= 0:
            raise UserError("trainer.gradient_clip_norm must be positive or null.")
        self.groups = groups or [ParamGroup("all", list(model.trainable_variables))]
        with dist.scope():
            for group in self.groups:
                group.optimizer = self._make_optimizer(self.base_learning_rate * group.multiplier)
                group.optimizer.name = group.name  # logged as learning_rate_<group>
                group.optimizer.build(group.variables)
                dist.prepare_optimizer(group.optimizer)
        self.optimizer = OptimizerGroup(self.groups)
        self.model.optimizer = self.optimizer  # what Keras callbacks adjust
        self.model.stop_training = False
        dist.broadcast_variables(self.model.variables + self.optimizer.variables)
        self._train_step_fn = None
        self.by_length = bool(cfg.get("batch_by_length"))
        self.evaluator = self.task.evaluator(dist, model, self.global_batch, self.by_length)

    # -- set-up -----------------------------------------------------------
    def _effective_learning_rate(self) -> float:
        rate = self.cfg.learning_rate
        if not isinstance(rate, int | float) or not 0 < rate < math.inf:
            raise UserError(f"trainer.learning_rate={rate!r} must be a positive number, e.g. 0.001.")
        scaling = self.cfg.lr_scaling
        if scaling == "none":
            return float(self.cfg.learning_rate)
        if scaling == "linear":
            return float(self.cfg.learning_rate) * self.dist.num_replicas
        if scaling == "sqrt":
            return float(self.cfg.learning_rate) * math.sqrt(self.dist.num_replicas)
        raise UserError(f"trainer.lr_scaling={scaling!r} is unknown; use none, linear or sqrt.")

    def _make_optimizer(self, learning_rate: float) -> keras.optimizers.Optimizer:
        if self.cfg.optimizer not in OPTIMIZERS:
            raise UserError(f"trainer.optimizer={self.cfg.optimizer!r} is unknown; use one of {', '.join(OPTIMIZERS)}.")
        momentum = self.cfg.get("ema_momentum")
        if momentum is not None and not (isinstance(momentum, int | float) and 0 < momentum < 1):
            raise UserError(f"trainer.ema_momentum={momentum!r} must be between 0 and 1 (e.g. 0.999), or null for off.")
        ema = {"use_ema": True, "ema_momentum": float(momentum)} if momentum is not None else {}
        optimizer = OPTIMIZERS[self.cfg.optimizer](learning_rate, self.cfg, **ema)
        if keras.mixed_precision.global_policy().name == "mixed_float16":
            if len(self.groups) > 1:
                raise UserError(
                    "trainer.precision=mixed_float16 cannot scale the loss for several learning-rate "
                    "groups (fine-tuning, continued pretraining); use trainer.precision=mixed_bfloat16, or "
                    "lm.lr_multipliers=null for one group when continuing pretraining."
                )
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        return optimizer

    def set_trainable(self, names: set[str]) -> None:
        """Train only the named groups; the others keep their weights bit for bit."""
        for group in self.groups:
            group.trainable = group.name in names
        self._train_step_fn = None  # retrace with the new set

    # -- weight averaging ----------------------------------------------------
    def _swap_in_averages(self) -> list[tuple[Any, np.ndarray]]:
        """Put each trained weight's moving average (trainer.ema_momentum) in its
        place; returns (variable, weight it had) to put back.

        The optimizer updates the average after every step it applies, on every
        replica alike, so it is the same under every strategy; a group that has
        not taken a step yet (frozen so far) has no average and keeps its weights.
        """
        swapped = []
        for group in self.groups:
            optimizer = getattr(group.optimizer, "inner_optimizer", group.optimizer)
            if not optimizer.use_ema or int(optimizer.iterations.numpy()) == 0:
                continue
            # Keras keeps the averages in the order of the variables it was built with.
            for variable, average in zip(group.variables, optimizer._model_variables_moving_average, strict=True):
                swapped.append((variable, variable.numpy()))
                variable.assign(average)
        return swapped

    @contextlib.contextmanager
    def averaged_weights(self):
        """Score (and let callbacks keep) the averaged weights; training goes on from its own."""
        swapped = self._swap_in_averages()
        try:
            yield
        finally:
            for variable, value in swapped:
                variable.assign(value)

    # -- steps ------------------------------------------------------------
    def _replica_train_step(self, *batch):
        active = [group for group in self.groups if group.trainable]
        variables = [v for group in active for v in group.variables]
        with tf.GradientTape() as tape:
            loss, stats = self.task.replica_loss(self.model, batch, self.global_batch, self.dist)
            if self.model.losses:  # L2: counted once after summing over replicas
                loss += tf.add_n(self.model.losses) / self.dist.num_replicas
            first = active[0].optimizer
            scaled = first.scale_loss(loss) if hasattr(first, "scale_loss") else loss
        gradients = [tf.convert_to_tensor(g) for g in tape.gradient(scaled, variables)]
        gradients = self.dist.all_reduce_sum(gradients)
        if self.cfg.gradient_clip_norm:
            scale = getattr(first, "dynamic_scale", 1.0)
            gradients, _ = tf.clip_by_global_norm(gradients, self.cfg.gradient_clip_norm * scale)
        start = 0
        for group in active:
            count = len(group.variables)
            group.optimizer.apply_gradients(zip(gradients[start : start + count], group.variables, strict=True))
            start += count
        return stats

    def _train_step(self, batch):
        if self._train_step_fn is None:
            if not any(group.trainable for group in self.groups):
                raise UserError("every layer group is frozen; unfreeze at least one (finetune.freeze).")

            @tf.function(reduce_retracing=True)  # by_length: one trace for every batch length
            def step(batch):
                return self.dist.reduce_sum(self.dist.run(self._replica_train_step, args=batch))

            self._train_step_fn = step
        return self._train_step_fn(batch)

    # -- loops ------------------------------------------------------------
    def evaluate(self, split: TokenizedSplit) -> Any:
        return self.evaluator.evaluate(split)

    def fit(
        self,
        train: TokenizedSplit,
        validation: TokenizedSplit,
        epochs: int,
        callbacks: list[keras.callbacks.Callback],
        checkpoint_dir: str | None = None,
        verbose: bool = True,
        schedule: Callable[[int], set[str]] | None = None,
    ) -> History:
        """Train for `epochs` (resuming from `checkpoint_dir` when it holds state).

        `schedule(epoch)` names the parameter groups that train in that epoch
        (gradual unfreezing); by default every group trains.
        """
        steps = len(train) // self.global_batch
        if steps == 0:
            raise UserError(
                f"the training split has {len(train)} examples, fewer than one global batch of "
                f"{self.global_batch}; lower trainer.batch_size or use more data."
            )
        checkpoint = Checkpointer(self, checkpoint_dir) if checkpoint_dir else None
        history = checkpoint.restore() if checkpoint else History()
        first_epoch = len(history.epochs)
        callback_list = keras.callbacks.CallbackList(
            callbacks,
            add_history=True,
            add_progbar=verbose and self.dist.is_chief,
            model=self.model,
            verbose=1,
            epochs=epochs,
            steps=steps,
        )
        self.model.stop_training = False
        callback_list.on_train_begin()  # resets Keras callbacks' state, so resume after it
        for callback in callbacks:
            if hasattr(callback, "resume") and history.epochs:
                callback.resume(history.epochs)
        for epoch in range(first_epoch, epochs):
            if self.model.stop_training:  # early stopping had ended the run before it was interrupted
                break
            if schedule is not None:
                self.set_trainable(schedule(epoch))
            callback_list.on_epoch_begin(epoch)
            started = time.perf_counter()
            totals = np.zeros(3)
            batches = self.dist.distribute_dataset(
                lambda shard, epoch=epoch: training_batches(
                    train, self.global_batch, self.seed, epoch, shard, self.by_length
                )
            )
            for step, batch in enumerate(batches):
                callback_list.on_train_batch_begin(step)
                totals += self._train_step(batch).numpy()
                running = self.task.progress(totals)
                loss = running["loss"]
                callback_list.on_train_batch_end(step, running)
                if not math.isfinite(loss):
                    self.model.stop_training = True
                    raise TrainingDiverged(
                        f"the training loss became {loss} at epoch {epoch + 1}, step {step + 1}; lower "
                        "trainer.learning_rate or set trainer.gradient_clip_norm"
                        + (
                            f" (the last good checkpoint, kept, is in {checkpoint.directory})"
                            if checkpoint and tf.train.latest_checkpoint(checkpoint.directory)
                            else ""
                        )
                        + "."
                    )
            seconds = time.perf_counter() - started
            # Validation, early stopping and the best-epoch weights see the averaged weights (if any);
            # the checkpoint keeps the raw ones (and the averages, in the optimizer) to resume from.
            with self.averaged_weights():
                result = self.evaluate(validation)
                logs = {
                    **self.task.epoch_logs(totals, result, seconds),
                    "learning_rate": self.optimizer.learning_rate,
                    "epoch_seconds": seconds,
                    "examples_per_second": steps * self.global_batch / seconds,
                }
                callback_list.on_epoch_end(epoch, logs)
            history.epochs.append({"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}})
            if checkpoint:
                checkpoint.save(history)
        self._swap_in_averages()  # the model ends with the averages (the best epoch's, once BestWeights restores)
        callback_list.on_train_end()
        return history


class Checkpointer:
    """Resume state: model, optimizers and finished epochs, saved every epoch."""

    HISTORY = "history.json"

    def __init__(self, trainer: Trainer, directory: str):
        self.directory = directory
        self.dist = trainer.dist
        state = {f"optimizer_{i}": opt for i, opt in enumerate(trainer.optimizer.all)}
        self.checkpoint = tf.train.Checkpoint(model=trainer.model, **state)
        self.write_dir = trainer.dist.checkpoint_write_dir(directory)
        self.manager = (
            tf.train.CheckpointManager(self.checkpoint, self.write_dir, max_to_keep=2) if self.write_dir else None
        )

    def restore(self) -> History:
        latest = tf.train.latest_checkpoint(self.directory)
        history_path = os.path.join(self.directory, self.HISTORY)
        if not latest or not os.path.exists(history_path):
            return History()
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        self.dist.broadcast_variables(self.checkpoint.model.variables)
        history = History(read_json(history_path)[: int(latest.rsplit("-", 1)[1])])
        if self.dist.is_chief:
            log.info("Resuming from %s after epoch %d.", latest, len(history.epochs))
        return history

    def save(self, history: History) -> None:
        if self.manager is None:
            return
        # History first: restore() trims it to the checkpoint's epoch count.
        if self.dist.is_chief:
            atomic_write_json(os.path.join(self.directory, self.HISTORY), history.epochs)
        self.manager.save(checkpoint_number=len(history.epochs))
        if self.write_dir != self.directory:  # a worker's scratch copy
            shutil.rmtree(self.write_dir, ignore_errors=True)


def macro_f1(confusion: np.ndarray) -> float:
    return float(np.mean(per_class_scores(confusion)["f1"]))


def per_class_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix."""
    true_positive = np.diag(confusion).astype(float)
    predicted = confusion.sum(axis=0)
    actual = confusion.sum(axis=1)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, actual, out=np.zeros_like(true_positive), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": actual}
