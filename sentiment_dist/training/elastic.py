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

Every collective of an elastic job happens inside `hvd.elastic.run`: the epochs, then what
follows them (the scores, the threshold, the run dir; `Trainer.fit`'s `then`), closed by a
barrier, so a worker lost after the last epoch is recovered from like one lost mid-epoch (the
others roll back to the end of training and finish without it, the chief's part included).
Training's end (the best epoch's weights put back) is committed, and marked done in the state,
so a rollback or a joining worker comes back to those weights without ending training twice.
Before training nothing waits for the others (`Trainer.evaluate` scores alone there): a worker
that joins runs the command from the top while the others wait in the section.

Which failures are a lost worker: `hvd.elastic.run` rolls back only on an `UnknownError` whose
message names a HorovodAllreduce/Allgather/Broadcast op, and swallows any other `UnknownError`,
returning None as if training had finished. A collective given its own name (the preemption
vote) fails with neither in its message, so here every `UnknownError` that says Horovod has
shut down or that Gloo lost a connection (`LOST_WORKER_MARKS`) is a lost worker, and any other
error is carried past `run` and raised as it was.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import tensorflow as tf
from horovod.common.elastic import State
from horovod.common.exceptions import HorovodInternalError

from sentiment_dist.training import faults
from sentiment_dist.training.checkpoint import Checkpointer, History, Position
from sentiment_dist.training.preemption import HorovodGuard

log = logging.getLogger(__name__)

# What an UnknownError from a collective whose peer is gone says: the op's name, when Horovod
# gave it (what hvd.elastic.run looks for); Horovod's SHUT_DOWN_ERROR, which every pending and
# later collective gets once its background loop stopped; Gloo's transport error ("[.../gloo/
# transport/tcp/pair.cc:589] Read error ...: Connection reset by peer"), which a collective
# already under way gets, named or not (measured: the preemption vote's, `{{node preemption_vote}}`).
LOST_WORKER_MARKS = ("HorovodAllreduce", "HorovodAllgather", "HorovodBroadcast", "Horovod has been shut down", "gloo/")


def lost_a_worker(err: BaseException) -> bool:
    """Whether `err` is a collective that failed because a worker is gone (elastic Horovod runs on Gloo)."""
    return isinstance(err, tf.errors.UnknownError) and any(mark in err.message for mark in LOST_WORKER_MARKS)


class _CarriedPast(Exception):
    """Another error, wrapped so that `hvd.elastic.run` (which swallows any UnknownError it does
    not recognise) lets it through; `ElasticGuard.train` raises the original."""


class _Finished:
    """What the elastic section returns when it ran to its end (`hvd.elastic.run` returns None
    when it swallowed an error)."""

    def __init__(self, result: Any):
        self.result = result


def recovering(action: Callable[[], Any]) -> Any:
    """`action()`, a lost worker raised as HorovodInternalError (rollback and re-form) and any other
    UnknownError carried past `hvd.elastic.run`."""
    try:
        return action()
    except tf.errors.UnknownError as err:
        if lost_a_worker(err):
            raise HorovodInternalError(err) from err
        raise _CarriedPast() from err


class TrainingState(State):
    """The trainer's state as elastic Horovod commits, restores and syncs it."""

    def __init__(self, hvd, variables: list, position: Position, history: History, global_batch: int):
        self.hvd, self.variables, self.position, self.history = hvd, variables, position, history
        self.global_batch = global_batch
        self.ended = False  # training ended: the callbacks' on_train_end ran and was committed
        super().__init__(bcast_object=hvd.broadcast_object, get_rank=hvd.rank)
        self.save()

    def _python_state(self) -> tuple:
        position = dataclasses.replace(self.position, totals=self.position.totals.copy())
        return position, [dict(row) for row in self.history.epochs], self.global_batch, self.ended

    def _apply(self, python_state: tuple) -> None:
        position, rows, self.global_batch, self.ended = python_state
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
        recovering(self._sync)  # hvd.elastic.run calls this outside the section's own conversion

    def _sync(self) -> None:
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

    def train(self, epochs: Callable[[], None], end: Callable[[], None], then: Callable[[], Any]) -> Any:
        variables = list(self.trainer.model.variables) + list(self.trainer.optimizer.variables)
        self.state = TrainingState(self.dist.hvd, variables, self.position, self.history, self.trainer.global_batch)
        # faults first: Horovod has just dropped the host notices it had not acted on
        self.state.register_reset_callbacks([faults.workers_changed, self._on_reset])

        def section() -> _Finished:
            self._adopt(self.state)
            epochs()
            self._stop_recording()
            if not self.state.ended:  # once per job: a rollback restores the committed end
                end()
                self.state.ended = True
                self.state.commit()
            result = then()
            # A barrier: a worker lost while the chief wrote the run dir (or the chief itself) is
            # noticed here by every survivor, who roll back to the end of training and finish again.
            self.dist.broadcast_object(None)
            return _Finished(result)

        try:
            outcome = self.dist.hvd.elastic.run(lambda state: recovering(section))(self.state)
        except _CarriedPast as carried:
            raise carried.__cause__ from None
        if not isinstance(outcome, _Finished):
            raise RuntimeError("hvd.elastic.run returned before training finished (it swallowed an error)")
        return outcome.result

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
                self.dist.world_size, self.describe(),
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
