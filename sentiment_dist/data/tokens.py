"""Token ids as the trainer reads them: rows over one flat id array, in memory or memory-mapped.

A `TokenizedSplit` is `n` rows; row `i` is `ids[starts[i] : starts[i] + lengths[i]]`, read
cut and right-padded to `width` (the model's `sequence_length`). A classifier's row is a
text (its first `width` ids, as `TextVectorization` would cut it); a language model's rows
are windows over texts (`windows`). The flat array can be a NumPy array (data tokenized by
this process) or a memory map of a prepared store (`data/store.py`): the pipeline gathers
only the rows of each batch it feeds, so a rank reads only its slice of the corpus.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from sentiment_dist.data.tokenizer import OOV, OOV_ID, PAD, words


@dataclass(frozen=True, eq=False)
class TokenizedSplit:
    ids: np.ndarray  # flat token ids, any integer type
    starts: np.ndarray  # [n] int64: where each row begins in `ids`
    lengths: np.ndarray  # [n]: the row's ids (before cutting to `width`)
    labels: np.ndarray  # [n] int32
    width: int  # rows are cut and padded to this many ids
    weights: np.ndarray | None = None  # [n] float32 per-example weights; None: all 1

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def row_lengths(self) -> np.ndarray:
        """Ids per row as read (cut to `width`), int64."""
        return np.minimum(np.asarray(self.lengths, np.int64), self.width)

    def example_weights(self, index: np.ndarray) -> np.ndarray:
        return np.ones(len(index), np.float32) if self.weights is None else np.asarray(self.weights[index], np.float32)

    def rows(self, index: np.ndarray, width: int | None = None) -> np.ndarray:
        """The rows `index` as an int32 `[len(index), width]` matrix (no Python loop per row)."""
        width = self.width if width is None else width
        index = np.asarray(index, np.int64)
        lengths = np.minimum(self.row_lengths[index], width)
        out = np.zeros((len(index), width), np.int32)
        total = int(lengths.sum())
        if total:
            row = np.repeat(np.arange(len(index)), lengths)
            column = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            out[row, column] = self.ids[np.repeat(np.asarray(self.starts[index], np.int64), lengths) + column]
        return out

    @property
    def tokens(self) -> np.ndarray:
        """Every row as one padded matrix (for small splits: tests, the transfer report's samples)."""
        return self.rows(np.arange(len(self)))

    def subset(self, index: np.ndarray) -> TokenizedSplit:
        """The rows `index` (a sample, an order), sharing the flat ids."""
        index = np.asarray(index, np.int64)
        return replace(self, starts=np.asarray(self.starts[index]), lengths=np.asarray(self.lengths[index]),
                       labels=np.asarray(self.labels[index]),
                       weights=None if self.weights is None else np.asarray(self.weights[index]))

    def with_weights(self, weights: np.ndarray | None) -> TokenizedSplit:
        return replace(self, weights=None if weights is None else np.asarray(weights, np.float32))

    def windows(self, width: int) -> TokenizedSplit:
        """Every id of every row (none cut off) in consecutive windows of `width`, label 0: what a
        language model reads. Each row starts a window and its last one is shorter; an empty row
        gives none."""
        lengths = np.asarray(self.lengths, np.int64)
        per_row = -(-lengths // width)
        count = int(per_row.sum())
        first = np.repeat(np.cumsum(per_row) - per_row, per_row)
        within = np.arange(count) - first  # window number within its row
        owner = np.repeat(np.arange(len(lengths)), per_row)
        starts = np.asarray(self.starts, np.int64)[owner] + within * width
        window_lengths = np.minimum(lengths[owner] - within * width, width)
        return TokenizedSplit(self.ids, starts, window_lengths, np.zeros(count, np.int32), width)

    def cut(self, width: int) -> TokenizedSplit:
        """The same rows read at another width (a language model that reads each text's start)."""
        return replace(self, width=width, labels=np.zeros(len(self), np.int32), weights=None)

    def id_counts(self, vocab_size: int, chunk: int = 1 << 20) -> np.ndarray:
        """How often each id occurs in the rows as read (padding excluded), in bounded memory."""
        counts = np.zeros(vocab_size, np.int64)
        for begin in range(0, len(self), chunk):
            rows = self.rows(np.arange(begin, min(begin + chunk, len(self))))
            counts += np.bincount(rows[rows > 0], minlength=vocab_size)[:vocab_size]
        return counts

    @classmethod
    def from_matrix(cls, tokens: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> TokenizedSplit:
        """Right-padded rows of ids (0 is padding), as a split of their width."""
        tokens = np.asarray(tokens)
        lengths = np.count_nonzero(tokens, axis=1)
        width = tokens.shape[1]
        return cls(tokens.reshape(-1).astype(np.int32), np.arange(len(tokens), dtype=np.int64) * width, lengths,
                   np.asarray(labels, np.int32), width, None if weights is None else np.asarray(weights, np.float32))


@dataclass
class Splits:
    train: TokenizedSplit
    validation: TokenizedSplit
    test: TokenizedSplit


class Encoder:
    """Texts to ids with a fixed vocabulary, as `TextVectorization` with that vocabulary gives them."""

    def __init__(self, vocabulary: list[str]):
        if list(vocabulary[:2]) != [PAD, OOV]:
            raise ValueError("a vocabulary starts with the padding and OOV tokens")
        self.vocabulary = list(vocabulary)
        self.lookup = {word: index for index, word in enumerate(self.vocabulary) if index >= 2}

    def encode(self, texts: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """(flat ids int32, ids per text int64): every id of every text."""
        ids, lengths = [np.zeros(0, np.int32)], [np.zeros(0, np.int64)]
        for begin in range(0, len(texts), chunk):
            part = words(texts[begin : begin + chunk])
            local = np.fromiter((self.lookup.get(word, OOV_ID) for word in part.distinct), np.int32,
                                count=len(part.distinct))
            ids.append(local[part.index] if len(part.index) else np.zeros(0, np.int32))
            lengths.append(part.lengths.astype(np.int64))
        return np.concatenate(ids), np.concatenate(lengths)

    def split(self, texts: np.ndarray, labels: np.ndarray, width: int, weights: np.ndarray | None = None) -> TokenizedSplit:
        ids, lengths = self.encode(texts)
        starts = np.cumsum(lengths) - lengths
        return TokenizedSplit(ids, starts, lengths, np.asarray(labels, np.int32), width,
                              None if weights is None else np.asarray(weights, np.float32))


def tokenize_split(vectorizer, texts: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> TokenizedSplit:
    """`texts` as the `TextVectorization` layer `vectorizer` reads them (its vocabulary, its length)."""
    width = vectorizer.get_config()["output_sequence_length"]
    return Encoder(list(vectorizer.get_vocabulary())).split(texts, labels, width, weights)
