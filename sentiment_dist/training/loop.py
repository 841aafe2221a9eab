"""One training loop for every strategy.

Keras 3 `fit` cannot run MultiWorkerMirroredStrategy (and Horovod's Keras
wrapper cannot drive Keras 3), so the loop is ours: a replica step computes
the loss on its slice of the global batch, gradients are summed over all
replicas by the `Distribution`, clipped by their global norm, and applied by
one optimizer per parameter group (`sentiment_dist.training.optimizers`).
Keras callbacks (progress bar, early stopping, LR on plateau, weight
averaging, best weights, checkpoints) are driven through a `CallbackList`.
Every step runs through a preemption guard (`sentiment_dist.training.preemption`:
SIGTERM saves where training stands and stops every rank at the same step; under
elastic Horovod, `sentiment_dist.training.elastic`), and training continues from
the checkpoint's position: a run resumed mid-epoch takes the batches an
uninterrupted run would have taken next.

What is optimised is a `Task`: `ClassificationTask` for classifiers,
`LanguageModelTask` for pretraining. A task supplies the replica loss, the
held-out evaluation and the epoch's logs; distribution, clipping, optimizers
and callbacks stay here, written once.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from sentiment_dist.data.pipeline import training_batches
from sentiment_dist.data.tokens import TokenizedSplit
from sentiment_dist.runtime.distribute import Distribution, HorovodDistribution, TracedPerSpec, graph_function
from sentiment_dist.runtime.errors import UserError
from sentiment_dist.training import faults, preemption
from sentiment_dist.training.callbacks import BestWeights
from sentiment_dist.training.checkpoint import Checkpointer, History
from sentiment_dist.training.classification import ClassificationTask
from sentiment_dist.training.optimizers import (
    GroupOptimizers,
    ParamGroup,
    SteppedGroups,
    make_optimizer,
    reduce_gradients_outside,
)

T = TypeVar("T")


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


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

    def validation_logs(self, result: Any) -> dict[str, float]:
        """The `val_*` part of `epoch_logs`, from a held-out evaluation alone."""


def process_age() -> float:
    """Seconds since this process started (Linux: from /proc; elsewhere, since this module loaded)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            started_ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as handle:
            uptime = float(handle.read().split()[0])
        return uptime - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _LOADED


_LOADED = time.perf_counter()


def effective_learning_rate(cfg: DictConfig, num_replicas: int) -> float:
    """`trainer.learning_rate`, scaled by the number of replicas as `trainer.lr_scaling` says."""
    scale = {"none": 1.0, "linear": num_replicas, "sqrt": math.sqrt(num_replicas)}[cfg.lr_scaling]
    return float(cfg.learning_rate) * scale


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
        self.base_learning_rate = effective_learning_rate(cfg, dist.num_replicas)
        self.groups = groups or [ParamGroup("all", list(model.trainable_variables))]
        with dist.scope():
            for group in self.groups:
                group.optimizer = make_optimizer(cfg, self.base_learning_rate * group.multiplier, len(self.groups) > 1)
                group.optimizer.name = group.name  # logged as learning_rate_<group>
                group.optimizer.build(group.variables)
                reduce_gradients_outside(group.optimizer)
        self.optimizer = GroupOptimizers(self.groups)
        self.model.optimizer = self.optimizer  # what Keras callbacks adjust
        self.model.stop_training = False
        dist.broadcast_variables(self.model.variables + self.optimizer.variables)
        self.anchors = self._anchors()
        self._train_step_for = TracedPerSpec(self._trace_train_step)
        self.guard = preemption.Guard(self)  # fit() puts the strategy's own in place while it trains
        self.by_length = bool(cfg.batch_by_length)
        self.seconds_to_first_step: float | None = None  # process start to the first step's start: start-up
        self.evaluator = self.task.evaluator(dist, model, self.global_batch, self.by_length)
        self.fitting = False  # inside `fit`: under elastic Horovod, inside its elastic section

    def _anchors(self) -> dict[str, tuple[tf.Variable, float]]:
        """L2-SP (Li et al., ICML 2018): each variable of a group with `anchor` > 0 is pulled toward
        its value now, when training starts (a fine-tune: the source's), by a penalty of
        anchor / 2 * ||w - w_start||^2, so a small target cannot drag the encoder far from what the
        source learned. Taken after the broadcast, so every rank anchors to the same values; on
        resume the trainer is built from the source again before the checkpoint is restored."""
        anchors = {}
        with self.dist.scope():
            for group in self.groups:
                for variable in group.variables if group.anchor else []:
                    start = tf.Variable(keras.ops.convert_to_numpy(variable), trainable=False, name="l2_sp_anchor")
                    anchors[variable.path] = (start, float(group.anchor))
        return anchors

    def _anchor_penalty(self, variables: list):
        terms = [0.5 * strength * tf.reduce_sum(tf.square(tf.convert_to_tensor(v) - start))
                 for v in variables if v.path in self.anchors for start, strength in [self.anchors[v.path]]]
        return tf.add_n(terms) if terms else None

    def resize(self, global_batch: int) -> float:
        """The number of workers changed (elastic Horovod): train on `global_batch`, rescale the
        learning rates as `trainer.lr_scaling` says, and trace the steps again (they hold the old
        world size). Returns the factor the rates were multiplied by."""
        ratio = 1.0
        if global_batch != self.global_batch:
            rate = effective_learning_rate(self.cfg, global_batch // self.cfg.batch_size)
            ratio, self.base_learning_rate = rate / self.base_learning_rate, rate
            for group in self.groups:
                group.optimizer.learning_rate = float(keras.ops.convert_to_numpy(group.optimizer.learning_rate)) * ratio
        self.global_batch = global_batch
        self._train_step_for.reset()
        self.evaluator = self.task.evaluator(self.dist, self.model, self.global_batch, self.by_length)
        return ratio

    def set_trainable(self, names: set[str]) -> None:
        """Train only the named groups; the others keep their weights bit for bit."""
        for group in self.groups:
            group.trainable = group.name in names
        self._train_step_for.reset()  # retrace with the new set

    # -- steps ------------------------------------------------------------
    def _replica_train_step(self, *batch):
        active = [group for group in self.groups if group.trainable]
        variables = [v for group in active for v in group.variables]
        with tf.GradientTape() as tape:
            loss, stats = self.task.replica_loss(self.model, batch, self.global_batch, self.dist)
            if self.model.losses:  # L2: counted once after summing over replicas
                loss += tf.add_n(self.model.losses) / self.dist.num_replicas
            penalty = self._anchor_penalty(variables) if self.anchors else None
            if penalty is not None:  # L2-SP, likewise once over the replicas
                loss += penalty / self.dist.num_replicas
            first = active[0].optimizer
            scaled = first.scale_loss(loss) if hasattr(first, "scale_loss") else loss
        gradients = [tf.convert_to_tensor(g) for g in tape.gradient(scaled, variables)]
        if faults.planned("in_allreduce"):  # only ever in the fault-tolerance tests
            gradients = self._fault_point_before(gradients)
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

    def _fault_point_before(self, gradients: list) -> list:
        """`gradients`, reduced only after the `in_allreduce` fault point ran (see `faults`)."""
        def point():
            position = self.guard.position
            faults.reached("in_allreduce", self, position.epoch + 1, position.examples // self.global_batch + 1)
            return 0

        with tf.control_dependencies(gradients):
            reached = tf.py_function(point, [], tf.int32)
        with tf.control_dependencies([reached]):
            return [tf.identity(g) for g in gradients]

    def _train_step(self, batch, spec=None):
        """One step on `batch`, traced for `spec` (the loop gives the pipeline's); None: `batch`'s
        own shapes."""
        if spec is None:
            spec = tf.nest.map_structure(lambda value: tf.TensorSpec.from_tensor(tf.convert_to_tensor(value)), batch)
        return self._train_step_for(spec)(batch)

    def _trace_train_step(self, spec) -> Callable:
        def step(batch):
            return self.dist.reduce_sum(self.dist.run(self._replica_train_step, args=batch))

        # Horovod: the preemption vote rides along.
        return graph_function(self.guard.fuse(step), input_signature=[spec])

    def steps_taken(self) -> int:
        """Training steps so far, resumed runs included (the head's optimizer steps every time)."""
        return max(int(group.optimizer.iterations.numpy()) for group in self.groups)

    # -- loops ------------------------------------------------------------
    def evaluate(self, split: TokenizedSplit, *options) -> Any:
        """The task's held-out scores of `split` (a classifier takes a decision threshold).

        Elastic Horovod outside `fit`: every process scores the whole split alone. A worker that
        joins a running job runs what comes before training by itself, so nothing there may wait
        for the others (they are in the elastic section, where collectives are recovered from)."""
        if self.dist.elastic and not self.fitting:
            alone = Distribution(OmegaConf.create({"name": "single"}))
            return self.task.evaluator(alone, self.model, self.global_batch, self.by_length).evaluate(split, *options)
        return self.evaluator.evaluate(split, *options)

    def validation_logs(self, split: TokenizedSplit) -> dict[str, float]:
        """The `val_*` logs an epoch would give for the weights in the model now (sharded over every replica)."""
        return self.task.validation_logs(self.evaluate(split))

    def callbacks_around(self, callbacks: list[keras.callbacks.Callback]) -> list[keras.callbacks.Callback]:
        """`callbacks` in the order the loop drives them at each epoch's end.

        Decisions (warm-up, LR on plateau, early stopping) and the checkpoint
        come first, on the raw weights the run resumes from; then, with
        `trainer.ema_momentum`, Keras' `SwapEMAWeights` puts the moving average
        in place, so the best-epoch weights and the saved model are the average's."""
        checkpointer = [c for c in callbacks if isinstance(c, Checkpointer)] or [Checkpointer(self.dist, None)]
        decisions = [c for c in callbacks if getattr(c, "decides", False)]
        observers = [c for c in callbacks if c not in decisions and not isinstance(c, Checkpointer)]
        averaging = []
        if self.cfg.ema_momentum is not None:
            averaging = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)]
        return [*decisions, *checkpointer, *averaging, *observers]

    def fit(
        self,
        train: TokenizedSplit,
        validation: TokenizedSplit,
        epochs: int,
        callbacks: list[keras.callbacks.Callback],
        verbose: bool = True,
        schedule: Callable[[int], set[str]] | None = None,
        then: Callable[[History], T] | None = None,
    ) -> History | T:
        """Train for `epochs`, resuming from the `Checkpointer` among `callbacks` when it holds state.

        `schedule(epoch)` names the parameter groups that train in that epoch
        (gradual unfreezing); by default every group trains.

        `then(history)`: what follows training on every rank (scores, the run dir); `fit` returns
        what it returns (else the history). Under elastic Horovod it runs inside the elastic
        section, so a worker lost during it is recovered from: the others roll back to the end
        of training and run it again without that worker. It must be safe to repeat.
        """
        steps = len(train) // self.global_batch
        if steps == 0:
            raise UserError(
                f"the training split has {len(train)} examples, fewer than one global batch of "
                f"{self.global_batch}; lower trainer.batch_size or use more data."
            )
        self._check_monitors(callbacks)
        callbacks = self.callbacks_around(callbacks)
        checkpointer = next(c for c in callbacks if isinstance(c, Checkpointer))
        checkpointer.attach(self)
        history, position = checkpointer.restore()
        callback_list = keras.callbacks.CallbackList(
            callbacks, add_history=True, add_progbar=verbose and self.dist.is_chief, model=self.model,
            verbose=1, epochs=epochs, steps=steps,
        )
        for callback in callbacks:
            if isinstance(callback, keras.callbacks.SwapEMAWeights):
                callback.set_model(SteppedGroups(self.groups))
        self.model.stop_training = False
        callback_list.on_train_begin()  # resets Keras callbacks' state, so resume after it
        for callback in callbacks:
            if hasattr(callback, "resume") and history.epochs:
                callback.resume(history.epochs)
        def describe() -> str:
            if position.epoch >= epochs:
                return "the end of training"
            return position.describe(self.global_batch, len(train) // self.global_batch)

        def end() -> None:
            faults.reached("after_training", self)
            if position.epoch < epochs and not self.model.stop_training:  # only early stopping ends sooner
                raise RuntimeError(f"training ended after {position.epoch} of {epochs} epochs, with no error raised")
            callback_list.on_train_end()

        self.fitting = True
        try:
            with self._guard(checkpointer, describe, (callbacks, callback_list)) as guard:
                self.guard = guard
                self._train_step_for.reset()  # Horovod traces its preemption vote into the step
                return guard.train(
                    lambda: self._epochs(train, validation, epochs, callback_list, checkpointer, schedule),
                    end, lambda: then(history) if then else history,
                )
        except BaseException:
            if verbose and self.dist.is_chief:
                print(flush=True)  # end the progress bar's line, so that what the error says starts its own
            raise
        finally:
            self.fitting = False
            self.guard = preemption.Guard(self)
            self._train_step_for.reset()

    def _check_monitors(self, callbacks: list[keras.callbacks.Callback]) -> None:
        """A monitor that names no logged metric is refused before the first step: Keras' early
        stopping and LR-on-plateau only warn and stay off, and the best epoch would be found
        missing after a whole epoch, leaving a run dir behind."""
        logged = self.task.metric_names(self.model) | {"learning_rate", "epoch_seconds", "examples_per_second"}
        settings = {BestWeights: "best_monitor", keras.callbacks.EarlyStopping: "early_stopping.monitor",
                    keras.callbacks.ReduceLROnPlateau: "lr_on_plateau.monitor"}
        for callback in callbacks:
            setting = next((key for kind, key in settings.items() if isinstance(callback, kind)), None)
            if setting and callback.monitor not in logged:
                raise UserError(f"trainer.{setting}={callback.monitor} is not a logged metric; use one of "
                                f"{sorted(logged)}.")

    def _guard(self, checkpointer: Checkpointer, describe: Callable[[], str], callbacks: tuple) -> preemption.Guard:
        """The preemption guard for this strategy; the base one when there is nowhere to save.
        `callbacks`: the training's callbacks and their CallbackList (elastic Horovod brings a
        worker that joined up to date through them)."""
        if not checkpointer.saves:
            return preemption.Guard(self, checkpointer, describe)
        if self.dist.elastic:
            from sentiment_dist.training.elastic import ElasticGuard  # imports Horovod

            return ElasticGuard(self, checkpointer, describe, callbacks)
        if isinstance(self.dist, HorovodDistribution):
            return preemption.HorovodGuard(self, checkpointer, describe)
        return preemption.TensorFlowGuard(self, checkpointer, describe)

    def _epochs(self, train: TokenizedSplit, validation: TokenizedSplit, epochs: int,
                callback_list: keras.callbacks.CallbackList, checkpointer: Checkpointer,
                schedule: Callable[[int], set[str]] | None) -> None:
        """The epochs from `checkpointer.position` on (elastic Horovod calls this again after a reset)."""
        position = checkpointer.position
        while position.epoch < epochs and not self.model.stop_training:  # early stopping may have ended it
            epoch = position.epoch
            if schedule is not None:
                self.set_trainable(schedule(epoch))
            callback_list.on_epoch_begin(epoch)
            position.start_epoch(self.global_batch)
            started = time.perf_counter() - position.seconds
            batches = self.dist.distribute_dataset(
                lambda shard, epoch=epoch, start=position.examples, order=position.order_batch: training_batches(
                    train, self.global_batch, self.seed, epoch, shard, self.by_length, start, order
                )
            )
            train_step = functools.partial(self._train_step, spec=batches.element_spec)
            for batch in batches:
                step = position.examples // self.global_batch
                if self.seconds_to_first_step is None:
                    self.seconds_to_first_step = process_age()
                callback_list.on_train_batch_begin(step)
                position.advance(self.guard.run(train_step, batch).numpy(), self.global_batch)
                position.seconds = time.perf_counter() - started
                running = self.task.progress(position.totals)
                callback_list.on_train_batch_end(step, running)
                if not math.isfinite(running["loss"]):
                    self.model.stop_training = True
                    raise TrainingDiverged(
                        f"the training loss became {running['loss']} at epoch {epoch + 1}, step {step + 1}; lower "
                        "trainer.learning_rate or set trainer.gradient_clip_norm" + checkpointer.kept_note() + "."
                    )
                self.guard.after_step()
                faults.reached("between_steps", self, epoch + 1, step + 1)
                if self.cfg.get("max_steps") and self.steps_taken() >= self.cfg.max_steps:
                    self.model.stop_training = True  # this epoch is validated and ends the run
                    break
            seconds, examples, totals = time.perf_counter() - started, position.examples, position.totals
            # Validation sees the averaged weights (if any): SwapEMAWeights swaps them in for the test.
            callback_list.on_test_begin()
            faults.reached("validation", self, epoch + 1)
            result = self.evaluate(validation)
            callback_list.on_test_end()
            logs = {
                **self.task.epoch_logs(totals, result, seconds),
                "learning_rate": self.optimizer.learning_rate,
                "epoch_seconds": seconds,
                "examples_per_second": examples / seconds,
            }
            position.finish_epoch()  # what the checkpointer saves, in on_epoch_end
            callback_list.on_epoch_end(epoch, logs)
            self.guard.after_epoch()
