"""Model registry: shapes, losses, layer groups, fused-kernel warning, safe-mode saving."""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_model

from sentiment_dist.data.tokenizer import make_vectorizer
from sentiment_dist.models.classifier import (
    ENCODERS,
    GROUPS,
    build_classifier,
    group_variables,
    inference_model,
    per_example_loss,
)
from sentiment_dist.runtime.errors import UserError


def model_cfg(option: str, **overrides):
    return tiny_model(name=option, **{"sequence_length": 12, "embedding_dim": 8, "units": 4, "attention_units": 4,
                                      "dropout": 0.2, **overrides})


@pytest.mark.parametrize("name", sorted(ENCODERS))
@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_every_model_maps_tokens_to_class_probabilities(name, num_classes):
    model = build_classifier(model_cfg(name), vocab_size=30, num_classes=num_classes)
    tokens = np.random.default_rng(0).integers(1, 30, size=(4, 12)).astype("int32")
    tokens[:, 8:] = 0  # right padding, as TextVectorization makes it
    probabilities = model(tokens).numpy()
    if num_classes == 2:
        assert probabilities.shape == (4, 1)
        assert model.get_layer("head_output").activation.__name__ == "sigmoid"
        assert ((probabilities > 0) & (probabilities < 1)).all()
    else:
        assert probabilities.shape == (4, num_classes)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_every_layer_belongs_to_a_named_group(name):
    model = build_classifier(model_cfg(name), vocab_size=30, num_classes=2)
    groups = group_variables(model.layers)
    assert list(groups) == list(GROUPS)
    assert all(groups[group] for group in GROUPS)
    assert sum(len(v) for v in groups.values()) == len(model.trainable_variables)


def test_architectures_differ_as_their_names_say():
    def lstm_layers(name):
        model = build_classifier(model_cfg(name), vocab_size=30, num_classes=2)
        return [layer for layer in model.layers if layer.name.startswith("encoder_")]

    assert [type(layer).__name__ for layer in lstm_layers("lstm")] == ["LSTM"]
    assert [type(layer).__name__ for layer in lstm_layers("bilstm")] == ["Bidirectional"]
    assert [type(layer).__name__ for layer in lstm_layers("stacked_lstm")][::2] == ["LSTM", "LSTM"]
    assert type(lstm_layers("attention_lstm")[-1]).__name__ == "AttentionPooling"


def test_losses_are_binary_and_sparse_categorical_cross_entropy():
    labels = tf.constant([0, 1])
    binary = per_example_loss(labels, tf.constant([[0.2], [0.9]]), 2).numpy()
    np.testing.assert_allclose(binary, [-np.log(0.8), -np.log(0.9)], rtol=1e-4)
    categorical = per_example_loss(labels, tf.constant([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]), 3).numpy()
    np.testing.assert_allclose(categorical, [-np.log(0.7), -np.log(0.6)], rtol=1e-4)


def test_recurrent_dropout_warns_about_the_fused_kernel(caplog):
    with caplog.at_level(logging.WARNING):
        build_classifier(model_cfg("lstm", recurrent_dropout=0.2), vocab_size=30, num_classes=2)
    assert "disables the fused / cuDNN LSTM kernel" in caplog.text


def test_a_single_class_is_a_user_error():
    with pytest.raises(UserError, match="fewer than 2 classes"):
        build_classifier(model_cfg("lstm"), vocab_size=30, num_classes=1)


@pytest.mark.parametrize("name, pooling", [("attention_lstm", "attention"), ("bilstm", "max_mean")])
def test_inference_model_takes_raw_strings_and_loads_in_safe_mode(tmp_path, name, pooling):
    """Our own pooling layers are registered, so safe mode loads them."""
    vectorizer = make_vectorizer(12, ["", "[UNK]", "good", "bad", "movie"])
    classifier = build_classifier(model_cfg(name, pooling=pooling), vocab_size=5, num_classes=3)
    model = inference_model(vectorizer, classifier)
    texts = tf.constant([["good movie"], ["bad bad movie"]])
    expected = model(texts).numpy()
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_allclose(loaded(texts).numpy(), expected, rtol=1e-6)


def test_max_mean_pooling_concatenates_max_and_mean_over_the_real_steps():
    """Padding outputs zeros from the LSTM: an unmasked max would clip negative maxima to 0."""
    model = build_classifier(model_cfg("bilstm", pooling="max_mean"), vocab_size=30, num_classes=2)
    tokens = np.random.default_rng(1).integers(1, 30, size=(3, 12)).astype("int32")
    tokens[0, 1:], tokens[1, 9:] = 0, 0
    probe = keras.Model(model.inputs, [model.get_layer("encoder_bilstm_0").output, model.get_layer("encoder_max_mean").output])
    states, pooled = (t.numpy() for t in probe(tokens))
    assert pooled.shape == (3, 16)  # 2 directions x 4 units, twice
    for row, length in enumerate([1, 9, 12]):
        real = states[row, :length]
        np.testing.assert_allclose(pooled[row], np.concatenate([real.max(0), real.mean(0)]), atol=1e-6)
    assert (states[0, 0] < 0).any()  # one real step: some maxima are negative, which an unmasked max gets wrong
    empty = np.zeros((1, 12), "int32")
    # a row of padding max-pools to zeros, not -1e4 (Keras' masked mean gives NaN there: the evaluator masks it)
    np.testing.assert_array_equal(probe(empty)[1].numpy()[0, :8], 0.0)


@pytest.mark.parametrize("name, pooling", [("lstm", "last"), ("bilstm", "max"), ("bilstm", "mean"),
                                           ("bilstm", "max_mean"), ("stacked_lstm", "max"), ("attention_lstm", "attention")])
def test_a_review_scores_the_same_however_much_padding_follows_it(name, pooling):
    """trainer.batch_by_length cuts each batch to its longest row: padding must change nothing."""
    model = build_classifier(model_cfg(name, pooling=pooling), vocab_size=30, num_classes=3)
    tokens = np.random.default_rng(0).integers(1, 30, size=(3, 12)).astype("int32")
    tokens[0, 5:], tokens[1, 7:], tokens[2, 3:] = 0, 0, 0  # the longest row has 7 tokens
    full, cut = model(tokens).numpy(), model(tokens[:, :7]).numpy()
    np.testing.assert_allclose(cut, full, rtol=0, atol=1e-6)
