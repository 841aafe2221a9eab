"""The vocabulary survives model.keras: tokens real reviews contain must not break
loading; a language model's windows hold every token of every text, in order."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from conftest import REPO
from omegaconf import OmegaConf

from sentiment_dist.data.pipeline import build_vocabulary, make_vectorizer, vectorize_windows
from sentiment_dist.models import build_classifier, inference_model

# IMDB reviews hold \x85 (NEL, from Windows-1252 "...") and \u2028: Python reads
# both as line breaks, which is how Keras reads a vocabulary back from model.keras.
TEXTS = np.array(["a good film \x85 really", "a bad film \u2028 sadly", "good good film\x85", "bad \x1c film"])


def test_vocabulary_leaves_out_tokens_with_line_breaks_and_keeps_its_size():
    vocabulary = build_vocabulary(TEXTS, vocab_size=None)
    assert vocabulary[:2] == ["", "[UNK]"]
    assert all(token.splitlines() == [token] for token in vocabulary[1:])
    assert {"good", "film", "bad", "sadly"} <= set(vocabulary) and "film\x85" not in vocabulary
    assert build_vocabulary(TEXTS, vocab_size=6) == vocabulary[:6]


def test_a_model_with_that_vocabulary_saves_and_loads(tmp_path):
    vocabulary = build_vocabulary(TEXTS, vocab_size=None)
    vectorizer = make_vectorizer(8, vocabulary)
    cfg = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "model" / "lstm.yaml"),
                          {"sequence_length": 8, "embedding_dim": 4, "units": 4})
    model = inference_model(vectorizer, build_classifier(cfg, len(vocabulary), 2))
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    text = tf.constant([["a good film \x85 really"]])
    np.testing.assert_allclose(loaded.predict(text, verbose=0), model.predict(text, verbose=0), rtol=1e-6)


def test_windows_hold_every_token_of_each_text_in_order():
    texts = np.array(["one two three four five six seven", "", "two three", "eight one"])
    vocabulary = build_vocabulary(texts, vocab_size=None)
    ids = {token: index for index, token in enumerate(vocabulary)}
    rows = vectorize_windows(vocabulary, texts, 3)
    expected = [["one", "two", "three"], ["four", "five", "six"], ["seven"], ["two", "three"], ["eight", "one"]]
    assert rows.shape == (5, 3) and rows.dtype == np.int32  # each text starts a row; the empty one has none
    for row, words in zip(rows, expected, strict=True):
        np.testing.assert_array_equal(row, [ids[w] for w in words] + [0] * (3 - len(words)))
    assert vectorize_windows(vocabulary, texts[1:2], 3).shape == (0, 3)
