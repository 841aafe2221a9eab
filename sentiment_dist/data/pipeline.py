"""The one input pipeline: an epoch's order of rows, cut into global batches, each pipeline
gathering its own slice of every global batch.

The order is NumPy's, from a seed (`[seed, epoch]`, so a resumed run sees the order it would
have seen) and the row count alone: every rank computes the same order without talking to
the others. Each input pipeline then gathers only the rows of its slice of each global batch
(see `sentiment_dist.runtime.distribute`) from the split's flat ids, in memory or memory-mapped
(`TokenizedSplit.rows`, one vectorised gather per batch in `tf.data`): a rank of a job over
ten million reviews reads its rows, not the corpus. Evaluation pads the last global batch
with zero-weight rows so every replica gets full batches and every real example is counted
exactly once.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from sentiment_dist.data.tokens import TokenizedSplit
from sentiment_dist.runtime.distribute import InputShard
from sentiment_dist.runtime.errors import UserError

AUTOTUNE = tf.data.AUTOTUNE
PADDING_ROW = -1  # an index in a batch that stands for a zero-weight row of padding

# trainer.batch_by_length sorts this many global batches at a time by length (ULMFiT's
# "sortish" sampler): batches of similar lengths, in an order still random enough to train on.
SORTISH_CHUNK_BATCHES = 50


def longest_first(lengths: np.ndarray) -> np.ndarray:
    """Row order by length, longest first (stable): batches taken in this order can be cut to
    their first row's length."""
    return np.argsort(-np.asarray(lengths), kind="stable")


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


def shuffled_order(count: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(count)


def held_out_sample(count: int, limit: int | None, seed: int) -> np.ndarray:
    """Positions of at most `limit` of `count` rows: a seeded sample in their original order."""
    if limit is None or count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))


def _batches(split: TokenizedSplit, order: np.ndarray, global_batch: int, shard: InputShard,
             by_length: bool, real: int | None = None) -> tf.data.Dataset:
    """This pipeline's slice of each global batch of `order` (whole batches), in per-replica batches.

    `by_length`: each global batch is cut to its longest row, decided from the whole global batch
    (so every replica gets the same length) though a pipeline gathers only its slice. Indices
    PADDING_ROW are zero rows of weight 0. Slices differ by at most one row when the global batch
    does not divide (an elastic Horovod job that lost a worker keeps its global batch): losses are
    sums over the global batch, so the step is the same however the rows are split."""
    begin = shard.pipeline_id * global_batch // shard.num_pipelines
    end = (shard.pipeline_id + 1) * global_batch // shard.num_pipelines
    batches = np.asarray(order, np.int64).reshape(-1, global_batch)
    if by_length:
        lengths = np.where(batches == PADDING_ROW, 0, split.row_lengths[np.maximum(batches, 0)])
        widths = np.maximum(lengths.max(axis=1), 1)
    else:
        widths = np.full(len(batches), split.width)
    mine = batches[:, begin:end]

    def gather(number):
        index = mine[number]
        padding = index == PADDING_ROW
        rows = split.rows(np.where(padding, 0, index), int(widths[number]))
        rows[padding] = 0
        labels = np.where(padding, 0, split.labels[np.maximum(index, 0)]).astype(np.int32)
        weights = np.where(padding, 0.0, split.example_weights(np.maximum(index, 0))).astype(np.float32)
        return rows, labels, weights

    # Nothing here branches on a tensor: AutoGraph's conversion would only add start-up (about
    # 0.07 CPU-s a process, measured).
    @tf.autograph.experimental.do_not_convert
    def load(number):
        tokens, labels, weights = tf.numpy_function(gather, [number], (tf.int32, tf.int32, tf.float32), stateful=False)
        tokens.set_shape([end - begin, None if by_length else split.width])  # the steps trace on this spec
        labels.set_shape([end - begin])
        weights.set_shape([end - begin])
        return tokens, labels, weights

    dataset = tf.data.Dataset.range(len(batches)).map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    if shard.replicas_per_pipeline > 1:
        dataset = dataset.rebatch(global_batch // shard.num_replicas, drop_remainder=True)
    # No model-based autotuning: its optimizer thread is joined when the epoch's iterator is
    # deleted and sleeps up to seconds between rounds, so every epoch and every evaluation ended
    # in an idle stall of up to 5 s (measured on the default job: five epochs in 41 s, now 30 s). The
    # map still runs one gather per core, and prefetch(AUTOTUNE) still grows its buffer whenever
    # the step finds it empty (tf.data's per-prefetch tuner, which needs no thread).
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(AUTOTUNE).with_options(options)


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
        order = sortish_order(split.row_lengths, order_batch or global_batch, seed, epoch)
    else:
        order = shuffled_order(len(split), seed, epoch)
    order = order[start:]
    return _batches(split, order[: len(order) // global_batch * global_batch], global_batch, shard, by_length)


def evaluation_batches(
    split: TokenizedSplit, global_batch: int, shard: InputShard, by_length: bool = False
) -> tf.data.Dataset:
    """All examples, padded with weight-0 rows to whole global batches.

    In order; `by_length`: longest first, each batch cut to its longest row (the evaluators
    only sum over examples, so the order does not change what they report)."""
    order = longest_first(split.row_lengths) if by_length else np.arange(len(split))
    padding = (-len(split)) % global_batch
    order = np.concatenate([order, np.full(padding, PADDING_ROW, np.int64)])
    return _batches(split, order, global_batch, shard, by_length)
