"""`python -m sentiment_dist.train`: train a classifier under any strategy.

    python -m sentiment_dist.train model=bilstm dataset=csv dataset.path=reviews.csv trainer.epochs=2
    horovodrun -np 4 python -m sentiment_dist.train strategy=horovod
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from sentiment_dist import tracking
from sentiment_dist.callbacks import checkpoint_paths, class_weights, make_callbacks
from sentiment_dist.config import hydra_task, resolved, run_dir
from sentiment_dist.data import LabeledData, load_dataset
from sentiment_dist.data.pipeline import (
    TokenizedSplit,
    build_vocabulary,
    make_vectorizer,
    save_vocabulary,
    tokenize_split,
)
from sentiment_dist.distribute import Distribution, make_distribution
from sentiment_dist.io import atomic_write, atomic_write_json, atomic_write_text
from sentiment_dist.language_model import (
    check_compatible,
    copy_pretrained,
    init_from,
    load_pretrained,
    pretrained_vocabulary,
)
from sentiment_dist.models import build_classifier, inference_model
from sentiment_dist.report import classification_metrics, format_metrics_table, plot_confusion, plot_history
from sentiment_dist.runs import CONFIG_FILE, LABELS_FILE, METRICS_FILE, MODEL_FILE
from sentiment_dist.trainer import ParamGroup, Trainer

log = logging.getLogger(__name__)


@dataclass
class TokenizedData:
    train: TokenizedSplit
    validation: TokenizedSplit
    test: TokenizedSplit
    label_names: list[str]


def start(cfg: DictConfig) -> tuple[Distribution, str]:
    """Create the strategy (before any other TF work), seed, and agree on the run dir."""
    dist = make_distribution(cfg.strategy)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.trainer.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(cfg.trainer.precision)
    directory = dist.broadcast_object(run_dir() if dist.is_chief else None)
    return dist, directory


def load_and_tokenize(
    cfg: DictConfig, dist: Distribution, vocabulary: list[str] | None = None
) -> tuple[TokenizedData, list[str], keras.layers.Layer, LabeledData]:
    """Load the dataset on every rank; build the vocabulary once, on the chief."""
    data = load_dataset(cfg.dataset)
    if dist.is_chief:
        log.info(
            "Dataset %s: %d train / %d validation / %d test examples, classes %s%s",
            cfg.dataset.name, len(data.train), len(data.validation), len(data.test), data.label_names,
            f", dropped {data.stats}" if any(k.startswith("dropped") and v for k, v in data.stats.items()) else "",
        )
    if vocabulary is None:
        built = build_vocabulary(data.train.texts, cfg.model.vocab_size) if dist.is_chief else None
        vocabulary = dist.broadcast_object(built)
    vectorizer = make_vectorizer(cfg.model.sequence_length, vocabulary)
    weights = class_weights(data.train.labels, data.num_classes, cfg.trainer.class_weight)
    tokenized = TokenizedData(
        train=tokenize_split(
            vectorizer, data.train.texts, data.train.labels, None if weights is None else weights[data.train.labels]
        ),
        validation=tokenize_split(vectorizer, data.validation.texts, data.validation.labels),
        test=tokenize_split(vectorizer, data.test.texts, data.test.labels),
        label_names=data.label_names,
    )
    return tokenized, vocabulary, vectorizer, data


def fit_and_report(
    cfg: DictConfig,
    dist: Distribution,
    directory: str,
    data: TokenizedData,
    vocabulary: list[str],
    vectorizer: keras.layers.Layer,
    classifier: keras.Model,
    tracker: tracking.Tracker,
    groups: list[ParamGroup] | None = None,
    schedule=None,
    test_before_training: bool = False,
) -> dict:
    """Train `classifier`, evaluate it on the test split, and write the run dir.

    `test_before_training` also scores the classifier as it starts (a transferred
    model as-is), so that a fine-tune reports what it gained."""
    num_classes = len(data.label_names)
    trainer = Trainer(dist, classifier, num_classes, cfg.trainer, cfg.seed, groups)
    environment = {
        **dist.describe(),
        "global_batch_size": trainer.global_batch,
        "effective_learning_rate": trainer.base_learning_rate,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "train_examples": len(data.train),
    }
    if dist.is_chief:
        log.info(
            "Strategy %s: %d process(es), %d replica(s); per-replica batch %d, global batch %d, "
            "learning rate %.3g (%s scaling)",
            dist.name, dist.world_size, dist.num_replicas, cfg.trainer.batch_size, trainer.global_batch,
            trainer.base_learning_rate, cfg.trainer.lr_scaling,
        )
        tracker.update_config({"environment": environment})
    before = classification_metrics(trainer.evaluate(data.test), data.label_names) if test_before_training else None
    if before and dist.is_chief:
        log.info("Before training: test accuracy %.4f, macro-F1 %.4f", before["accuracy"], before["macro_f1"])
    checkpoint_dir, best_path = checkpoint_paths(directory)
    steps = len(data.train) // trainer.global_batch
    callbacks = make_callbacks(
        cfg.trainer, float(cfg.trainer.learning_rate), trainer.base_learning_rate, steps, best_path, dist.is_chief
    )
    callbacks.append(tracking.EpochLogger(tracker))
    history = trainer.fit(
        data.train, data.validation, cfg.trainer.epochs, callbacks,
        checkpoint_dir=checkpoint_dir if cfg.trainer.resume else None,
        verbose=cfg.trainer.verbose, schedule=schedule,
    )
    test = classification_metrics(trainer.evaluate(data.test), data.label_names)
    validation = classification_metrics(trainer.evaluate(data.validation), data.label_names)
    epochs = history.epochs
    metrics = {
        "test": test,
        "validation": validation,
        "epochs_run": len(epochs),
        "train_seconds": float(sum(epoch["epoch_seconds"] for epoch in epochs)),
        "examples_per_second": float(np.mean([epoch["examples_per_second"] for epoch in epochs])) if epochs else 0.0,
        "environment": environment,
    }
    if before:
        metrics["test_before_training"] = before
    if dist.is_chief:
        save_run(directory, cfg, classifier, vectorizer, vocabulary, data.label_names, metrics, history.as_columns())
        log.info("Test set (%d examples):\n%s", test["examples"], format_metrics_table(test))
        tracker.log_results(metrics, directory)
    return metrics


def save_run(
    directory: str,
    cfg: DictConfig,
    classifier: keras.Model,
    vectorizer: keras.layers.Layer,
    vocabulary: list[str],
    label_names: list[str],
    metrics: dict,
    history: dict,
) -> None:
    """Everything needed to evaluate, predict, fine-tune or resume; metrics.json last."""
    atomic_write_text(os.path.join(directory, CONFIG_FILE), OmegaConf.to_yaml(resolved(cfg)))
    save_vocabulary(vocabulary, directory)
    atomic_write_json(os.path.join(directory, LABELS_FILE), {"label_names": label_names})
    model = inference_model(vectorizer, classifier)
    atomic_write(os.path.join(directory, MODEL_FILE), model.save)
    atomic_write_json(os.path.join(directory, "history.json"), history)
    plot_history(history, os.path.join(directory, "training_curves.png"))
    plot_confusion(np.array(metrics["test"]["confusion_matrix"]), label_names, os.path.join(directory, "confusion_matrix.png"))
    atomic_write_json(os.path.join(directory, METRICS_FILE), metrics)


def train_run(cfg: DictConfig, dist: Distribution, directory: str, tracker: tracking.Tracker) -> dict:
    """Train a classifier as `cfg` says (from scratch, or from the language
    model `init.from` names) and write its run dir."""
    pretrained = load_pretrained(init_from(cfg)) if init_from(cfg) else None
    vocabulary = None
    if pretrained:
        check_compatible(pretrained, cfg.model)
        tracker.use_model(pretrained.directory)
        vocabulary = pretrained_vocabulary(cfg.init, dist, pretrained, lambda: load_dataset(cfg.dataset).train.texts)
    data, vocabulary, vectorizer, _ = load_and_tokenize(cfg, dist, vocabulary)
    with dist.scope():
        classifier = build_classifier(cfg.model, len(vocabulary), len(data.label_names))
        if pretrained:
            copied = copy_pretrained(pretrained, classifier)
            if dist.is_chief:
                log.info("Initialised %s from the language model in %s.", ", ".join(copied), pretrained.directory)
    return fit_and_report(cfg, dist, directory, data, vocabulary, vectorizer, classifier, tracker)


def run_tracked(
    cfg: DictConfig,
    dist: Distribution,
    directory: str,
    job_type: str,
    body: Callable[[tracking.Tracker], dict],
    group: str | None = None,
    input_model: str | None = None,
    announce: bool = True,
) -> dict:
    """Run `body(tracker)` as one W&B run (declaring `input_model`'s artifact as its
    input), then, if `announce`, print where the run dir is: the last step of every
    entry point."""
    tracker = tracking.start(cfg, dist, directory, job_type=job_type, group=group)
    try:
        if input_model:
            tracker.use_model(input_model)
        metrics = body(tracker)
    finally:
        tracker.finish()
    if announce and dist.is_chief:
        print(f"Run directory: {os.path.abspath(directory)}", flush=True)
    return metrics


def run_stage(
    cfg: DictConfig,
    dist: Distribution,
    directory: str,
    job_type: str,
    body: Callable[[tracking.Tracker], dict],
    group: str | None = None,
) -> None:
    """One stage of a longer job (finetune's in-job source, ULMFiT's language models),
    reused when `directory` already holds a finished run.

    The chief decides and writes; the closing broadcast is a barrier, so no rank
    reads the stage's files before the chief has written them (the ranks of one
    job share its run dir)."""
    done = dist.broadcast_object(os.path.exists(os.path.join(directory, METRICS_FILE)) if dist.is_chief else None)
    if done:
        if dist.is_chief:
            log.info("Reusing the %s stage already finished in %s.", job_type, directory)
        return
    run_tracked(cfg, dist, directory, job_type, body, group, announce=False)
    dist.broadcast_object(None)


@hydra_task("train")
def main(cfg: DictConfig) -> dict:
    dist, directory = start(cfg)
    return run_tracked(cfg, dist, directory, "train", lambda tracker: train_run(cfg, dist, directory, tracker))


if __name__ == "__main__":
    main()
