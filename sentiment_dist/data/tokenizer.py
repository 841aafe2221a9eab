"""Text to token ids exactly as the model's `TextVectorization` layer gives them, in bulk.

The exported model takes raw strings through Keras' `TextVectorization` (standardize
`lower_and_strip_punctuation`, split on whitespace), so whatever tokenizes data for
training must give the very ids that layer gives: `words` applies the layer's three steps
(ASCII lower-casing, Keras' punctuation pattern, a whitespace split) with Arrow's kernels,
and the tests compare the ids with the layer's on unicode, punctuation, every ASCII
character, line breaks and over-long texts.

Tokenizing is done once per text. Each chunk of texts becomes its distinct words (the
chunk's own small vocabulary) and, per text, ids into them; a `WordTable` gives every
distinct word of the corpus a number in order of first appearance. The vocabulary is then
chosen from the training rows' word counts (`vocabulary_from_counts`: most frequent first,
ties by the word itself, so the choice never depends on the order of rows or chunks), and
`WordTable.ids_for` turns word numbers into the vocabulary's ids with one table lookup.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD, OOV = "", "[UNK]"
PAD_ID, OOV_ID = 0, 1
STANDARDIZE = "lower_and_strip_punctuation"
# Keras' own pattern (keras/src/layers/preprocessing/text_vectorization.py): ASCII punctuation.
PUNCTUATION = r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']'


def make_vectorizer(sequence_length: int | None, vocabulary: list[str] | None = None, vocab_size: int | None = None):
    """The `TextVectorization` layer the model carries (`sequence_length` None: ragged, every token)."""
    import keras

    layer = keras.layers.TextVectorization(
        max_tokens=vocab_size,
        output_sequence_length=sequence_length,
        ragged=sequence_length is None,
        standardize=STANDARDIZE,
        name="vectorizer",
    )
    if vocabulary is not None:
        layer.set_vocabulary(vocabulary)
    return layer


@dataclass(frozen=True)
class ChunkWords:
    """A chunk's texts as words: `distinct` words, `index[j]` the j-th word of the chunk (all texts,
    in order) as a position in `distinct`, and each text's word count."""

    distinct: list[str]
    index: np.ndarray  # int32
    lengths: np.ndarray  # int64, one per text


def words(texts) -> ChunkWords:
    """Split `texts` (str, or an Arrow string array) into words exactly as `TextVectorization` does, with Arrow's kernels: the
    layer's ASCII lower-casing, its punctuation pattern through RE2 (the regex engine TensorFlow's
    `regex_replace` uses) and a split on ASCII whitespace without empty words (TensorFlow's
    `strings.split`). Four times TensorFlow's speed on review-length texts, and a worker process
    needs no TensorFlow; `tests/test_store.py` holds the two to the same words."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(texts) == 0:
        return ChunkWords([], np.zeros(0, np.int32), np.zeros(0, np.int64))
    if not isinstance(texts, pa.Array):  # an Arrow array comes from prepare: it pickles as its buffers
        texts = pa.array(np.asarray(texts, dtype=object).tolist(), pa.large_string())
    split = pc.ascii_split_whitespace(pc.replace_substring_regex(pc.ascii_lower(texts), PUNCTUATION, ""))
    offsets = split.offsets.to_numpy()
    keep = pc.not_equal(pc.binary_length(split.values), 0)  # leading and trailing spaces give empty words
    kept = np.concatenate([[0], np.cumsum(keep.to_numpy(zero_copy_only=False), dtype=np.int64)])
    encoded = pc.dictionary_encode(split.values.filter(keep))
    return ChunkWords(encoded.dictionary.to_pylist(), encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32),
                      kept[offsets[1:]] - kept[offsets[:-1]])


class WordTable:
    """Every distinct word seen, numbered in order of first appearance."""

    def __init__(self) -> None:
        self.number: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.number)

    def add(self, chunk: ChunkWords) -> np.ndarray:
        """The chunk's words as word numbers (new words are numbered as they come)."""
        number = self.number
        local = np.fromiter((number.setdefault(word, len(number)) for word in chunk.distinct), np.int64,
                            count=len(chunk.distinct))
        return local[chunk.index] if len(chunk.index) else np.zeros(0, np.int64)

    def words(self) -> list[str]:
        """The words by number."""
        return list(self.number)

    def ids_for(self, vocabulary: list[str]) -> np.ndarray:
        """A table from word number to the vocabulary's id (OOV_ID for a word it lacks)."""
        table = np.full(len(self.number), OOV_ID, np.int64)
        for index, word in enumerate(vocabulary[2:], start=2):
            number = self.number.get(word)
            if number is not None:
                table[number] = index
        return table


def storable(word: str) -> bool:
    """Whether a line-based vocabulary file can hold `word`: Keras stores the vocabulary inside
    model.keras one token per line and reads it back split into lines, so a word holding a
    line break Python recognises (\\x85 and \\u2028 appear in IMDB reviews) would come back as
    two and the model would not load. Such words read as [UNK]."""
    return word.splitlines() == [word]


def most_frequent(words: list[str], counts: np.ndarray, limit: int | None,
                  exclude: set[str] | frozenset = frozenset()) -> list[str]:
    """The counted words, most frequent first (ties: by the word), at most `limit` (None: all);
    words a vocabulary file cannot hold and words in `exclude` are left out."""
    counts = np.asarray(counts)
    candidates = np.array([i for i in np.flatnonzero(counts > 0) if storable(words[i]) and words[i] not in exclude],
                          np.int64)
    if limit is not None and len(candidates) > limit:
        # Only words at least as frequent as the limit-th can make the cut: sort just those.
        kth = np.partition(counts[candidates], len(candidates) - limit)[len(candidates) - limit]
        candidates = candidates[counts[candidates] >= kth]
    ranked = sorted((-int(counts[i]), words[i]) for i in candidates)
    return [word for _, word in ranked][:limit]


def vocabulary_from_counts(words: list[str], counts: np.ndarray, size: int | None) -> list[str]:
    """`[PAD, OOV]` and the most frequent counted words, `size` entries in all at most."""
    return [PAD, OOV, *most_frequent(words, counts, None if size is None else max(size - 2, 0))]


def extend_vocabulary(base: list[str], words: list[str], counts: np.ndarray, max_new_tokens: int) -> list[str]:
    """`base`, unchanged, then the most frequent counted words it lacks, at most `max_new_tokens`."""
    return list(base) + most_frequent(words, counts, max_new_tokens, exclude=set(base))


@dataclass(frozen=True)
class VocabularyRequest:
    """Which vocabulary a job reads its data with: built from the training split's words (`size`
    of them at most), or a given one (a source model's) extended by at most `extend` new words."""

    size: int | None = None
    base: tuple[str, ...] | None = None
    extend: int = 0

    def choose(self, words: list[str], train_counts: np.ndarray) -> list[str]:
        if self.base is None:
            return vocabulary_from_counts(words, train_counts, self.size)
        if self.extend:
            return extend_vocabulary(list(self.base), words, train_counts, self.extend)
        return list(self.base)

    def for_texts(self, texts: np.ndarray) -> list[str]:
        """The vocabulary for training texts held in memory (counted only when needed)."""
        if self.base is not None and not self.extend:
            return list(self.base)
        return self.choose(*count_words(texts))

    def describe(self) -> dict:
        """What a prepared store records of the request (the base vocabulary by its hash)."""
        if self.base is None:
            return {"built_from": "train", "vocab_size": self.size}
        return {"base_sha256": vocabulary_hash(list(self.base)), "base_size": len(self.base), "extend": self.extend}


def vocabulary_hash(vocabulary: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(vocabulary).encode("utf-8")).hexdigest()


def count_words(texts: np.ndarray, chunk: int = 8192) -> tuple[list[str], np.ndarray]:
    """Every distinct word of `texts` and how often it occurs (in memory, for small data)."""
    table, counts = WordTable(), np.zeros(0, np.int64)
    for begin in range(0, len(texts), chunk):
        numbers = table.add(words(texts[begin : begin + chunk]))
        counts = np.concatenate([counts, np.zeros(len(table) - len(counts), np.int64)])
        counts += np.bincount(numbers, minlength=len(table))
    return table.words(), counts


def build_vocabulary(texts: np.ndarray, vocab_size: int | None) -> list[str]:
    """The most frequent words of `texts`: `["", "[UNK]", ...]`, at most `vocab_size` entries."""
    return VocabularyRequest(size=vocab_size).choose(*count_words(texts))
