"""The classification task: per-example cross-entropy, and held-out scoring by confusion matrix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from sentiment_dist.data.pipeline import evaluation_batches, longest_first
from sentiment_dist.data.tokens import TokenizedSplit
from sentiment_dist.models.classifier import per_example_loss, predicted_class
from sentiment_dist.runtime.distribute import TOKEN_ROWS, Distribution, TracedPerSpec, graph_function
from sentiment_dist.training.metrics import accuracy, classification_metrics, macro_f1

# Binary classifiers: P(positive) is histogrammed in this many bins per true class to choose
# the decision threshold on validation (sums reduce over replicas; 0.01 apart is fine enough).
THRESHOLD_BINS = 100


@dataclass
class EvaluationResult:
    loss: float
    confusion: np.ndarray  # [true, predicted], counts of real examples
    scores: np.ndarray | None = None  # binary: [true class, bin of P(positive)] counts

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return accuracy(self.confusion)

    def metrics(self, label_names: list[str]) -> dict:
        return classification_metrics(self.loss, self.confusion, label_names)


class Evaluator:
    """Loss and confusion matrix over a split, sharded over every replica."""

    def __init__(self, dist: Distribution, model: keras.Model, num_classes: int, global_batch: int,
                 by_length: bool = False):
        self.dist, self.model, self.num_classes, self.global_batch = dist, model, num_classes, global_batch
        self.by_length = by_length  # batches sorted by length and cut to their longest row
        self._step_for = TracedPerSpec(self._trace)

    def _trace(self, spec) -> Callable:
        """The evaluation step for batches of `spec` (the pipeline's: a short last batch and, by
        length, every length in one trace)."""
        dist = self.dist

        def step(batch, threshold):
            return dist.reduce_sum(dist.run(self._replica_step, args=(*batch, threshold)))

        return graph_function(step, input_signature=[spec, tf.TensorSpec([], tf.float32)])

    def _replica_step(self, tokens, labels, weights, threshold):
        probabilities = self.model(tokens, training=False)
        losses = per_example_loss(labels, probabilities, self.num_classes)
        predicted = predicted_class(probabilities, self.num_classes, threshold)
        confusion = tf.math.confusion_matrix(labels, predicted, self.num_classes, weights=weights, dtype=tf.float32)
        if self.num_classes == 2:
            bins = tf.clip_by_value(tf.cast(probabilities[:, 0] * THRESHOLD_BINS, tf.int32), 0, THRESHOLD_BINS - 1)
            cells = labels * THRESHOLD_BINS + bins
            scores = tf.reshape(tf.math.bincount(cells, weights, minlength=2 * THRESHOLD_BINS,
                                                 maxlength=2 * THRESHOLD_BINS, dtype=tf.float32), (2, THRESHOLD_BINS))
        else:
            scores = tf.zeros((2, THRESHOLD_BINS))
        # Padding rows are all-zero tokens: mean pooling over an empty mask gives NaN, and NaN * 0 is NaN.
        return tf.reduce_sum(tf.where(weights > 0, losses * weights, 0.0)), confusion, scores

    def evaluate(self, split: TokenizedSplit, threshold: float = 0.5) -> EvaluationResult:
        """Every example of `split` counted exactly once (padding has weight 0); a binary
        classifier says positive when P(positive) >= `threshold`."""
        loss_sum, confusion, scores = 0.0, np.zeros((self.num_classes, self.num_classes)), np.zeros((2, THRESHOLD_BINS))
        batches = self.dist.distribute_dataset(
            lambda shard: evaluation_batches(split, self.global_batch, shard, self.by_length)
        )
        step = self._step_for(batches.element_spec)
        for batch in batches:
            batch_loss, batch_confusion, batch_scores = step(batch, tf.constant(threshold, tf.float32))
            loss_sum += float(batch_loss)
            confusion += batch_confusion.numpy()
            scores += batch_scores.numpy()
        confusion = np.rint(confusion).astype(np.int64)
        binary = np.rint(scores).astype(np.int64) if self.num_classes == 2 else None
        return EvaluationResult(loss_sum / max(int(confusion.sum()), 1), confusion, binary)


class ClassificationTask:
    """Per-example cross-entropy of a classifier, summed over the global batch."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def replica_loss(self, model, batch, global_batch, dist):
        tokens, labels, weights = batch
        probabilities = model(tokens, training=True)
        losses = per_example_loss(labels, probabilities, self.num_classes)
        correct = tf.cast(tf.equal(predicted_class(probabilities, self.num_classes), labels), tf.float32)
        real = tf.cast(weights > 0, tf.float32)
        stats = tf.stack([tf.reduce_sum(losses * weights), tf.reduce_sum(correct * real), tf.reduce_sum(real)])
        return tf.reduce_sum(losses * weights) / global_batch, stats

    def progress(self, totals):
        return {"loss": totals[0] / totals[2], "accuracy": totals[1] / max(totals[2], 1)}

    def metric_names(self, model) -> set[str]:
        """What `epoch_logs` holds: the names a monitor may watch."""
        return {"loss", "accuracy", "val_loss", "val_accuracy", "val_macro_f1"}

    def evaluator(self, dist, model, global_batch, by_length=False):
        return Evaluator(dist, model, self.num_classes, global_batch, by_length)

    def epoch_logs(self, totals, result, seconds):
        return {"loss": totals[0] / totals[2], "accuracy": totals[1] / totals[2], **self.validation_logs(result)}

    def validation_logs(self, result):
        return {"val_loss": result.loss, "val_accuracy": result.accuracy, "val_macro_f1": macro_f1(result.confusion)}


def length_sorted_scorer(model: keras.Model, batch_size: int = 256) -> Callable[[TokenizedSplit], np.ndarray]:
    """split -> every example's probabilities (`[n, 1]` P(positive) for two classes), in the
    split's order, in one process (the transfer report's, `predict`'s).

    It scores in batches of similar lengths cut to their longest row, as the evaluator does (at
    800 tokens most of a padded row is padding, masked anyway), and puts the rows back in order.
    One trace serves every split it is given."""
    score = graph_function(lambda tokens: model(tokens, training=False), input_signature=[TOKEN_ROWS])

    def probabilities_of(split: TokenizedSplit) -> np.ndarray:
        order = longest_first(split.row_lengths)
        probabilities = np.empty((len(split), model.output_shape[-1]), np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]  # its first row is its longest
            longest = max(int(split.row_lengths[rows[0]]), 1)
            probabilities[rows] = score(split.rows(rows, longest)).numpy()
        return probabilities

    return probabilities_of


def predict_probabilities(model: keras.Model, split: TokenizedSplit) -> np.ndarray:
    """`split`'s probabilities under `model`, scored once (see `length_sorted_scorer`)."""
    return length_sorted_scorer(model)(split)
