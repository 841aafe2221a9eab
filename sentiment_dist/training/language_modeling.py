"""The language-modelling task: next-token cross-entropy, and held-out perplexity.

Training uses sampled softmax (Jean et al. 2015; `tf.nn.sampled_softmax_loss`,
log-uniform negatives: the vocabulary is sorted by frequency), so a step costs
`num_sampled`, not the vocabulary size; held-out perplexity uses the full
softmax, one review at a time to bound memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from sentiment_dist.data.pipeline import evaluation_batches
from sentiment_dist.data.tokens import TokenizedSplit
from sentiment_dist.models.language_model import LanguageModel
from sentiment_dist.runtime.distribute import Distribution, TracedPerSpec, graph_function


def targets(tokens, direction: str):
    """Next-token targets in `direction` and where they are real (not padding, not past the text)."""
    padding = tf.zeros_like(tokens[:, :1])
    if direction == "forward":
        shifted = tf.concat([tokens[:, 1:], padding], axis=1)
    else:
        shifted = tf.concat([padding, tokens[:, :-1]], axis=1)
    return shifted, tf.logical_and(tokens > 0, shifted > 0)


class LanguageModelTask:
    """Next-token cross-entropy, averaged over every real target token of the global batch.

    The global token count varies per batch, so each replica divides its sum
    by the count summed over replicas (one scalar all-reduce): the gradients
    summed by the trainer are then those of one device on the whole batch.
    `num_sampled` negatives per step (sampled softmax); None or at least
    the vocabulary: the full softmax (exact, and deterministic across strategies).
    """

    def __init__(self, vocab_size: int, num_sampled: int | None):
        self.vocab_size = vocab_size
        self.num_sampled = None if num_sampled is None or num_sampled >= vocab_size - 1 else int(num_sampled)

    def replica_loss(self, model, batch, global_batch, dist):
        tokens = batch[0]
        loss_sum, count = 0.0, 0.0
        for direction, states, head in zip(model.directions, model(tokens, training=True), model.heads, strict=True):
            target, real = targets(tokens, direction)
            hidden = tf.cast(tf.boolean_mask(states, real), tf.float32)
            labels = tf.boolean_mask(target, real)
            if self.num_sampled:
                losses = tf.nn.sampled_softmax_loss(
                    head.kernel, head.bias, tf.cast(labels[:, None], tf.int64), hidden,
                    num_sampled=self.num_sampled, num_classes=self.vocab_size,
                )
            else:
                losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, head(hidden))
            loss_sum += tf.reduce_sum(losses)
            count += tf.cast(tf.size(labels), tf.float32)
        (global_count,) = dist.all_reduce_sum([tf.convert_to_tensor(count)])
        return loss_sum / tf.maximum(global_count, 1.0), tf.stack([loss_sum, 0.0, count])

    def progress(self, totals):
        return {"loss": totals[0] / max(totals[2], 1)}

    def metric_names(self, model) -> set[str]:
        """What `epoch_logs` holds: the names a monitor may watch."""
        by_direction = {f"val_perplexity_{d}" for d in model.directions} if len(model.directions) > 1 else set()
        return {"loss", "tokens_per_second", "val_loss", "val_perplexity", "val_accuracy", *by_direction}

    def evaluator(self, dist, model, global_batch, by_length=False):
        return LanguageModelEvaluator(dist, model, global_batch, by_length)

    def epoch_logs(self, totals, result, seconds):
        return {
            "loss": totals[0] / max(totals[2], 1),  # sampled-softmax loss when num_sampled is set
            "tokens_per_second": totals[2] / len(result.directions) / seconds,
            **self.validation_logs(result),
        }

    def validation_logs(self, result):
        logs = {"val_loss": result.loss, "val_perplexity": result.perplexity, "val_accuracy": result.accuracy}
        if len(result.directions) > 1:
            logs.update({f"val_perplexity_{d}": p for d, p in result.perplexity_by_direction.items()})
        return logs


@dataclass
class LanguageModelEvaluation:
    """Full-softmax statistics per direction: `[nll sum, correct, tokens]`."""

    directions: tuple[str, ...]
    stats: np.ndarray

    @property
    def tokens(self) -> int:
        return int(self.stats[:, 2].sum())

    @property
    def loss(self) -> float:
        """Mean negative log-likelihood per token (nats), over every direction."""
        return float(self.stats[:, 0].sum() / max(self.tokens, 1))

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def accuracy(self) -> float:
        return float(self.stats[:, 1].sum() / max(self.tokens, 1))

    @property
    def perplexity_by_direction(self) -> dict[str, float]:
        return {d: math.exp(row[0] / max(row[2], 1)) for d, row in zip(self.directions, self.stats, strict=True)}

    def as_dict(self) -> dict:
        return {"loss": self.loss, "perplexity": self.perplexity, "accuracy": self.accuracy, "tokens": self.tokens,
                "perplexity_by_direction": self.perplexity_by_direction}


class LanguageModelEvaluator:
    """Held-out perplexity with the full softmax, every real token counted once."""

    def __init__(self, dist: Distribution, model: LanguageModel, global_batch: int, by_length: bool = False):
        self.dist, self.model, self.global_batch, self.by_length = dist, model, global_batch, by_length
        self._step_for = TracedPerSpec(self._trace)

    def _trace(self, spec) -> Callable:
        """The evaluation step for batches of `spec` (the pipeline's)."""
        dist = self.dist

        def step(batch):
            return dist.reduce_sum(dist.run(self._replica_step, args=batch))

        return graph_function(step, input_signature=[spec])

    def _replica_step(self, tokens, labels, weights):
        rows = []
        for direction, states, head in zip(self.model.directions, self.model(tokens, training=False), self.model.heads, strict=True):
            target, real = targets(tokens, direction)

            def one_review(args, head=head):  # [T, V] logits at a time, not [B, T, V]
                hidden, target, real = args
                logits = head(tf.cast(hidden, tf.float32))
                nll = tf.nn.sparse_softmax_cross_entropy_with_logits(target, logits)
                correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=target.dtype), target), tf.float32)
                return tf.stack([tf.reduce_sum(nll * real), tf.reduce_sum(correct * real), tf.reduce_sum(real)])

            per_review = tf.map_fn(one_review, (states, target, tf.cast(real, tf.float32)), fn_output_signature=tf.float32)
            rows.append(tf.reduce_sum(per_review, axis=0))
        return tf.stack(rows)

    def evaluate(self, split: TokenizedSplit) -> LanguageModelEvaluation:
        stats = np.zeros((len(self.model.heads), 3))
        batches = self.dist.distribute_dataset(
            lambda shard: evaluation_batches(split, self.global_batch, shard, self.by_length)
        )
        step = self._step_for(batches.element_spec)
        for batch in batches:
            stats += step(batch).numpy()
        return LanguageModelEvaluation(self.model.directions, stats)
