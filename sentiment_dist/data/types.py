"""Plain containers that every data source returns.

Loaders hand back texts and integer labels in numpy arrays plus the label
names; everything TensorFlow-specific happens later in `pipeline.py`, so the
same loader output serves every strategy and every rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Split:
    """One split: `texts` is a 1-D array of `str`, `labels` a 1-D int32 array."""

    texts: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class LabeledData:
    """Train / validation / test splits of one source with its class names.

    `label_names[i]` names class `i`. `stats` records what loading dropped
    (empty rows, ratings outside every class, ...) so it can be logged; a
    mixture records each source's examples and share in `sources`.
    """

    train: Split
    validation: Split
    test: Split
    label_names: list[str]
    stats: dict[str, int] = field(default_factory=dict)
    sources: dict[str, dict] = field(default_factory=dict)  # a mixture's sources: sizes and shares

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


class TextSink(Protocol):
    """Where reading a dataset puts every row's text, in row order (`rows` so far): a list in
    memory (`TextList`), or a prepared store's writer, which tokenizes as rows arrive."""

    rows: int

    def add(self, texts: np.ndarray) -> None: ...


class TextList:
    """The in-memory sink: texts kept as they are."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.rows = 0

    def add(self, texts: np.ndarray) -> None:
        self.parts.append(np.asarray(texts, dtype=object))
        self.rows += len(texts)

    def texts(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=object)


@dataclass
class Resolved:
    """A dataset's splits as row numbers of a `TextSink` (the rows a split takes, in its order; a
    mixture may take a row twice) with their labels: what a loader decides, texts aside, so the
    same decision serves texts in memory and a prepared store."""

    rows: dict[str, np.ndarray]  # split -> row numbers (int64)
    labels: dict[str, np.ndarray]  # split -> int32 labels
    label_names: list[str]
    stats: dict[str, int] = field(default_factory=dict)
    sources: dict[str, dict] = field(default_factory=dict)

    def gather(self, texts: np.ndarray) -> LabeledData:
        """The splits with their texts (`texts`: every row the sink received)."""
        splits = {role: Split(texts[self.rows[role]], self.labels[role]) for role in ("train", "validation", "test")}
        return LabeledData(**splits, label_names=list(self.label_names), stats=dict(self.stats),
                           sources=dict(self.sources))

    @classmethod
    def of(cls, data: LabeledData, sink: TextSink) -> Resolved:
        """A dataset loaded in memory (synthetic, IMDB folders, plain text) handed to `sink` split by split."""
        rows = {}
        for role in ("train", "validation", "test"):
            split = getattr(data, role)
            rows[role] = sink.rows + np.arange(len(split), dtype=np.int64)
            sink.add(split.texts)
        return cls(rows, {role: getattr(data, role).labels for role in rows}, list(data.label_names),
                   dict(data.stats), dict(data.sources))
