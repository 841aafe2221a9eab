"""The vocabulary survives model.keras: tokens real reviews contain must not break
loading; a language model's windows hold every token of every text, in order;
batches by length hold every example once, cut to their longest row, alike on every rank."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from conftest import tiny_model

from sentiment_dist.data.pipeline import (
    SORTISH_CHUNK_BATCHES,
    evaluation_batches,
    sortish_order,
    training_batches,
)
from sentiment_dist.data.tokenizer import build_vocabulary, make_vectorizer
from sentiment_dist.data.tokens import Encoder, TokenizedSplit
from sentiment_dist.models.classifier import build_classifier, inference_model
from sentiment_dist.runtime.distribute import InputShard

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
    cfg = tiny_model(name="lstm", sequence_length=8, embedding_dim=4, units=4, dropout=0.2)
    model = inference_model(vectorizer, build_classifier(cfg, len(vocabulary), 2))
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    text = tf.constant([["a good film \x85 really"]])
    np.testing.assert_allclose(loaded.predict(text, verbose=0), model.predict(text, verbose=0), rtol=1e-6)


def test_windows_hold_every_token_of_each_text_in_order():
    texts = np.array(["one two three four five six seven", "", "two three", "eight one"])
    vocabulary = build_vocabulary(texts, vocab_size=None)
    ids = {token: index for index, token in enumerate(vocabulary)}
    split = Encoder(vocabulary).split(texts, np.zeros(4, np.int32), width=3)
    rows = split.windows(3).tokens
    expected = [["one", "two", "three"], ["four", "five", "six"], ["seven"], ["two", "three"], ["eight", "one"]]
    assert rows.shape == (5, 3) and rows.dtype == np.int32  # each text starts a row; the empty one has none
    for row, words in zip(rows, expected, strict=True):
        np.testing.assert_array_equal(row, [ids[w] for w in words] + [0] * (3 - len(words)))
    assert split.subset([1]).windows(3).tokens.shape == (0, 3)


def padded_split(n: int, longest: int, seed: int = 0) -> TokenizedSplit:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, longest + 1, n)
    tokens = np.where(np.arange(longest)[None, :] < lengths[:, None], rng.integers(1, 50, (n, longest)), 0)
    return TokenizedSplit.from_matrix(tokens.astype(np.int32), np.arange(n, dtype=np.int32), np.ones(n, np.float32))


def test_sortish_order_holds_whole_batches_of_similar_lengths_in_a_new_order_each_epoch():
    lengths = padded_split(1000, 400).row_lengths
    global_batch = 8
    order = sortish_order(lengths, global_batch, seed=1, epoch=0)
    assert len(order) == 1000 and len(set(order)) == 1000  # 1000 = 125 whole batches: nothing dropped
    spread = np.ptp(lengths[order].reshape(-1, global_batch), axis=1)
    random_spread = np.ptp(lengths[np.random.default_rng(0).permutation(1000)].reshape(-1, global_batch), axis=1)
    # 400 examples per sorted chunk: neighbours differ by about 1 token, random batches by ~300
    assert global_batch * SORTISH_CHUNK_BATCHES == 400
    assert np.mean(spread) < 0.1 * np.mean(random_spread)
    np.testing.assert_array_equal(order, sortish_order(lengths, global_batch, seed=1, epoch=0))
    assert not np.array_equal(order, sortish_order(lengths, global_batch, seed=1, epoch=1))
    assert len(sortish_order(lengths[:1003], global_batch, seed=1, epoch=0)) == 1000  # the remainder is dropped


def collect(dataset) -> list[tuple[np.ndarray, ...]]:
    return [tuple(column.numpy() for column in batch) for batch in dataset]


def test_length_batches_are_cut_to_their_longest_row_and_split_alike_over_ranks():
    split = padded_split(96, 30)
    whole = collect(training_batches(split, 16, seed=3, epoch=2, shard=InputShard(0, 1, 1), by_length=True))
    assert sorted(np.concatenate([labels for _, labels, _ in whole])) == list(range(96))
    for tokens, labels, _ in whole:
        np.testing.assert_array_equal(tokens, split.tokens[labels][:, : tokens.shape[1]])  # the rows, in full
        assert tokens.shape[1] == split.row_lengths[labels].max()  # cut to the longest
    # two processes (Horovod, multi-worker) each take half of every global batch, at its length
    halves = [collect(training_batches(split, 16, 3, 2, InputShard(rank, 2, 2), by_length=True)) for rank in (0, 1)]
    for (tokens, labels, _), first, second in zip(whole, *halves, strict=True):
        np.testing.assert_array_equal(np.concatenate([first[0], second[0]]), tokens)
        np.testing.assert_array_equal(np.concatenate([first[1], second[1]]), labels)


def test_length_evaluation_batches_hold_every_example_once():
    split = padded_split(50, 30, seed=1)
    batches = collect(evaluation_batches(split, 16, InputShard(0, 1, 1), by_length=True))
    real = np.concatenate([labels[weights > 0] for _, labels, weights in batches])
    assert sorted(real) == list(range(50)) and sum(len(labels) for _, labels, _ in batches) == 64
    assert [tokens.shape[1] for tokens, _, _ in batches] == sorted((t.shape[1] for t, _, _ in batches), reverse=True)


def test_balanced_class_weights_are_scikit_learn_s_and_a_missing_class_is_one_sentence():
    """n / (K * count_k), as scikit-learn computes it (not imported by the trainer: it costs a
    second of start-up in every rank)."""
    import pytest
    from sklearn.utils.class_weight import compute_class_weight

    from sentiment_dist.data.inputs import class_weights
    from sentiment_dist.runtime.errors import UserError

    labels = np.array([0, 0, 0, 1, 2, 2, 2, 2, 2, 1], "int64")
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    np.testing.assert_allclose(class_weights(labels, 3, "balanced"), expected, rtol=1e-6)
    assert class_weights(labels, 3, None) is None
    with pytest.raises(UserError, match=r"class indices \[3\] have no example"):
        class_weights(labels, 4, "balanced")


def test_batches_come_without_model_autotuning_whose_thread_stalls_each_epoch_s_end():
    """Deleting an iterator joins tf.data's autotuning thread, which sleeps up to seconds between
    rounds: every epoch and evaluation ended idle for up to 5 s before it was turned off."""
    split = padded_split(40, 12)
    for dataset, batches in ((training_batches(split, 16, 0, 0, InputShard(0, 1, 1)), 2),  # whole batches of 40 rows
                             (evaluation_batches(split, 16, InputShard(0, 1, 1)), 3)):  # every row, padded
        assert dataset.options().autotune.enabled is False
        assert len(collect(dataset)) == batches
