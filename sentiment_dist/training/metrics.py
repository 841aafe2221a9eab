"""Classification metrics from a confusion matrix: the one macro-F1."""

from __future__ import annotations

import numpy as np


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
