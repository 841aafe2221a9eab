"""Metrics from a confusion matrix, and the run directory's plots."""

from __future__ import annotations

import numpy as np

from sentiment_dist.io import atomic_write
from sentiment_dist.trainer import EvaluationResult, per_class_scores


def classification_metrics(result: EvaluationResult, label_names: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix."""
    scores = per_class_scores(result.confusion)
    return {
        "loss": result.loss,
        "accuracy": result.accuracy,
        "macro_f1": float(np.mean(scores["f1"])),
        "examples": result.count,
        "per_class": {
            name: {key: float(scores[key][i]) for key in ("precision", "recall", "f1", "support")}
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": result.confusion.tolist(),
        "label_names": list(label_names),
    }


def figure():
    """pyplot on the file-only Agg backend (no display on servers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(confusion: np.ndarray, label_names: list[str], path: str, title: str = "Test set") -> None:
    plt = figure()
    size = max(4.0, 0.9 * len(label_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(label_names)), label_names, rotation=45, ha="right")
    ax.set_yticks(range(len(label_names)), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = confusion.max() / 2 if confusion.size else 0
    for (row, column), count in np.ndenumerate(confusion):
        ax.text(column, row, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    fig.tight_layout()
    atomic_write(path, lambda temp: fig.savefig(temp, dpi=110, format="png"))
    plt.close(fig)


def plot_history(columns: dict[str, list], path: str) -> None:
    """Loss and accuracy per epoch, train against validation."""
    plt = figure()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = columns.get("epoch", [])
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix, style in (("", "-o"), ("val_", "--o")):
            if prefix + metric in columns:
                ax.plot(epochs, columns[prefix + metric], style, label=(prefix or "train_") + metric)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda temp: fig.savefig(temp, dpi=110, format="png"))
    plt.close(fig)


def format_metrics_table(metrics: dict) -> str:
    """Per-class scores as an aligned text table for the log."""
    width = max(len(name) for name in metrics["per_class"]) + 2
    lines = [f"{'class':<{width}}precision  recall     f1  support"]
    for name, scores in metrics["per_class"].items():
        lines.append(
            f"{name:<{width}}{scores['precision']:9.3f}{scores['recall']:8.3f}{scores['f1']:7.3f}{int(scores['support']):9d}"
        )
    lines.append(f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}   loss {metrics['loss']:.4f}")
    return "\n".join(lines)
