"""Text augmentation for small labelled sets: EDA (Wei & Zou 2019) over embedding neighbours.

Each labelled text gets `copies` altered copies with its label, each copy by
one operation applied to about `rate` of its words:

- `synonym`: replace words by one of their nearest neighbours in the source
  model's embedding (cosine, among the most frequent words). A sentiment
  classifier's embedding puts words of the same polarity together ("great",
  "excellent"), so neighbours keep the label where a thesaurus may not;
- `insert`: insert a neighbour of a random word at a random position;
- `swap`: swap two random words;
- `delete`: drop each word with probability `rate` (never all of them).

Back-translation, the other classic, needs a translation model, which no
machine here can download; it is not offered. Everything is drawn from one
seeded generator in input order, so every rank of a distributed job makes the
same copies (the schema has no null seed to give, for that reason). This is a loop in Python
over examples, run once before training on the small target sets it is for;
the training input pipeline is untouched.
"""

from __future__ import annotations

import re

import numpy as np
from omegaconf import DictConfig

OPERATIONS = ("synonym", "insert", "swap", "delete")
_WORD = re.compile(r"[^\w']+")


def embedding_neighbours(vocabulary: list[str], table: np.ndarray, count: int, min_similarity: float,
                         limit: int = 5000) -> dict[str, list[str]]:
    """Each of the `limit` most frequent words (the vocabulary is sorted by frequency) -> its
    `count` nearest others by cosine similarity, those at least `min_similarity` alike."""
    words = [(index, word) for index, word in enumerate(vocabulary[:limit + 2]) if index >= 2 and word.isalpha()]
    indices = np.array([index for index, _ in words])
    vectors = table[indices].astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-8)
    neighbours: dict[str, list[str]] = {}
    for start in range(0, len(words), 1024):  # [chunk, words] similarities, a chunk at a time
        similarity = vectors[start : start + 1024] @ vectors.T
        for row, (_, word) in enumerate(words[start : start + 1024]):
            similarity[row, start + row] = -1.0  # not itself
            best = np.argpartition(-similarity[row], count)[:count]
            best = best[np.argsort(-similarity[row, best])]
            alike = [words[i][1] for i in best if similarity[row, i] >= min_similarity]
            if alike:
                neighbours[word] = alike
    return neighbours


def augment(texts: np.ndarray, labels: np.ndarray, cfg: DictConfig, neighbours: dict[str, list[str]]
            ) -> tuple[np.ndarray, np.ndarray]:
    """`texts` and `labels` followed by `cfg.copies` augmented copies of each (as `finetune.augment` says)."""
    if cfg.copies == 0:
        return texts, labels
    rng = np.random.default_rng(cfg.seed)
    operations = [str(op) for op in cfg.operations]
    made = []
    for copy in range(cfg.copies):
        operation = operations[copy % len(operations)]  # EDA: each copy by one operation, in turn
        made.extend(_apply(operation, text.split(), cfg.rate, neighbours, rng) for text in texts)
    augmented = np.array(made, dtype=object)
    return np.concatenate([texts, augmented]), np.concatenate([labels, np.tile(labels, cfg.copies)])


def _apply(operation: str, words: list[str], rate: float, neighbours: dict[str, list[str]],
           rng: np.random.Generator) -> str:
    if len(words) < 2:
        return " ".join(words)
    changes = max(1, int(round(rate * len(words))))
    words = list(words)
    if operation == "synonym":
        replaceable = [i for i, word in enumerate(words) if _key(word) in neighbours]
        for i in rng.permutation(replaceable)[:changes]:
            words[i] = rng.choice(neighbours[_key(words[i])])
    elif operation == "insert":
        known = [word for word in (_key(w) for w in words) if word in neighbours]
        for _ in range(changes if known else 0):
            words.insert(int(rng.integers(0, len(words) + 1)), rng.choice(neighbours[rng.choice(known)]))
    elif operation == "swap":
        for _ in range(changes):
            i, j = rng.choice(len(words), size=2, replace=False)
            words[i], words[j] = words[j], words[i]
    else:  # delete
        kept = [word for word in words if rng.random() >= rate]
        words = kept or [words[int(rng.integers(0, len(words)))]]
    return " ".join(words)


def _key(word: str) -> str:
    """The form the vectorizer sees: lower case, punctuation stripped."""
    return _WORD.sub("", word.lower())
