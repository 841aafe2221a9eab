"""Resume after SIGKILL, under every strategy; the callbacks' state across a resume; NaN stops
with a clear message."""

from __future__ import annotations

import signal
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY, module, quiet, read_json, run, session_run, tiny_model, tiny_trainer
from omegaconf import OmegaConf
from test_equivalence import assert_same_last_state, assert_same_weights
from test_preemption import ENV, LAUNCH, LONG, check_history, held_at

from sentiment_dist.data.tokens import TokenizedSplit
from sentiment_dist.models.classifier import build_classifier
from sentiment_dist.runtime.distribute import Distribution
from sentiment_dist.training.callbacks import make_callbacks
from sentiment_dist.training.checkpoint import Checkpointer
from sentiment_dist.training.classification import ClassificationTask
from sentiment_dist.training.loop import Trainer, TrainingDiverged

SINGLE = Distribution(OmegaConf.create({"name": "single"}))


def model_cfg():
    return tiny_model(name="lstm")


def kill_after_first_epoch(command: list[str], run_dir: Path, cwd: Path) -> None:
    """Run `command` (one process) and SIGKILL it right after the first step of epoch 2: epoch 1's
    checkpoint is written, nothing after it is. The fault hook kills it there, not a clock (for
    test_finetune's and test_transfer's resume tests)."""
    env, killed = held_at(cwd, "kill between_steps rank=0 epoch=2 step=1")
    result = run(command, cwd=cwd, env=env, check=False)
    assert result.returncode == -signal.SIGKILL and killed(), quiet(result.stdout + result.stderr)[-3000:]
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")) is not None


@pytest.mark.parametrize("strategy", sorted(LAUNCH))
def test_sigkill_mid_epoch_then_a_rerun_ends_like_an_uninterrupted_run(strategy, tmp_path, tmp_path_factory, request):
    """The chief dies at once (SIGKILL: nothing saved, no word to its peers) at step 40 of epoch 2,
    its launcher stops the job, and a rerun resumes from epoch 1's checkpoint with the weights
    (best and last), optimizer state and history of a run never interrupted."""
    if strategy == "horovod":
        request.getfixturevalue("horovod_available")
    reference = session_run(tmp_path_factory, "uninterrupted", module("train", *LONG))
    launch, _ = LAUNCH[strategy]
    run_dir = tmp_path / "run"
    command = launch([*LONG, f"hydra.run.dir={run_dir}"])
    env, killed = held_at(tmp_path, "kill between_steps rank=0 epoch=2 step=40")
    result = run(command, cwd=tmp_path, env=env, check=False)
    assert result.returncode != 0 and killed()
    assert not (run_dir / "metrics.json").exists()
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    assert latest is not None  # what the killed attempt left is loadable
    tf.train.load_checkpoint(latest)

    result = run(command, cwd=tmp_path, env=ENV)
    assert f"Resuming from {latest}: after epoch 1." in result.stdout
    assert read_json(run_dir / "metrics.json")["epochs_run"] == 2
    check_history(run_dir, reference)
    assert_same_weights(reference, run_dir)
    assert_same_last_state(reference, run_dir)
    assert not list(run_dir.rglob(".tmp-*")), "a temporary file was left behind"


def test_a_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    """Epoch 1 is good and checkpointed; epoch 2 meets NaN example weights."""
    keras.utils.set_random_seed(0)
    model = build_classifier(model_cfg(), vocab_size=20, num_classes=2)
    cfg = tiny_trainer(batch_size=8, **{"early_stopping.patience": None, "lr_on_plateau.patience": None})
    trainer = Trainer(SINGLE, model, 2, cfg, seed=0)
    rng = np.random.default_rng(0)
    tokens, labels = rng.integers(1, 20, size=(32, 10)).astype("int32"), rng.integers(0, 2, 32).astype("int32")
    good = TokenizedSplit.from_matrix(tokens, labels, np.ones(32, "float32"))
    poisoned = TokenizedSplit.from_matrix(tokens, labels, np.full(32, np.nan, "float32"))
    checkpoints = str(tmp_path / "checkpoints")
    trainer.fit(good, good, epochs=1, callbacks=[Checkpointer(SINGLE, checkpoints)], verbose=False)
    kept = tf.train.latest_checkpoint(checkpoints)
    with pytest.raises(TrainingDiverged, match=r"became nan at epoch 2, step 1; lower trainer.learning_rate .* kept, is in"):
        trainer.fit(poisoned, good, epochs=2, callbacks=[Checkpointer(SINGLE, checkpoints)], verbose=False)
    assert tf.train.latest_checkpoint(checkpoints) == kept


def test_checkpoints_are_kept_when_a_resumed_run_fails(tmp_path):
    """A failure after a good epoch leaves that epoch's checkpoint to resume from."""
    run_dir = tmp_path / "run"
    base = [*TINY, "trainer.early_stopping.patience=null", f"hydra.run.dir={run_dir}"]
    run(module("train", *base, "trainer.epochs=1"), cwd=tmp_path)
    good = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    result = run(module("train", *base, "trainer.epochs=2", "trainer.best_monitor=val_f1"), cwd=tmp_path, check=False)
    assert result.returncode == 2 and "trainer.best_monitor=val_f1 is not a logged metric" in result.stderr
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")) == good


def test_a_resumed_run_stops_and_lowers_the_rate_when_an_uninterrupted_one_does(tmp_path):
    """EarlyStopping's and ReduceLROnPlateau's counters survive a resume: the
    run below lowers its rate after epochs 3, 4 and 5 and stops after epoch 5
    (patience 1 and 3) whether or not it was interrupted after epoch 3."""
    cfg = tiny_trainer(learning_rate=0.01, **{"early_stopping.patience": 3, "lr_on_plateau.patience": 1})
    val_losses = [1.0, 0.9, 0.95, 0.97, 0.99, 0.8, 0.7]

    def drive(history: list[dict], rate: float | None) -> list[dict]:
        """The trainer's order of calls; `history`/`rate`: what a checkpoint restores."""
        model = build_classifier(model_cfg(), vocab_size=20, num_classes=2)
        trainer = Trainer(SINGLE, model, 2, cfg, seed=0)
        if rate is not None:
            trainer.optimizer.learning_rate = rate
        callbacks = make_callbacks(cfg, 0.01, 0.01, 1, SINGLE)
        callback_list = keras.callbacks.CallbackList(callbacks, model=model)
        callback_list.on_train_begin()
        for callback in callbacks:
            if history and hasattr(callback, "resume"):
                callback.resume(history)
        epochs = list(history)
        for epoch in range(len(history), len(val_losses)):
            if model.stop_training:
                break
            logs = {"val_loss": val_losses[epoch], "learning_rate": trainer.optimizer.learning_rate}
            callback_list.on_epoch_end(epoch, logs)
            epochs.append({"epoch": epoch + 1, **logs})
        return epochs + [{"rate_after": trainer.optimizer.learning_rate}]

    uninterrupted = drive([], None)
    assert len(uninterrupted) - 1 == 5  # stopped after epoch 5
    assert [round(e["learning_rate"], 6) for e in uninterrupted[:-1]] == [0.01, 0.01, 0.01, 0.005, 0.0025]
    resumed = drive(uninterrupted[:3], rate=uninterrupted[3]["learning_rate"])
    assert resumed == uninterrupted


class ScriptedValidation(ClassificationTask):
    """The classifier task with a validation loss set per epoch (the rest is real training), so
    that early stopping, LR on plateau and the best epoch fall where the test says."""

    def __init__(self, num_classes: int, losses: list[float], callbacks: list):
        super().__init__(num_classes)
        self.losses = losses
        self.checkpointer = next(c for c in callbacks if isinstance(c, Checkpointer))

    def evaluator(self, dist, model, global_batch, by_length=False):
        real, task = super().evaluator(dist, model, global_batch, by_length), self

        class Scripted:
            def evaluate(self, split, *options):
                result = real.evaluate(split, *options)
                result.loss = task.losses[task.checkpointer.position.epoch]  # the epoch being validated
                return result

        return Scripted()


def assert_same_rows(history: list[dict], expected: list[dict]) -> None:
    """The same epochs with the same logs, but the clock's (seconds, examples per second)."""
    assert len(history) == len(expected)
    for row, want in zip(history, expected, strict=True):
        timeless = {key: value for key, value in row.items() if "second" not in key}
        assert timeless == pytest.approx({key: value for key, value in want.items() if "second" not in key}, rel=1e-5)


def test_stopping_lowering_the_rate_and_the_best_epoch_survive_a_resume_through_fit(tmp_path):
    """Through the real `Trainer.fit`: a run that stops after epoch 3 (as a kill after that epoch's
    checkpoint leaves it) and is resumed lowers its rate after epochs 3, 4 and 5, stops after
    epoch 5 and ends with epoch 2's weights (the best val_loss), as the run never interrupted
    does. Each resumes from its checkpoint and best-weights file alone (a new model, trainer and
    callbacks, as in a new process)."""
    cfg = tiny_trainer(learning_rate=0.01, batch_size=8, **{"early_stopping.patience": 3, "lr_on_plateau.patience": 1})
    val_losses = [1.0, 0.9, 0.95, 0.97, 0.99, 0.8, 0.7]  # best: epoch 2; no better one for 3 epochs after
    rng = np.random.default_rng(0)
    tokens, labels = rng.integers(1, 20, size=(64, 10)).astype("int32"), rng.integers(0, 2, 64).astype("int32")
    data = TokenizedSplit.from_matrix(tokens, labels)

    def fit(directory, epochs: int):
        keras.utils.set_random_seed(0)
        model = build_classifier(model_cfg(), vocab_size=20, num_classes=2)
        callbacks = make_callbacks(cfg, 0.01, 0.01, 8, SINGLE, str(directory / "checkpoints"),
                                   str(directory / "checkpoints" / "best.weights.h5"))
        trainer = Trainer(SINGLE, model, ScriptedValidation(2, val_losses, callbacks), cfg, seed=0)
        history = trainer.fit(data, data, epochs, callbacks, verbose=False)
        return history.epochs, model.get_weights(), trainer.optimizer.learning_rate

    uninterrupted, weights, rate = fit(tmp_path / "uninterrupted", len(val_losses))
    assert [row["epoch"] for row in uninterrupted] == [1, 2, 3, 4, 5]  # stopped after epoch 5
    assert [round(row["learning_rate"], 6) for row in uninterrupted] == [0.01, 0.01, 0.01, 0.005, 0.0025]
    first, _, _ = fit(tmp_path / "resumed", 3)
    assert_same_rows(first, uninterrupted[:3])
    resumed, resumed_weights, resumed_rate = fit(tmp_path / "resumed", len(val_losses))
    assert_same_rows(resumed, uninterrupted)
    assert resumed_rate == pytest.approx(rate)  # lowered after epoch 5 too, once
    for a, b in zip(weights, resumed_weights, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-6)
    # The weights kept are the best epoch's (its file, last written at epoch 2), far from the last
    # epoch's (its checkpoint): the comparison above could fail.
    best = build_classifier(model_cfg(), vocab_size=20, num_classes=2)
    best.load_weights(str(tmp_path / "uninterrupted" / "checkpoints" / "best.weights.h5"))
    for a, b in zip(weights, best.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    last = tf.train.load_checkpoint(str(tmp_path / "uninterrupted" / "checkpoints" / "ckpt-5"))
    embedding = last.get_tensor("optimizer_0/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE")
    assert embedding.shape == weights[0].shape and np.abs(weights[0] - embedding).max() > 1e-3


@pytest.mark.parametrize("monitor", ["val_accuracy", "val_macro_f1"])
def test_stopping_and_lowering_the_rate_on_a_metric_to_maximise(tmp_path, monitor):
    """Keras' "auto" mode refuses val_accuracy; higher must count as better."""
    cfg = tiny_trainer(learning_rate=0.01, **{"early_stopping.monitor": monitor, "early_stopping.patience": 1,
                                              "lr_on_plateau.monitor": monitor, "lr_on_plateau.patience": 1})
    model = build_classifier(model_cfg(), vocab_size=20, num_classes=2)
    trainer = Trainer(SINGLE, model, 2, cfg, seed=0)
    callbacks = make_callbacks(cfg, 0.01, 0.01, 1, SINGLE)
    callback_list = keras.callbacks.CallbackList(callbacks, model=model)
    callback_list.on_train_begin()
    for epoch, value in enumerate([0.80, 0.85, 0.84]):  # rises, then falls once: patience 1 is used up
        assert not model.stop_training
        callback_list.on_epoch_end(epoch, {monitor: value, "val_loss": 0.5, "learning_rate": trainer.optimizer.learning_rate})
    assert model.stop_training
    assert trainer.optimizer.learning_rate == pytest.approx(0.005)  # lowered once, after the fall
