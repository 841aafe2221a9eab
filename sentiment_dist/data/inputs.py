"""A job's data as token ids, from a prepared store every rank memory-maps or tokenized in memory.

`dataset.prepared` chooses: null (the default) reads the dataset and tokenizes it in this
process, as small data is fastest read; a directory is a store made by `python -m
sentiment_dist.prepare`; `auto` prepares the store once (the chief, into `paths.prepared_dir`,
named by what it holds) and reuses it after. Either way every rank gets the same splits, the
same vocabulary and the same ids: the store is the in-memory path written down.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from sentiment_dist.data import LabeledData, Split, load_dataset, log_dataset, resolve_dataset
from sentiment_dist.data.pipeline import held_out_sample
from sentiment_dist.data.store import SPLITS, PreparedStore, prepare
from sentiment_dist.data.tokenizer import VocabularyRequest, make_vectorizer
from sentiment_dist.data.tokens import Encoder, Splits
from sentiment_dist.runtime.distribute import Distribution
from sentiment_dist.runtime.errors import UserError


@dataclass
class ClassifierInputs:
    splits: Splits
    label_names: list[str]
    vocabulary: list[str]
    vectorizer: object  # the model's TextVectorization layer
    summary: dict  # what the run dir records of its data (metrics.json `data`)
    data: LabeledData | None  # the texts, when read into memory (None from a store)


def class_weights(labels: np.ndarray, num_classes: int, mode: str | None) -> np.ndarray | None:
    """The per-class weights (`balanced`: n / (K * count_k), scikit-learn's formula), or None."""
    if mode is None:
        return None
    missing = sorted(set(range(num_classes)) - set(np.unique(labels).tolist()))
    if missing:
        raise UserError(
            f"trainer.class_weight={mode} needs every class in the training split, and class indices {missing} "
            "have no example; add examples of them or set trainer.class_weight=null."
        )
    counts = np.bincount(labels, minlength=num_classes)
    return (len(labels) / (num_classes * counts)).astype(np.float32)


def data_summary(data: LabeledData) -> dict:
    """Split sizes, what loading dropped, and a mixture's sources with their sizes and shares."""
    return {"train": len(data.train), "validation": len(data.validation), "test": len(data.test),
            "stats": dict(data.stats), "sources": dict(data.sources)}


def prepared_store(cfg: DictConfig, dist: Distribution, request: VocabularyRequest, labels: bool = True,
                   dataset: DictConfig | None = None) -> PreparedStore:
    """The store `dataset.prepared` names (or, `auto`, the one prepared for this dataset and vocabulary,
    by the chief into `paths.prepared_dir`), checked on every rank against what this job reads; its
    content checked against its manifest. `dataset`: another than `cfg.dataset` (evaluate's)."""
    dataset = dataset if dataset is not None else cfg.dataset
    setting = str(dataset.prepared)
    if setting == "auto":
        path = dist.shared(lambda: prepare(dataset, request, None, cfg.paths.prepared_dir, cfg.prepare.workers,
                                           lambda node, sink: resolve_dataset(node, sink, labels), labels)[0])
    else:
        path = setting
    store, problem = None, None
    try:
        store = PreparedStore.open(path)
        store.check(dataset, request, labels)
    except UserError as err:
        problem = str(err)
    dist.require_everywhere(problem, f"dataset.prepared={path} cannot be used on every rank; put the store on a "
                                     "filesystem every node mounts, or copy it to that path on each node")
    dist.shared(lambda: store.verify(store.training_files()))  # one reader checks the bytes; errors reach every rank
    return store


def labeled_texts(cfg: DictConfig, dist: Distribution, request: VocabularyRequest,
                  dataset: DictConfig | None = None) -> LabeledData:
    """A dataset's texts and labels (`dataset`, default `cfg.dataset`): from its prepared store when
    `dataset.prepared` is set (checked against the config like any store, no source file re-read),
    else read from its files. For what needs raw texts: the transfer report's baselines and samples."""
    dataset = dataset if dataset is not None else cfg.dataset
    if not dataset.get("prepared"):
        return load_dataset(dataset)
    store = prepared_store(cfg, dist, request, dataset=dataset)
    splits = {role: Split(store.texts(role), np.asarray(store.split(role, 1).labels)) for role in SPLITS}
    return LabeledData(**splits, label_names=store.label_names, stats=dict(store.manifest["stats"]),
                       sources=dict(store.manifest["sources"]))


def classifier_inputs(cfg: DictConfig, dist: Distribution, request: VocabularyRequest | None = None,
                      data: LabeledData | None = None) -> ClassifierInputs:
    """`cfg.dataset` as token ids for a classifier; the vocabulary as `request` says (default: built from
    the training split, `model.vocab_size` at most)."""
    request = request or VocabularyRequest(size=cfg.model.vocab_size)
    width = cfg.model.sequence_length
    if cfg.dataset.get("prepared") and data is None:
        store = prepared_store(cfg, dist, request)
        splits = Splits(*(store.split(role, width) for role in SPLITS))
        label_names, vocabulary, summary, data = store.label_names, store.vocabulary, store.summary(), None
    else:
        data = data or load_dataset(cfg.dataset)
        label_names, summary = data.label_names, data_summary(data)
        vocabulary = dist.shared(lambda: request.for_texts(data.train.texts))
        encoder = Encoder(vocabulary)
        splits = Splits(*(encoder.split(getattr(data, role).texts, getattr(data, role).labels, width) for role in SPLITS))
    present = np.flatnonzero(np.bincount(np.asarray(splits.train.labels), minlength=len(label_names)))
    if len(present) < 2:  # checked here, not when the data is read: evaluating on one class is fine
        raise UserError(f"the training data holds only class {[label_names[i] for i in present]}; a classifier needs "
                        "two or more, so check dataset.label_column and dataset.label_mapping.")
    if dist.is_chief:
        log_dataset(cfg.dataset.name, summary, label_names)
    weights = class_weights(np.asarray(splits.train.labels), len(label_names), cfg.trainer.class_weight)
    if weights is not None:
        splits.train = splits.train.with_weights(weights[np.asarray(splits.train.labels)])
    return ClassifierInputs(splits, label_names, vocabulary, make_vectorizer(width, vocabulary), summary, data)


@dataclass
class LanguageModelInputs:
    splits: Splits
    vocabulary: list[str]
    texts: int  # training texts
    held_out_texts: dict[str, int]
    summary: dict


def language_model_inputs(cfg: DictConfig, dist: Distribution,
                          request: VocabularyRequest | None = None) -> LanguageModelInputs:
    """`cfg.dataset`'s texts (labels ignored) as token windows for a language model.

    The vocabulary is as `request` says (default: built from the training texts). Held-out
    perplexity takes the full softmax, so it is scored on a seeded sample of at most
    `lm.eval_texts` texts of each held-out split."""
    request = request or VocabularyRequest(size=cfg.model.vocab_size)
    width = cfg.model.sequence_length
    if cfg.dataset.get("prepared"):
        store = prepared_store(cfg, dist, request, labels=False)
        texts = {role: store.split(role, width) for role in SPLITS}
        vocabulary, summary = store.vocabulary, store.summary()
    else:
        data = load_dataset(cfg.dataset, labels=False)
        summary = data_summary(data)
        vocabulary = dist.shared(lambda: request.for_texts(data.train.texts))
        encoder = Encoder(vocabulary)
        texts = {role: encoder.split(getattr(data, role).texts, getattr(data, role).labels, width) for role in SPLITS}
    if dist.is_chief:
        log_dataset(cfg.dataset.name, summary, [])
    held_out = {role: texts[role].subset(held_out_sample(len(texts[role]), cfg.lm.eval_texts, cfg.seed))
                for role in ("validation", "test")}

    def rows(split):  # every token in consecutive windows, or each text's first `width` tokens
        return split.windows(width) if cfg.lm.whole_texts else split.cut(width)

    return LanguageModelInputs(
        Splits(rows(texts["train"]), rows(held_out["validation"]), rows(held_out["test"])), vocabulary,
        len(texts["train"]), {role: len(split) for role, split in held_out.items()}, summary,
    )
