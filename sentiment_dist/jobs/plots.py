"""The run directory's plots and the per-class table in the log."""

from __future__ import annotations

import numpy as np

from sentiment_dist.runtime.io import atomic_write

# Past this many classes the confusion plot shows the most frequent ones
# (and "other"): a full K x K grid with a count per cell grows as K squared.
CONFUSION_TOP_K = 30


def figure():
    """pyplot on the file-only Agg backend (no display on servers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def top_classes(confusion: np.ndarray, label_names: list[str], k: int = CONFUSION_TOP_K) -> tuple[np.ndarray, list[str]]:
    """The confusion matrix of the `k` classes with the most true examples, the rest pooled as
    "other" (rows and columns), so every example is still counted; unchanged for `k` classes or fewer."""
    if len(label_names) <= k:
        return confusion, list(label_names)
    keep = np.sort(np.argsort(-confusion.sum(axis=1), kind="stable")[:k])
    rest = np.setdiff1d(np.arange(len(label_names)), keep)
    rows = np.vstack([confusion[keep], confusion[rest].sum(axis=0, keepdims=True)])
    pooled = np.hstack([rows[:, keep], rows[:, rest].sum(axis=1, keepdims=True)])
    return pooled, [label_names[i] for i in keep] + [f"other ({len(rest)} classes)"]


def plot_confusion(confusion: np.ndarray, label_names: list[str], path: str, title: str = "Test set") -> None:
    """Counts of true against predicted classes (the most frequent `CONFUSION_TOP_K` past that many)."""
    plt = figure()
    shown, names = top_classes(confusion, label_names)
    if len(names) < len(label_names):
        title = f"{title}: {len(names) - 1} most frequent of {len(label_names)} classes"
    size = max(4.0, 0.9 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(shown, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = shown.max() / 2 if shown.size else 0
    for (row, column), count in np.ndenumerate(shown):
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
    width = max(len(name) for name in [*metrics["per_class"], "class"]) + 2  # short class names (c0, c1, ...) too
    lines = [f"{'class':<{width}}precision  recall     f1  support"]
    for name, scores in metrics["per_class"].items():
        lines.append(
            f"{name:<{width}}{scores['precision']:9.3f}{scores['recall']:8.3f}{scores['f1']:7.3f}{int(scores['support']):9d}"
        )
    lines.append(f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}   loss {metrics['loss']:.4f}")
    return "\n".join(lines)
