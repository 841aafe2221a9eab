"""trainer.ema_momentum: the moving average of the weights is what is
validated, selected and saved, while training steps the raw weights as if
there were no average; the same under every strategy (test_equivalence)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import TINY, module, run, tiny_model, tiny_trainer
from omegaconf import OmegaConf

from sentiment_dist.data.tokens import TokenizedSplit
from sentiment_dist.models.classifier import build_classifier, group_variables
from sentiment_dist.runtime.distribute import Distribution
from sentiment_dist.training.checkpoint import Checkpointer
from sentiment_dist.training.loop import Trainer
from sentiment_dist.training.optimizers import ParamGroup

MOMENTUM = 0.6


class RawWeights(keras.callbacks.Callback):
    """The weights after every training step (the raw ones: averages are only swapped in at epoch end)."""

    def __init__(self):
        super().__init__()
        self.steps: list[list[np.ndarray]] = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append([w.copy() for w in self.model.get_weights()])


def ema(steps: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Keras' EMA: the first step's weights, then m * average + (1 - m) * weights after each step."""
    average = [w.copy() for w in steps[0]]
    for step in steps[1:]:
        average = [MOMENTUM * a + (1 - MOMENTUM) * w for a, w in zip(average, step, strict=True)]
    return average


def train(ema_momentum: float | None, epochs: int = 2, grouped: bool = False, schedule=None, checkpoint_dir=None):
    cfg = tiny_trainer(batch_size=8, optimizer="sgd", learning_rate=0.5, ema_momentum=ema_momentum,
                       **{"early_stopping.patience": None, "lr_on_plateau.patience": None})
    keras.utils.set_random_seed(0)
    model = build_classifier(tiny_model(name="lstm"), vocab_size=20, num_classes=2)
    groups = None
    if grouped:  # fine-tuning's layer groups, each with its own optimizer (and its own average)
        groups = [ParamGroup(name, variables) for name, variables in group_variables(model.layers).items()]
    dist = Distribution(OmegaConf.create({"name": "single"}))
    trainer = Trainer(dist, model, 2, cfg, seed=0, groups=groups)
    rng = np.random.default_rng(0)
    tokens, labels = rng.integers(1, 20, size=(40, 10)).astype("int32"), rng.integers(0, 2, 40).astype("int32")
    split = TokenizedSplit.from_matrix(tokens, labels, np.ones(40, "float32"))
    recorder = RawWeights()
    history = trainer.fit(split, split, epochs=epochs, callbacks=[recorder, Checkpointer(dist, checkpoint_dir)],
                          verbose=False, schedule=schedule)
    return trainer, split, recorder.steps, history


def test_the_average_is_validated_and_kept_and_training_steps_the_raw_weights():
    averaged, split, raw_steps, history = train(MOMENTUM)
    _, _, plain_steps, _ = train(None)
    assert len(raw_steps) == 10  # 2 epochs of 40 // 8 steps
    # the average never leaks into training: the raw trajectory is the one without averaging
    for with_average, without in zip(raw_steps, plain_steps, strict=True):
        for a, b in zip(with_average, without, strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    expected = ema(raw_steps)
    final = averaged.model.get_weights()
    assert max(float(np.max(np.abs(f - w))) for f, w in zip(final, raw_steps[-1], strict=True)) > 1e-3
    for f, e in zip(final, expected, strict=True):
        np.testing.assert_allclose(f, e, rtol=0, atol=1e-5)
    # the last epoch's val_loss was scored on these averaged weights
    assert history.epochs[-1]["val_loss"] == pytest.approx(averaged.evaluate(split).loss, rel=1e-5)


@pytest.mark.parametrize("momentum,code", [("1.0", 2), ("0", 2), ("fast", 1)])
def test_an_impossible_momentum_is_refused_before_training(tmp_path, momentum, code):
    result = run(module("train", *TINY, f"trainer.ema_momentum={momentum}"), cwd=tmp_path, check=False)
    assert result.returncode == code
    assert ("must be between 0 and 1 (exclusive)" if code == 2 else "could not be converted to Float") in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_a_group_averages_from_when_it_unfreezes_and_a_frozen_one_keeps_its_weights():
    """Gradual unfreezing: the head trains from epoch 1, the encoder from epoch 2, the embedding never."""
    def schedule(epoch):
        return {"head"} if epoch == 0 else {"head", "encoder"}

    trainer, _, raw_steps, _ = train(MOMENTUM, grouped=True, schedule=schedule)
    initial = [w.copy() for w in raw_steps[0]]  # the embedding and encoder have not moved after step 1
    variables = group_variables(trainer.model.layers)
    index = {id(v): i for i, v in enumerate(trainer.model.weights)}
    final = trainer.model.get_weights()
    for v in variables["embedding"]:
        np.testing.assert_array_equal(final[index[id(v)]], initial[index[id(v)]])
    encoder = [index[id(v)] for v in variables["encoder"]]
    encoder_expected = ema([[step[i] for i in encoder] for step in raw_steps[5:]])  # its 5 steps of epoch 2
    for i, e in zip(encoder, encoder_expected, strict=True):
        np.testing.assert_allclose(final[i], e, rtol=0, atol=1e-5)
    head = [index[id(v)] for v in variables["head"]]
    head_expected = ema([[step[i] for i in head] for step in raw_steps])
    for i, e in zip(head, head_expected, strict=True):
        np.testing.assert_allclose(final[i], e, rtol=0, atol=1e-5)


def test_a_resumed_run_continues_the_average(tmp_path):
    """The checkpoint holds the raw weights and the averages: stopped after epoch 1 and resumed,
    the run ends with the average of an uninterrupted one."""
    uninterrupted, *_ = train(MOMENTUM, epochs=2)
    train(MOMENTUM, epochs=1, checkpoint_dir=str(tmp_path))
    resumed, _, raw_steps, _ = train(MOMENTUM, epochs=2, checkpoint_dir=str(tmp_path))
    assert len(raw_steps) == 5  # only epoch 2 ran
    for a, b in zip(resumed.model.get_weights(), uninterrupted.model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
