"""Resume state: the model, every optimizer and the finished epochs, saved after each epoch.

`tf.train.Checkpoint` + `CheckpointManager` work under every strategy
(Keras' BackupAndRestore is a `fit` feature). Every process takes part in a
save (MultiWorkerMirroredStrategy may run collectives in it); only the
chief's copy is kept (`Distribution.checkpoint_write_dir`).
"""

from __future__ import annotations

import glob
import logging
import os
import shutil

import keras
import tensorflow as tf

from sentiment_dist.runtime.distribute import Distribution
from sentiment_dist.runtime.errors import UserError
from sentiment_dist.runtime.io import atomic_write_json, disk_error, read_json

log = logging.getLogger(__name__)

HISTORY_FILE = "history.json"  # the finished epochs' logs, beside the checkpoints


class History:
    """One record of logs per finished epoch."""

    def __init__(self, epochs: list[dict] | None = None):
        self.epochs = list(epochs or [])

    def as_columns(self) -> dict[str, list]:
        keys = sorted({key for epoch in self.epochs for key in epoch})
        return {key: [epoch.get(key) for epoch in self.epochs] for key in keys}


class Checkpointer(keras.callbacks.Callback):
    """Records each epoch's logs and, given a directory, saves resume state after it.

    The trainer runs it after the callbacks that decide (LR on plateau, early
    stopping) and before weight averaging swaps the average in, so the saved
    model is the raw one training continues from and the saved learning rates
    are the lowered ones."""

    def __init__(self, dist: Distribution, directory: str | None):
        super().__init__()
        self.dist, self.directory = dist, directory
        self.history = History()
        self.checkpoint = self.manager = None
        self.write_dir: str | None = None

    def attach(self, trainer) -> None:
        """Track `trainer`'s model and optimizers (called by the trainer before `restore`)."""
        if self.directory is None:
            return
        state = {f"optimizer_{i}": optimizer for i, optimizer in enumerate(trainer.optimizer.optimizers)}
        self.checkpoint = tf.train.Checkpoint(model=trainer.model, **state)
        self.write_dir = self.dist.checkpoint_write_dir(self.directory)
        if self.write_dir:
            self.manager = tf.train.CheckpointManager(self.checkpoint, self.write_dir, max_to_keep=2)

    def restore(self) -> History:
        """The finished epochs of an interrupted attempt (none for a new run), their state restored."""
        if self.checkpoint is None:
            return self.history
        if self.dist.is_chief:  # what a write cut short (a kill, a full disk) left: our .tmp- files, TF's _temp dirs
            for stale in glob.glob(os.path.join(self.directory, ".tmp-*")) + glob.glob(os.path.join(self.directory, "ckpt-*_temp")):
                shutil.rmtree(stale) if os.path.isdir(stale) else os.remove(stale)
        latest = tf.train.latest_checkpoint(self.directory)
        history_path = os.path.join(self.directory, HISTORY_FILE)
        if not latest or not os.path.exists(history_path):
            return self.history
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        self.dist.broadcast_variables(self.checkpoint.model.variables)
        self.history = History(read_json(history_path)[: int(latest.rsplit("-", 1)[1])])
        if self.dist.is_chief:
            log.info("Resuming from %s after epoch %d.", latest, len(self.history.epochs))
        return self.history

    def on_epoch_end(self, epoch, logs=None):
        self.history.epochs.append({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}})
        if self.checkpoint is None:
            return
        # History first: restore() trims it to the checkpoint's epoch count.
        if self.dist.is_chief:
            atomic_write_json(os.path.join(self.directory, HISTORY_FILE), self.history.epochs)
        if self.manager is not None:
            try:
                self.manager.save(checkpoint_number=len(self.history.epochs))
            except (tf.errors.OpError, OSError) as err:
                if not disk_error(err):
                    raise
                raise UserError(f"cannot save a checkpoint in {self.write_dir} ({disk_error(err)}); free space on "
                                "that disk or point paths.log_dir at another.") from None
        if self.write_dir != self.directory and self.write_dir:  # a worker's scratch copy
            shutil.rmtree(self.write_dir, ignore_errors=True)

    def kept_note(self) -> str:
        """Where the last good checkpoint is, for an error message ('' when there is none)."""
        if self.directory and tf.train.latest_checkpoint(self.directory):
            return f" (the last good checkpoint, kept, is in {self.directory})"
        return ""
