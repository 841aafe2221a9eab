"""Preemption: on SIGTERM every rank stops at the same step boundary, after the chief saved a
checkpoint there, and the job exits with EXIT_PREEMPTED (138).

Clusters announce a preemption (or the end of a time limit) with SIGTERM and kill the job a
grace period later (SLURM `--signal=B:TERM@<s>`, Kubernetes `terminationGracePeriodSeconds`).
While training runs, SIGTERM only sets a flag; what acts on it depends on the strategy family:

- tf.distribute (`single`, `mirrored`, `multiworker`): TensorFlow's
  `PreemptionCheckpointHandler`. Under MultiWorkerMirroredStrategy it agrees on the step to
  stop at through the coordination service, so every worker saves (a collective) at the same
  step. It watches our flag (`termination_watcher_fn`): a Python handler of its own would be
  replaced by the C++ one MultiWorkerMirroredStrategy installs, which swallows SIGTERM.
- Horovod: the flag rides in every training step as one more allreduce (fused with the
  gradients', about 0.5 ms a step); a nonzero sum means some rank was told to stop, and since
  every rank sees the same sum after the same step, all stop at the next step boundary:
  no rank is left waiting in a collective.

Either way the saved position (epoch, examples of the epoch's seeded order) lets a rerun on
the same run dir continue with the very batches an uninterrupted run would have taken.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from sentiment_dist.runtime.errors import Preempted
from sentiment_dist.training.checkpoint import Checkpointer

SIGTERM_SEEN = threading.Event()  # process-wide: TensorFlow's handler polls it from its own thread


class _QuietDeprecation(logging.Filter):
    """The handler reads its own deprecated `total_run_calls` when it saves, and TensorFlow
    logs a deprecation notice about it (ours to ignore) right above the preemption line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "total_run_calls" not in record.getMessage()


logging.getLogger("tensorflow").addFilter(_QuietDeprecation())


class Guard:
    """Runs training steps; this base does nothing on SIGTERM (no checkpoint to save into, so
    the process's own handler ends it: exit code 143)."""

    def __init__(self, trainer, checkpointer: Checkpointer | None = None, describe: Callable[[], str] = str):
        self.trainer, self.dist, self.checkpointer = trainer, trainer.dist, checkpointer
        self.position = checkpointer.position if checkpointer else None
        self.describe = describe  # where training stands, for the log line

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def fuse(self, step: Callable) -> Callable:
        """What the traced training step computes: `step`, plus whatever the guard needs."""
        return step

    def run(self, step: Callable, batch: Any) -> Any:
        """One training step (the training loop calls this for every batch)."""
        return step(batch)

    def train(self, epochs: Callable[[], None], end: Callable[[], None], then: Callable[[], Any]) -> Any:
        """Run the training loop `epochs`, `end` it (callbacks' `on_train_end`: the best epoch's
        weights put back), then `then` (what follows training: scores, the run dir), and return what
        `then` returns. Elastic Horovod runs them where a lost worker is recovered from."""
        epochs()
        end()
        return then()

    def after_step(self) -> None:
        pass

    def take_notice(self) -> None:
        """Return once a SIGTERM has come and will stop training at the next step boundary (the
        fault-injection hook waits on this: `sentiment_dist.training.faults`)."""
        SIGTERM_SEEN.wait()

    def after_epoch(self) -> None:
        pass

    def _stop(self, path: str | None) -> None:
        raise Preempted(f"saved {self.describe()} in {path}", announce=self.dist.is_chief)


class _RecordingSigterm(Guard):
    """While training: SIGTERM sets SIGTERM_SEEN instead of ending the process, once this
    attempt has taken a step. Before that there is nothing new to save, and a launcher stopping
    the job because a peer failed (horovodrun, multiworker.py) must not wait for a vote the dead
    peer cannot cast: the process's own handler ends it (exit code 143)."""

    stepped = False

    def __enter__(self) -> Guard:
        self._previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def _on_sigterm(self, signum, frame) -> None:
        if self.stepped:
            SIGTERM_SEEN.set()
        elif callable(self._previous):
            self._previous(signum, frame)
        else:
            raise SystemExit(128 + signum)

    def __exit__(self, *exc) -> None:
        self._stop_recording()

    def train(self, epochs: Callable[[], None], end: Callable[[], None], then: Callable[[], Any]) -> Any:
        epochs()
        self._stop_recording()
        end()
        return then()

    def _stop_recording(self) -> None:
        # Outside training a SIGTERM ends the process at once (nothing newer to save).
        signal.signal(signal.SIGTERM, self._previous if callable(self._previous) else signal.SIG_DFL)


class TensorFlowGuard(_RecordingSigterm):
    """tf.distribute strategies: TensorFlow's PreemptionCheckpointHandler decides the step."""

    current: TensorFlowGuard | None = None  # the guard of the training running now
    _handlers: dict[int, Any] = {}  # one handler per strategy and process

    def __enter__(self) -> Guard:
        super().__enter__()
        TensorFlowGuard.current = self
        self.handler = self._handler(self.dist)
        return self

    def __exit__(self, *exc) -> None:
        TensorFlowGuard.current = None
        super().__exit__(*exc)

    @classmethod
    def _handler(cls, dist) -> Any:
        """One handler per process, reused by every training of a job (finetune's stages).

        Its coordination-service keys live as long as the cluster, so a second handler could
        never agree on a step; and its own restore is not needed (it is given an empty
        checkpoint to restore its step counter from: every worker counts from 0 alike). Saving
        is ours: the chief into the run dir, the others into scratch dirs (`Checkpointer.save`)."""
        key = id(dist.strategy)
        if key not in cls._handlers:
            nowhere = os.path.join(tempfile.gettempdir(), f"sentiment-dist-preemption-{os.getpid()}")  # never written
            config = tf.distribute.experimental.TerminationConfig(
                termination_watcher_fn=SIGTERM_SEEN.is_set,
                exit_fn=lambda: cls.current._stop(cls.current.saved),
                save_fn=lambda: cls.current._save(),
                grace_period=0,  # save at once (on Google Cloud TensorFlow would otherwise train on for an hour)
            )
            with dist.scope():
                cls._handlers[key] = tf.distribute.experimental.PreemptionCheckpointHandler(
                    getattr(dist.strategy, "cluster_resolver", None),
                    tf.train.CheckpointManager(tf.train.Checkpoint(), nowhere, max_to_keep=1),
                    termination_config=config,
                )
        return cls._handlers[key]

    def _save(self) -> None:
        self.saved = self.checkpointer.save(self.position)

    def take_notice(self) -> None:
        SIGTERM_SEEN.wait()
        self.handler._received_own_sigterm.wait()  # the handler's watcher polls our flag once a second

    def run(self, step: Callable, batch: Any) -> Any:
        # The handler checks before the step; on a notice it runs one more, then saves and calls exit_fn.
        result = self.handler.run(step, batch)
        self.stepped = True
        return result


class HorovodGuard(_RecordingSigterm):
    """Horovod: the ranks agree on the step to stop at by summing their SIGTERM flags in every step."""

    def __enter__(self) -> Guard:
        super().__enter__()
        self.vote = tf.Variable(0, dtype=tf.int32, trainable=False, name="preemption_vote")
        self.voted = self.stop_agreed = False
        return self

    def fuse(self, step: Callable) -> Callable:
        hvd = self.dist.hvd

        def step_and_vote(batch):
            return step(batch), hvd.allreduce(self.vote.read_value(), op=hvd.Sum, name="preemption_vote")

        return step_and_vote

    def run(self, step: Callable, batch: Any) -> Any:
        if self.stop_agreed:
            self.save_and_stop()
        if SIGTERM_SEEN.is_set() and not self.voted:
            self.vote.assign(1)
            self.voted = True
        stats, votes = step(batch)
        self.stop_agreed, self.stepped = int(votes) > 0, True
        return stats

    def save_and_stop(self) -> None:
        path = self.checkpointer.save(self.position)  # the chief writes; the others have nothing to write
        # The chief's path for everyone, and a barrier: no rank leaves while the chief still writes.
        self._stop(self.dist.broadcast_object(path))
