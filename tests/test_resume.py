"""Resume after SIGKILL, under every strategy; NaN stops with a clear message."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY, cli_env, horovodrun, module, multiworker, read_json, run, tiny_model, tiny_trainer
from omegaconf import OmegaConf

from sentiment_dist.data.tokens import TokenizedSplit
from sentiment_dist.models.classifier import build_classifier
from sentiment_dist.runtime.distribute import Distribution
from sentiment_dist.training.callbacks import make_callbacks
from sentiment_dist.training.checkpoint import Checkpointer
from sentiment_dist.training.loop import Trainer, TrainingDiverged

SINGLE = Distribution(OmegaConf.create({"name": "single"}))


def model_cfg():
    return tiny_model(name="lstm")


EPOCHS = 2
LONG_EPOCHS = [*TINY, "dataset.max_rows=2048", f"trainer.epochs={EPOCHS}", "trainer.early_stopping.patience=null"]
LAUNCH = {
    "single": lambda args: module("train", *args),
    "mirrored": lambda args: module("train", *args, "strategy=mirrored", "strategy.cpu_devices=2", "trainer.batch_size=16"),
    "multiworker": lambda args: multiworker(2) + module("train", *args, "strategy=multiworker", "trainer.batch_size=16"),
    "horovod": lambda args: horovodrun() + module("train", *args, "strategy=horovod", "trainer.batch_size=16"),
}


def kill_after_first_epoch(command: list[str], run_dir, cwd) -> None:
    process = subprocess.Popen(command, cwd=cwd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    marker = run_dir / "checkpoints" / "checkpoint"  # CheckpointManager's state: written after ckpt-1
    deadline = time.time() + 240
    while not marker.exists():
        assert process.poll() is None, f"training ended (code {process.returncode}) before its first checkpoint"
        assert time.time() < deadline, "no checkpoint after 240 s"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.parametrize("strategy", sorted(LAUNCH))
def test_sigkill_after_the_first_epoch_then_rerun_finishes_the_run(strategy, tmp_path, request):
    if strategy == "horovod":
        request.getfixturevalue("horovod_available")
    run_dir = tmp_path / "run"
    command = LAUNCH[strategy]([*LONG_EPOCHS, f"hydra.run.dir={run_dir}"])
    kill_after_first_epoch(command, run_dir, tmp_path)
    assert not (run_dir / "metrics.json").exists()
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    assert latest is not None  # what the killed attempt left is loadable
    tf.train.load_checkpoint(latest)

    result = run(command, cwd=tmp_path)
    assert "Resuming from" in result.stdout
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["epochs_run"] == EPOCHS
    assert read_json(run_dir / "history.json")["epoch"] == [1, 2]
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
    result = run(module("train", *base, "trainer.epochs=2", "dataset=csv", "dataset.path=missing.csv"), cwd=tmp_path, check=False)
    assert result.returncode == 2 and "missing.csv does not exist" in result.stderr
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
