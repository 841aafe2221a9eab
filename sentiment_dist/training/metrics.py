"""Classification metrics from a confusion matrix: the one macro-F1."""

from __future__ import annotations

import numpy as np

# Largest class over smallest, in a training split, past which macro-F1 and not accuracy is the
# metric a user reads: at 89-97% positive, accuracy (and the loss) reward the majority class.
IMBALANCE = 1.5


def per_class_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a `[true, predicted]` confusion matrix."""
    true_positive = np.diag(confusion).astype(float)
    predicted = confusion.sum(axis=0)
    actual = confusion.sum(axis=1)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, actual, out=np.zeros_like(true_positive), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": actual}


def macro_f1(confusion: np.ndarray) -> float:
    """Unweighted mean of the per-class F1 scores (scikit-learn's `average="macro"`)."""
    return float(np.mean(per_class_scores(confusion)["f1"]))


def accuracy(confusion: np.ndarray) -> float:
    return float(np.trace(confusion) / max(int(confusion.sum()), 1))


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """`[true, predicted]` counts, as the evaluators accumulate them."""
    return np.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(loss: float, confusion: np.ndarray, label_names: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix."""
    scores = per_class_scores(confusion)
    return {
        "loss": loss,
        "accuracy": accuracy(confusion),
        "macro_f1": float(np.mean(scores["f1"])),
        "examples": int(confusion.sum()),
        "per_class": {
            name: {key: float(scores[key][i]) for key in ("precision", "recall", "f1", "support")}
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": confusion.tolist(),
        "label_names": list(label_names),
    }


def best_threshold(scores: np.ndarray) -> tuple[float, float]:
    """The decision threshold on P(positive) that maximises macro-F1, from `[true class, bin]`
    counts of a held-out split's scores (bin b holds P in [b/B, (b+1)/B)), and that macro-F1.

    Ties go to the threshold nearest 0.5: with few validation examples a wide plateau of equal
    scores is common, and its middle generalises no better than the usual 0.5."""
    bins = scores.shape[1]
    # Positive when P >= t: predicted positive are the examples in bins >= t * B.
    positive_at = np.cumsum(scores[:, ::-1], axis=1)[:, ::-1]  # [class, bin]: examples scored in that bin or above
    candidates = []
    for cut in range(1, bins):
        true_positive, false_positive = positive_at[1, cut], positive_at[0, cut]
        false_negative, true_negative = scores[1].sum() - true_positive, scores[0].sum() - false_positive
        confusion = np.array([[true_negative, false_positive], [false_negative, true_positive]])
        candidates.append((macro_f1(confusion), -abs(cut / bins - 0.5), cut / bins))
    score, _, threshold = max(candidates)
    return float(threshold), float(score)


def headline_metric(labels: np.ndarray, num_classes: int) -> str:
    """`macro_f1` when the classes of `labels` (a training split) are imbalanced, else `accuracy`."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes)
    return "macro_f1" if counts.max() > IMBALANCE * max(counts.min(), 1) else "accuracy"


def scores_at(labels: np.ndarray, probabilities: np.ndarray, num_classes: int, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy and macro-F1 of per-example probabilities (`[n, 1]` P(positive) for two classes,
    `[n, K]` otherwise), a binary classifier saying positive when P >= `threshold`."""
    confusion = confusion_matrix(labels, predictions(probabilities, num_classes, threshold), num_classes)
    return {"accuracy": accuracy(confusion), "macro_f1": macro_f1(confusion)}


def predictions(probabilities: np.ndarray, num_classes: int, threshold: float = 0.5) -> np.ndarray:
    if num_classes == 2:
        return (np.asarray(probabilities).reshape(-1) >= threshold).astype(np.int64)
    return np.asarray(probabilities).argmax(axis=1).astype(np.int64)
