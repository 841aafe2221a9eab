"""A job's data as token ids: loaded on every rank, the vocabulary built once on the chief."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
from omegaconf import DictConfig
from sklearn.utils.class_weight import compute_class_weight

from sentiment_dist.data import LabeledData, load_dataset
from sentiment_dist.data.pipeline import (
    build_vocabulary,
    held_out_sample,
    make_vectorizer,
    tokenize_split,
    unlabeled_split,
)
from sentiment_dist.jobs.job import Splits
from sentiment_dist.runtime.distribute import Distribution
from sentiment_dist.runtime.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class ClassifierInputs:
    splits: Splits
    label_names: list[str]
    vocabulary: list[str]
    vectorizer: keras.layers.Layer
    data: LabeledData

    @property
    def summary(self) -> dict:
        return data_summary(self.data)


def class_weights(labels: np.ndarray, num_classes: int, mode: str | None) -> np.ndarray | None:
    """scikit-learn's per-class weights (`balanced`: n / (K * count_k)), or None."""
    if mode is None:
        return None
    missing = sorted(set(range(num_classes)) - set(np.unique(labels).tolist()))
    if missing:
        raise UserError(
            f"trainer.class_weight={mode} needs every class in the training split, and class indices {missing} "
            "have no example; add examples of them or set trainer.class_weight=null."
        )
    return compute_class_weight(str(mode), classes=np.arange(num_classes), y=labels).astype(np.float32)


def log_dataset(cfg: DictConfig, data: LabeledData) -> None:
    dropped = {k: v for k, v in data.stats.items() if k.startswith("dropped") and v}
    mixed = ", ".join(
        f"{name} {source['train']} ({source['share']:.0%}{', oversampled' if source['oversampled'] else ''})"
        for name, source in data.sources.items()
    )
    log.info(
        "Dataset %s: %d train / %d validation / %d test examples, classes %s%s%s",
        cfg.name, len(data.train), len(data.validation), len(data.test), data.label_names,
        f", dropped {dropped}" if dropped else "", f"; training examples from {mixed}" if mixed else "",
    )


def data_summary(data: LabeledData) -> dict:
    """What the run dir records of its data (metrics.json `data`): split sizes, what loading
    dropped, and a mixture's sources with their sizes and shares."""
    return {"train": len(data.train), "validation": len(data.validation), "test": len(data.test),
            "stats": dict(data.stats), "sources": dict(data.sources)}


def classifier_inputs(cfg: DictConfig, dist: Distribution, vocabulary: list[str] | None = None,
                      data: LabeledData | None = None) -> ClassifierInputs:
    """`cfg.dataset` tokenized for a classifier; its own vocabulary (built on the chief) unless given."""
    data = data or load_dataset(cfg.dataset)
    if dist.is_chief:
        log_dataset(cfg.dataset, data)
    if vocabulary is None:
        vocabulary = dist.shared(lambda: build_vocabulary(data.train.texts, cfg.model.vocab_size))
    vectorizer = make_vectorizer(cfg.model.sequence_length, vocabulary)
    weights = class_weights(data.train.labels, data.num_classes, cfg.trainer.class_weight)
    splits = Splits(
        train=tokenize_split(vectorizer, data.train.texts, data.train.labels,
                             None if weights is None else weights[data.train.labels]),
        validation=tokenize_split(vectorizer, data.validation.texts, data.validation.labels),
        test=tokenize_split(vectorizer, data.test.texts, data.test.labels),
    )
    return ClassifierInputs(splits, data.label_names, vocabulary, vectorizer, data)


@dataclass
class LanguageModelInputs:
    splits: Splits
    vocabulary: list[str]
    texts: int  # training texts
    held_out_texts: dict[str, int]
    summary: dict


def language_model_inputs(cfg: DictConfig, dist: Distribution,
                          vocabulary: Callable[[np.ndarray], list[str]] | None = None) -> LanguageModelInputs:
    """`cfg.dataset`'s texts (labels ignored) as token windows for a language model.

    `vocabulary(train_texts)` gives the vocabulary (a pretrained one); by default it is
    built from the training texts. Held-out perplexity takes the full softmax, so it is
    scored on a seeded sample of at most `lm.eval_texts` texts of each held-out split."""
    data = load_dataset(cfg.dataset, labels=False)
    if dist.is_chief:
        log_dataset(cfg.dataset, data)
    if vocabulary is not None:
        words = vocabulary(data.train.texts)
    else:
        words = dist.shared(lambda: build_vocabulary(data.train.texts, cfg.model.vocab_size))
    held_out = [held_out_sample(split.texts, cfg.lm.eval_texts, cfg.seed) for split in (data.validation, data.test)]
    train, validation, test = (
        unlabeled_split(words, texts, cfg.model.sequence_length, cfg.lm.whole_texts)
        for texts in (data.train.texts, *held_out)
    )
    return LanguageModelInputs(
        Splits(train, validation, test), words, len(data.train.texts),
        {"validation": len(held_out[0]), "test": len(held_out[1])}, data_summary(data),
    )
