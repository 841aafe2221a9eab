"""Elastic Horovod: training goes on when a worker dies, and takes it back when it returns.

`strategy=horovod_elastic` runs the training loop under `hvd.elastic.run`. The state is
committed to host memory every `strategy.commit_steps` steps and at the end of every epoch:
the model's and optimizers' variables, the position in the epoch's data, the finished epochs'
history and the global batch. When a collective fails (a worker died) every survivor rolls
back to the last commit, Horovod re-forms the ring from the hosts its discovery script lists,
and the loop starts again from the committed position; when the discovery script lists a host
again, the workers re-form at their next commit and the new one joins. Each (re)start begins
with a sync that gives every worker rank 0's state, so a worker that joined has everything.

Why not `hvd.elastic.TensorFlowKerasState`: it fails with Keras 3 (it assigns through
tf.Variable internals Keras 3 variables lack). This state snapshots variables as NumPy
arrays and broadcasts them by value, as `HorovodDistribution.broadcast_variables` does.

What depends on the world is read again at every reset: ranks and who the chief is (live in
`HorovodDistribution`), each worker's slice of the global batch (the data is re-sharded when
the loop restarts), the steps traced for the old size (traced again), and with
`strategy.elastic_batch=per_worker` the global batch and the learning rate
(`trainer.lr_scaling`). The default, `global`, keeps the global batch, so each worker's share
grows when one leaves: training follows the same trajectory as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import tensorflow as tf
from horovod.common.elastic import State

from sentiment_dist.training.checkpoint import Checkpointer, History, Position
from sentiment_dist.training.preemption import HorovodGuard

log = logging.getLogger(__name__)


class TrainingState(State):
    """The trainer's state as elastic Horovod commits, restores and syncs it."""

    def __init__(self, hvd, variables: list, position: Position, history: History, global_batch: int):
        self.hvd, self.variables, self.position, self.history = hvd, variables, position, history
        self.global_batch = global_batch
        super().__init__(bcast_object=hvd.broadcast_object, get_rank=hvd.rank)
        self.save()

    def _python_state(self) -> tuple:
        position = dataclasses.replace(self.position, totals=self.position.totals.copy())
        return position, [dict(row) for row in self.history.epochs], self.global_batch

    def _apply(self, python_state: tuple) -> None:
        position, rows, self.global_batch = python_state
        for field in dataclasses.fields(Position):  # in place: the training loop holds these objects
            value = getattr(position, field.name)
            setattr(self.position, field.name, value.copy() if field.name == "totals" else value)
        self.history.epochs[:] = [dict(row) for row in rows]

    def save(self) -> None:
        self._values = [variable.numpy() for variable in self.variables]
        self._saved = self._python_state()

    def restore(self) -> None:
        for variable, value in zip(self.variables, self._values, strict=True):
            variable.assign(value)
        self._apply(self._saved)

    def sync(self) -> None:
        for index, variable in enumerate(self.variables):
            variable.assign(self.hvd.broadcast(tf.convert_to_tensor(variable), root_rank=0, name=f"elastic_sync_{index}"))
        self._apply(self.hvd.broadcast_object(self._python_state(), root_rank=0))
        self.save()


class ElasticGuard(HorovodGuard):
    """Horovod's preemption vote, plus commits, rollback and re-forming (see the module doc)."""

    def __init__(self, trainer, checkpointer: Checkpointer, describe: Callable[[], str], callbacks):
        super().__init__(trainer, checkpointer, describe)
        self.callbacks, self.callback_list = callbacks
        self.commit_steps = int(self.dist.cfg.get("commit_steps", 20))
        self.keep_global_batch = self.dist.cfg.get("elastic_batch", "global") == "global"
        self.history = checkpointer.history
        self.callbacks_seen = len(self.history.epochs)  # epochs the callbacks' counters have seen
        self.uncommitted = 0

    def train(self, epochs: Callable[[], None]) -> None:
        variables = list(self.trainer.model.variables) + list(self.trainer.optimizer.variables)
        self.state = TrainingState(self.dist.hvd, variables, self.position, self.history, self.trainer.global_batch)
        self.state.register_reset_callbacks([self._on_reset])

        @self.dist.hvd.elastic.run
        def run(state: TrainingState) -> None:
            self._adopt(state)
            epochs()

        run(self.state)

    def _adopt(self, state: TrainingState) -> None:
        """After a sync: the job's global batch, and callbacks that know the synced epochs."""
        if state.global_batch != self.trainer.global_batch:
            self.trainer.resize(state.global_batch)
        if len(self.history.epochs) != self.callbacks_seen:  # a worker that joined mid-job
            self.callback_list.on_train_begin()
            for callback in self.callbacks:
                if hasattr(callback, "resume") and self.history.epochs:
                    callback.resume(self.history.epochs)
            self.callbacks_seen = len(self.history.epochs)
        self.uncommitted = 0

    def _on_reset(self) -> None:
        """The workers changed (Horovod has re-initialised; the sync comes next)."""
        trainer = self.trainer
        global_batch = trainer.global_batch if self.keep_global_batch else trainer.cfg.batch_size * self.dist.num_replicas
        ratio = trainer.resize(global_batch)
        for callback in self.callbacks:
            if hasattr(callback, "rescale"):
                callback.rescale(ratio)
        self.state.global_batch = trainer.global_batch
        self.dist.notify_reset()
        if self.dist.is_chief:
            log.warning(
                "Workers changed: %d now; resuming at %s with a global batch of %d (%d per worker) and learning rate %.3g.",
                self.dist.world_size, self.position.describe(trainer.global_batch),
                trainer.global_batch, trainer.global_batch // self.dist.world_size, trainer.base_learning_rate,
            )

    def after_step(self) -> None:
        self.uncommitted += 1
        if self.uncommitted >= self.commit_steps:
            self.uncommitted = 0
            self.state.commit()

    def after_epoch(self) -> None:
        self.callbacks_seen = len(self.history.epochs)
        self.uncommitted = 0
        self.state.commit()
