"""Resume state: the model, every optimizer, and where training stands, saved after each epoch
and, on preemption, at the step where training stopped.

`tf.train.Checkpoint` + `CheckpointManager` work under every strategy (Keras' BackupAndRestore
is a `fit` feature). Every process takes part in a save (MultiWorkerMirroredStrategy may run
collectives in it); only the chief's copy is kept (`Distribution.checkpoint_write_dir`).

A resume reads the newest checkpoint that is whole: each candidate is read tensor by tensor
first (a truncated data file fails only inside `restore`, with `IndexError: Read less bytes
than requested`), and an unreadable one is skipped with a one-line warning. When none is
readable the run stops in one sentence that names the fix.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from sentiment_dist.runtime.distribute import Distribution
from sentiment_dist.runtime.errors import UserError
from sentiment_dist.runtime.io import atomic_write_json, disk_error, read_json, remedy

log = logging.getLogger(__name__)

HISTORY_FILE = "history.json"  # the finished epochs' logs, beside the checkpoints
KEEP = 2  # checkpoints kept: the newest, and one to fall back to when it is damaged


class History:
    """One record of logs per finished epoch."""

    def __init__(self, epochs: list[dict] | None = None):
        self.epochs = list(epochs or [])

    def as_columns(self) -> dict[str, list]:
        keys = sorted({key for epoch in self.epochs for key in epoch})
        return {key: [epoch.get(key) for epoch in self.epochs] for key in keys}


@dataclass
class Position:
    """Where training stands: `epoch` epochs finished and, of the next one, `examples` of its
    seeded order trained on. The order was cut for `order_batch` (the global batch when the
    epoch started; it matters to `trainer.batch_by_length`), `totals` are the task's summed
    statistics over those examples and `seconds` the time they took, so that the epoch's
    logged loss, accuracy and throughput come out as if it had not been interrupted."""

    epoch: int = 0
    examples: int = 0
    order_batch: int = 0
    totals: np.ndarray = field(default_factory=lambda: np.zeros(3))
    seconds: float = 0.0

    def start_epoch(self, global_batch: int) -> None:
        if self.examples == 0:
            self.order_batch, self.totals, self.seconds = global_batch, np.zeros(3), 0.0

    def advance(self, stats: np.ndarray, examples: int) -> None:
        self.totals = self.totals + stats
        self.examples += examples

    def finish_epoch(self) -> None:
        self.epoch, self.examples, self.order_batch = self.epoch + 1, 0, 0
        self.totals, self.seconds = np.zeros(3), 0.0

    def describe(self, global_batch: int, steps: int | None = None) -> str:
        if self.examples == 0:
            return f"the start of epoch {self.epoch + 1}"
        return f"epoch {self.epoch + 1}, step {self.examples // global_batch}" + (f" of {steps}" if steps else "")


def unreadable(path: str) -> str | None:
    """Why the checkpoint at `path` cannot be restored (None: every tensor reads).

    Reading every tensor costs about as much as the restore itself (50 ms for 51 MB)."""
    try:
        reader = tf.train.load_checkpoint(path)
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    except (tf.errors.OpError, IndexError, ValueError, OSError) as err:
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0][:120] if str(err).strip() else ''}".rstrip(": ")
    return None


def _numbered(directory: str) -> list[str]:
    """The checkpoints in `directory`, newest first (by their number, not the state file,
    which may itself be what is damaged)."""
    paths = [index[: -len(".index")] for index in glob.glob(os.path.join(directory, "ckpt-*.index"))]
    return sorted(paths, key=lambda path: int(re.sub(r".*-", "", path)), reverse=True)


class Checkpointer(keras.callbacks.Callback):
    """Records each epoch's logs and, given a directory, saves resume state after it.

    The trainer runs it after the callbacks that decide (LR on plateau, early
    stopping) and before weight averaging swaps the average in, so the saved
    model is the raw one training continues from and the saved learning rates
    are the lowered ones. `resume=False` starts over: the directory's old
    checkpoints are removed."""

    def __init__(self, dist: Distribution, directory: str | None, resume: bool = True):
        super().__init__()
        self.dist, self.directory, self.resuming = dist, directory, resume
        self.history = History()
        self.position = Position()
        self.checkpoint = None

    def attach(self, trainer) -> None:
        """Track `trainer`'s model and optimizers (called by the trainer before `restore`)."""
        if self.directory is None:
            return
        state = {f"optimizer_{i}": optimizer for i, optimizer in enumerate(trainer.optimizer.optimizers)}
        # Plain (per-process) variables, outside any strategy scope: every rank holds the same position.
        self._position = tf.Variable(tf.zeros(3, tf.int64), trainable=False, name="position")
        self._totals = tf.Variable(tf.zeros(3, tf.float64), trainable=False, name="epoch_totals")
        self._seconds = tf.Variable(tf.zeros((), tf.float64), trainable=False, name="epoch_seconds")
        self.checkpoint = tf.train.Checkpoint(model=trainer.model, position=self._position,
                                              epoch_totals=self._totals, epoch_seconds=self._seconds, **state)

    @property
    def saves(self) -> bool:
        return self.checkpoint is not None

    def restore(self) -> tuple[History, Position]:
        """The finished epochs of an interrupted attempt and where it stopped (nothing for a new
        run), their state restored. Every rank reads the same files and chooses alike."""
        if self.checkpoint is None:
            return self.history, self.position
        if self.dist.is_chief:
            self._remove_leftovers()
        latest = self._newest_readable() if self.resuming else None
        if latest is None:
            return self.history, self.position
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        self.dist.broadcast_variables(self.checkpoint.model.variables)
        epoch, examples, order_batch = (int(v) for v in self._position.numpy())
        history_path = os.path.join(self.directory, HISTORY_FILE)
        try:
            rows = read_json(history_path) if epoch else []
        except (OSError, ValueError):
            rows = []
        if len(rows) < epoch:
            raise UserError(f"{history_path} is missing or lists {len(rows)} epochs, but {latest} was saved after "
                            f"{epoch}; rerun with trainer.resume=false to start over.")
        self.history = History(rows[:epoch])
        self.position = Position(epoch, examples, order_batch, self._totals.numpy().copy(), float(self._seconds.numpy()))
        if self.dist.is_chief:
            where = f"epoch {epoch + 1} after {examples} examples" if examples else f"after epoch {epoch}"
            log.info("Resuming from %s: %s.", latest, where)
        return self.history, self.position

    def _remove_leftovers(self) -> None:
        """What a write cut short (a kill, a full disk) left: our .tmp- files and TF's _temp dirs;
        with trainer.resume=false, every old checkpoint too."""
        stale = glob.glob(os.path.join(self.directory, ".tmp-*")) + glob.glob(os.path.join(self.directory, "ckpt-*_temp"))
        if not self.resuming:
            stale += glob.glob(os.path.join(self.directory, "ckpt-*")) + glob.glob(os.path.join(self.directory, "checkpoint"))
            stale += glob.glob(os.path.join(self.directory, HISTORY_FILE))
        for path in stale:
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)

    def _newest_readable(self) -> str | None:
        candidates = _numbered(self.directory)
        damaged = []
        for path in candidates:
            reason = unreadable(path)
            if reason is None:
                if damaged and self.dist.is_chief:
                    log.warning("Cannot read %s; resuming from %s instead.", "; ".join(damaged), os.path.basename(path))
                if self.dist.is_chief and (damaged or not self._state_names(path)):
                    self._repair_state(path)
                return path
            damaged.append(f"{os.path.basename(path)}: {reason}")
        if damaged:
            raise UserError(
                f"no checkpoint in {self.directory} can be read ({'; '.join(damaged)}); rerun with "
                f"trainer.resume=false to start this run over (it removes them), or delete {self.directory}."
            )
        return None

    def _state_names(self, path: str) -> bool:
        """Whether CheckpointManager's state file (itself written last, so rarely the damaged
        one) names `path` as the newest checkpoint."""
        try:
            state = tf.train.get_checkpoint_state(self.directory)
        except (ValueError, OSError):
            return False
        return bool(state) and os.path.basename(state.model_checkpoint_path) == os.path.basename(path)

    def _repair_state(self, path: str) -> None:
        """Point CheckpointManager's state file at `path`, the newest readable checkpoint: the
        manager reads it, and the damaged newer ones are overwritten as training goes on."""
        kept = [p for p in reversed(_numbered(self.directory)) if int(p.rsplit("-", 1)[1]) <= int(path.rsplit("-", 1)[1])]
        stamps = [os.path.getmtime(p + ".index") for p in kept]
        tf.compat.v1.train.update_checkpoint_state(self.directory, path, all_model_checkpoint_paths=kept,
                                                   all_model_checkpoint_timestamps=stamps,
                                                   last_preserved_timestamp=min(stamps) - 1)  # all managed

    def save(self, position: Position) -> str | None:
        """Save the model, the optimizers and `position`; every rank calls it (it may run
        collectives). Returns the chief's checkpoint path."""
        if self.checkpoint is None:
            return None
        self._position.assign([position.epoch, position.examples, position.order_batch])
        self._totals.assign(np.asarray(position.totals, np.float64))
        self._seconds.assign(position.seconds)
        write_dir = self.dist.checkpoint_write_dir(self.directory)
        if write_dir is None:
            return None
        try:
            if write_dir == self.directory:  # the chief (elastic Horovod may make another process the chief)
                # A manager made now reads the directory's state file (the newest checkpoint and the
                # ones kept), whoever wrote it, and the next is numbered after that newest one: by
                # this process's own save count, a process that became the chief mid-job would
                # overwrite ckpt-1, the copy a damaged newest checkpoint falls back to. After such a
                # fallback the state names the one resumed from, so the damaged one is overwritten.
                manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=KEEP)
                latest = manager.latest_checkpoint
                return manager.save(checkpoint_number=int(latest.rsplit("-", 1)[1]) + 1 if latest else 1)
            tf.train.CheckpointManager(self.checkpoint, write_dir, max_to_keep=1).save()  # a worker's scratch copy
        except (tf.errors.OpError, OSError) as err:
            reason = disk_error(err)
            if not reason:
                raise
            raise UserError(f"cannot save a checkpoint in {write_dir} ({reason}); {remedy(reason)} or point "
                            "paths.log_dir at another.") from None
        finally:
            if write_dir != self.directory:
                shutil.rmtree(write_dir, ignore_errors=True)
        return None

    def on_epoch_end(self, epoch, logs=None):
        self.history.epochs.append({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}})
        if self.checkpoint is None:
            return
        # History first: restore() trims it to the checkpoint's epoch count.
        if self.dist.is_chief:
            atomic_write_json(os.path.join(self.directory, HISTORY_FILE), self.history.epochs)
        self.save(Position(epoch=len(self.history.epochs)))

    def kept_note(self) -> str:
        """Where the last good checkpoint is, for an error message ('' when there is none)."""
        if self.directory and tf.train.latest_checkpoint(self.directory):
            return f" (the last good checkpoint, kept, is in {self.directory})"
        return ""
