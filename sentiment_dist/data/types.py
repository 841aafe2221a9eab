"""Plain containers that every data source returns.

Loaders hand back texts and integer labels in numpy arrays plus the label
names; everything TensorFlow-specific happens later in `pipeline.py`, so the
same loader output serves every strategy and every rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
