"""The one input pipeline: vectorise once, then shuffle, batch, shard, prefetch.

Texts are vectorised by a Keras `TextVectorization` layer inside `tf.data`
(batched `map`, no per-example Python) exactly once per run; the token ids
are the cache every epoch reads. Each epoch then shuffles with its own seed
(`seed + epoch`, so a resumed run sees the order it would have seen), cuts
*global* batches, and each input pipeline keeps its slice of every global
batch (see `sentiment_dist.runtime.distribute`). Evaluation pads the last global
batch with zero-weight examples so every replica gets full batches and every
real example is counted exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from sentiment_dist.runtime.distribute import InputShard
from sentiment_dist.runtime.errors import UserError

AUTOTUNE = tf.data.AUTOTUNE
_VECTORIZE_BATCH = 4096


@dataclass(frozen=True)
class TokenizedSplit:
    """Token ids `[n, sequence_length]`, labels `[n]` and per-example weights `[n]`."""

    tokens: np.ndarray
    labels: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def make_vectorizer(sequence_length: int | None, vocabulary: list[str] | None = None, vocab_size: int | None = None):
    """A `TextVectorization` layer; with `vocabulary` it is ready to use.

    `sequence_length` None: every token of each text, as a ragged batch."""
    import keras

    layer = keras.layers.TextVectorization(
        max_tokens=vocab_size,
        output_sequence_length=sequence_length,
        ragged=sequence_length is None,
        standardize="lower_and_strip_punctuation",
        name="vectorizer",
    )
    if vocabulary is not None:
        layer.set_vocabulary(vocabulary)
    return layer


# Tokens a line-based vocabulary file cannot hold: Keras stores the vocabulary
# inside model.keras one token per line and reads it back split into lines, so
# a token holding a line break Python recognises (\x85 and \u2028 appear in
# IMDB reviews) would come back as two and the model would not load.
_SPARE_TOKENS = 64


def _storable(token: str) -> bool:
    return token.splitlines() == [token]


def build_vocabulary(texts: np.ndarray, vocab_size: int | None) -> list[str]:
    """Most frequent tokens of `texts`: `["", "[UNK]", ...]`, at most `vocab_size`.

    Tokens with line breaks in them are left out (they read as [UNK])."""
    layer = make_vectorizer(sequence_length=1, vocab_size=vocab_size and vocab_size + _SPARE_TOKENS)
    layer.adapt(tf.data.Dataset.from_tensor_slices(texts.astype(str)).batch(_VECTORIZE_BATCH))
    special, tokens = layer.get_vocabulary()[:2], layer.get_vocabulary()[2:]
    kept = special + [token for token in tokens if _storable(token)]
    return kept[:vocab_size] if vocab_size else kept


def extend_vocabulary(source: list[str], target_texts: np.ndarray, max_new_tokens: int) -> list[str]:
    """The source vocabulary, unchanged, then the most frequent new target tokens."""
    known = set(source)
    target = build_vocabulary(target_texts, vocab_size=None)[2:]  # most frequent first
    new = [token for token in target if token not in known][:max_new_tokens]
    return list(source) + new


def vectorized_batches(vectorizer, texts: np.ndarray) -> tf.data.Dataset:
    """`texts` through `vectorizer` by TF in large batches, in order."""
    return (
        tf.data.Dataset.from_tensor_slices(texts.astype(str))
        .batch(_VECTORIZE_BATCH)
        .map(vectorizer, num_parallel_calls=AUTOTUNE, deterministic=True)
    )


def vectorize(vectorizer, texts: np.ndarray) -> np.ndarray:
    """Token ids for every text, computed by TF in large batches."""
    if len(texts) == 0:
        return np.zeros((0, vectorizer.get_config()["output_sequence_length"]), np.int32)
    return np.concatenate([batch.numpy() for batch in vectorized_batches(vectorizer, texts)]).astype(np.int32)


def _windows(ids: np.ndarray, lengths: np.ndarray, length: int) -> np.ndarray:
    """Texts given as concatenated `ids` and their `lengths` -> rows of `length` consecutive tokens.

    Each text starts a new row and its last row is right-padded; a text
    without tokens gives no row. Vectorised: one scatter, no per-text loop."""
    rows_per_text = -(-lengths // length)
    first_row = np.repeat(np.cumsum(rows_per_text) - rows_per_text, lengths)
    position = np.arange(len(ids)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    rows = np.zeros((int(rows_per_text.sum()), length), np.int32)
    rows[first_row + position // length, position % length] = ids
    return rows


def vectorize_windows(vocabulary: list[str], texts: np.ndarray, length: int) -> np.ndarray:
    """Every token of every text (none cut off), in consecutive windows of `length` tokens.

    What a language model reads: truncating each text to `length` would throw
    away the rest of every longer text (on IMDB at 200 tokens: 31% of the training
    tokens; the pretrain job's first log line gives the counts)."""
    batches = vectorized_batches(make_vectorizer(None, vocabulary), texts)
    rows = [_windows(batch.flat_values.numpy(), batch.row_lengths().numpy(), length) for batch in batches]
    return np.concatenate(rows) if rows else np.zeros((0, length), np.int32)


def tokenize_split(vectorizer, texts: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> TokenizedSplit:
    weights = np.ones(len(labels), np.float32) if weights is None else weights.astype(np.float32)
    return TokenizedSplit(vectorize(vectorizer, texts), labels.astype(np.int32), weights)


def unlabeled_split(vocabulary: list[str], texts: np.ndarray, sequence_length: int, whole_texts: bool) -> TokenizedSplit:
    """Rows of token ids for a language model (labels unused, weight 1).

    `whole_texts`: every token, each text cut into consecutive windows of
    `sequence_length`; otherwise each text's first `sequence_length` tokens."""
    if whole_texts:
        tokens = vectorize_windows(vocabulary, texts, sequence_length)
    else:
        tokens = vectorize(make_vectorizer(sequence_length, vocabulary), texts)
    return TokenizedSplit(tokens, np.zeros(len(tokens), np.int32), np.ones(len(tokens), np.float32))


def held_out_sample(texts: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """At most `limit` of `texts`, a seeded sample in their original order (all of them for None)."""
    if limit is None or len(texts) <= limit:
        return texts
    return texts[np.sort(np.random.default_rng(seed).choice(len(texts), size=limit, replace=False))]


def _shard(dataset: tf.data.Dataset, global_batch: int, shard: InputShard) -> tf.data.Dataset:
    """Keep this pipeline's slice of each global batch, in per-replica batches.

    Slices differ by at most one row when the global batch does not divide (an elastic Horovod
    job that lost a worker keeps its global batch): losses are sums over the global batch, so
    the step is the same however the rows are split."""
    begin = shard.pipeline_id * global_batch // shard.num_pipelines
    end = (shard.pipeline_id + 1) * global_batch // shard.num_pipelines
    if shard.num_pipelines > 1:
        dataset = dataset.map(
            lambda *columns: tuple(column[begin:end] for column in columns),
            num_parallel_calls=AUTOTUNE,
        )
    if shard.replicas_per_pipeline > 1:
        dataset = dataset.rebatch(global_batch // shard.num_replicas, drop_remainder=True)
    return dataset.prefetch(AUTOTUNE)


# trainer.batch_by_length sorts this many global batches at a time by length (ULMFiT's
# "sortish" sampler): batches of similar lengths, in an order still random enough to train on.
SORTISH_CHUNK_BATCHES = 50


def token_counts(tokens: np.ndarray) -> np.ndarray:
    """Real tokens per row (rows are right-padded with id 0, which no token has)."""
    return np.count_nonzero(tokens, axis=1)


def longest_first(tokens: np.ndarray) -> np.ndarray:
    """Row order by real tokens, longest first (stable): batches taken in this order can be cut
    to their first row's length."""
    return np.argsort(-token_counts(tokens), kind="stable")


def sortish_order(lengths: np.ndarray, global_batch: int, seed: int, epoch: int) -> np.ndarray:
    """Every example but the remainder once, in whole global batches of similar lengths.

    A seeded permutation is cut into chunks of SORTISH_CHUNK_BATCHES global batches, each chunk
    sorted longest first and cut into batches, and the batches shuffled: the same order on
    every rank, for any number of replicas."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    chunk = np.arange(len(order)) // (global_batch * SORTISH_CHUNK_BATCHES)
    order = order[np.lexsort((-lengths[order], chunk))]
    batches = order[: len(order) // global_batch * global_batch].reshape(-1, global_batch)
    return batches[rng.permutation(len(batches))].ravel()


def _trim_padding(tokens, *columns):
    """Cut a global batch to its longest row (before it is split over replicas, so every replica
    gets the same length): the LSTM then runs no step that is padding in every row."""
    longest = tf.maximum(tf.reduce_max(tf.math.count_nonzero(tokens, axis=1, dtype=tf.int32)), 1)
    return (tokens[:, :longest], *columns)


def training_batches(
    split: TokenizedSplit, global_batch: int, seed: int, epoch: int, shard: InputShard, by_length: bool = False,
    start: int = 0, order_batch: int | None = None,
) -> tf.data.Dataset:
    """One epoch of shuffled global batches (the remainder is dropped: whole batches).

    `by_length`: batches of similar lengths (`sortish_order`), each cut to its longest row.
    `start`: the examples of the epoch's order already trained on (a run resumed mid-epoch
    continues with the batches an uninterrupted run would take next); `order_batch`: the
    global batch the epoch's sortish order was cut for, when it started with another."""
    if len(split) < global_batch:
        raise UserError(
            f"the training split has {len(split)} examples, fewer than one global batch of "
            f"{global_batch}; lower trainer.batch_size or use more data."
        )
    if by_length:
        order = sortish_order(token_counts(split.tokens), order_batch or global_batch, seed, epoch)[start:]
        dataset = (
            tf.data.Dataset.from_tensor_slices((split.tokens[order], split.labels[order], split.weights[order]))
            .batch(global_batch, drop_remainder=True)
            .map(_trim_padding, num_parallel_calls=AUTOTUNE)
        )
        return _shard(dataset, global_batch, shard)
    dataset = (
        tf.data.Dataset.from_tensor_slices((split.tokens, split.labels, split.weights))
        .shuffle(len(split), seed=seed + epoch, reshuffle_each_iteration=False)
        .skip(start)
        .batch(global_batch, drop_remainder=True)
    )
    return _shard(dataset, global_batch, shard)


def evaluation_batches(
    split: TokenizedSplit, global_batch: int, shard: InputShard, by_length: bool = False
) -> tf.data.Dataset:
    """All examples, padded with weight-0 rows to whole global batches.

    In order; `by_length`: longest first, each batch cut to its longest row (the evaluators
    only sum over examples, so the order does not change what they report)."""
    tokens, labels = split.tokens, split.labels
    if by_length:
        order = longest_first(tokens)
        tokens, labels = tokens[order], labels[order]
    padding = (-len(split)) % global_batch
    tokens = np.concatenate([tokens, np.zeros((padding, split.tokens.shape[1]), np.int32)])
    labels = np.concatenate([labels, np.zeros(padding, np.int32)])
    weights = np.concatenate([np.ones(len(split), np.float32), np.zeros(padding, np.float32)])
    dataset = tf.data.Dataset.from_tensor_slices((tokens, labels, weights)).batch(global_batch)
    if by_length:
        dataset = dataset.map(_trim_padding, num_parallel_calls=AUTOTUNE)
    return _shard(dataset, global_batch, shard)
